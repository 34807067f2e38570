"""Templated radiology reports for the in-house image+report phantom.

One report per breast. The wording is varied on purpose (several phrasings per finding, decimal sizes such
as "1.5 cm", "BI-RADS 4" / "BI-RADS: 2" spellings, occasional line breaks, en dashes, multiplication signs
and curly apostrophes) so that the report-cleaning stage is exercised. Templates are our own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .anatomy import CALCIFICATION, MASS, LesionSpec

REPORT_COLUMNS = ("HISTORY", "FINDINGS", "IMPRESSION", "ASSESMENT", "RECOMENDATION", "CONCLUSION")

_SIDE = {"L": "left", "R": "right"}

_DENSITY = {
    "A": [
        "The breasts are almost entirely fatty.",
        "Breast composition: almost entirely fatty (ACR A).",
        "Predominantly fatty breast parenchyma.",
    ],
    "B": [
        "There are scattered areas of fibroglandular density.",
        "Breast composition: scattered fibroglandular densities (ACR B).",
        "Scattered fibroglandular tissue is present.",
    ],
    "C": [
        "The breasts are heterogeneously dense, which may obscure small masses.",
        "Breast composition: heterogeneously dense (ACR C).",
        "Heterogeneously dense fibroglandular tissue is noted.",
    ],
    "D": [
        "The breasts are extremely dense, which lowers the sensitivity of mammography.",
        "Breast composition: extremely dense (ACR D).",
        "Extremely dense breast tissue is present.",
    ],
}

_MASS = [
    "There is a {size} {shape} mass with {margin} margins in the {quadrant} of the {side} breast.",
    "A {margin} {shape} mass measuring {size} is seen in the {side} breast, {quadrant}, "
    "at the {clock} o{apos}clock position.",
    "{Side} breast: {shape} mass with {margin} margins, {size}, {quadrant}, {depth} depth.",
    "New {size} mass in the {quadrant} of the {side} breast at {clock} o{apos}clock, "
    "{dist} cm from the nipple.",
]
_CALC = [
    "Clustered pleomorphic microcalcifications spanning {size} in the {quadrant} of the {side} breast.",
    "A cluster of fine pleomorphic calcifications is noted in the {side} breast, {quadrant}, "
    "extending over {size}.",
    "Group of amorphous microcalcifications, {size}, in the {side} breast at {clock} o{apos}clock.",
    "{Side} breast: a new cluster of suspicious microcalcifications in the {quadrant}, {depth} depth.",
]
_COMBINED = [
    "There is a {size} {shape} mass with {margin} margins and associated clustered pleomorphic "
    "microcalcifications in the {quadrant} of the {side} breast.",
    "{Side} breast: {margin} mass containing fine pleomorphic calcifications, {size}, {quadrant}.",
]
_NEGATIVE = [
    "No suspicious mass, architectural distortion or calcifications in the {side} breast.",
    "There is no dominant mass, suspicious calcification or area of architectural distortion.",
    "The {side} breast shows no suspicious findings.",
    "No new or suspicious abnormality is identified in the {side} breast.",
]
_BENIGN = [
    "A stable benign-appearing intramammary lymph node is present in the {side} breast.",
    "Scattered benign vascular changes are unchanged.",
]
_BIRADS_TEXT = {
    0: "incomplete, additional imaging evaluation is needed",
    1: "negative",
    2: "benign",
    3: "probably benign",
    4: "suspicious abnormality",
    5: "highly suggestive of malignancy",
}
_IMPRESSION = [
    "BI-RADS {k}: {text}.",
    "BI-RADS: {k} – {text}.",
    "{Side} breast: BI-RADS {k}, {text}.",
    "Overall assessment: BI-RADS {k} ({text}).",
    "Birads: {k}, Patient is: {age} years old, and {text}.",
]
_HISTORY = [
    "",
    "Screening mammogram. No prior history.",
    "Annual screening; mother diagnosed with breast cancer at age 48.",
    "Screening – no complaints.",
    "Patient reports a palpable lump in the {side} breast.",
    "Prior benign biopsy of the {side} breast 3.5 years ago.",
]
_ASSESSMENT = {
    "negative": ["", "Negative.", "No evidence of malignancy."],
    "benign": ["", "Benign finding.", "Benign."],
    "probably": ["", "Probably benign finding."],
    "suspicious": ["", "Suspicious finding.", "Suspicious for malignancy."],
}
_RECOMMENDATION = {
    "negative": ["", "Routine screening mammogram in 1 year.", "Continue annual screening."],
    "benign": ["", "Routine screening in 12 months."],
    "probably": ["", "Short-interval follow-up mammogram in 6 months."],
    "suspicious": [
        "",
        "Ultrasound-guided core biopsy is recommended.",
        "Tissue sampling is recommended; additional views and ultrasound – as needed.",
    ],
}
_CONCLUSION = {
    "negative": ["", "Negative mammogram.", "No mammographic evidence of malignancy."],
    "positive": ["", "Suspicious finding in the {side} breast.", "{Findings} in the {side} breast."],
}
_SHAPES = ["irregular", "oval", "round"]
_MARGINS = ["spiculated", "indistinct", "microlobulated", "obscured", "circumscribed"]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def format_size(rng: np.random.Generator, size_mm: float) -> str:
    """A size phrase such as "1.5 cm", "15 mm", "1.5 × 1.2 cm" or "1.5 x 1.2 cm" (decimals matter)."""
    cm = max(0.3, round(size_mm / 10.0, 1))
    other = max(0.2, round(cm * rng.uniform(0.6, 0.95), 1))
    style = int(rng.integers(4))
    if style == 0:
        return f"{cm:.1f} cm"
    if style == 1:
        return f"{round(size_mm):d} mm"
    if style == 2:
        return f"{cm:.1f} × {other:.1f} cm"
    return f"{cm:.1f} x {other:.1f} cm"


def _depth_word(depth: float) -> str:
    return "posterior" if depth < 0.4 else ("middle" if depth < 0.6 else "anterior")


def make_report(
    rng: np.random.Generator,
    *,
    laterality: str,
    density: str,
    lesions: Sequence[LesionSpec],
    birads: int,
    age: int,
    force_unicode: bool = False,
) -> dict[str, str]:
    """Sections of one breast's report (keys = ``REPORT_COLUMNS``; empty string = empty section).

    Every finding of ``lesions`` (grouped by ``LesionSpec.finding``) is described with its quadrant and
    size; masses always use the word "mass", calcifications "calcification(s)". IMPRESSION always carries
    the BI-RADS category. ``force_unicode`` guarantees a non-ASCII character (en dash) in IMPRESSION.
    """
    side = _SIDE[laterality]
    sentences = [_pick(rng, _DENSITY[density])]
    findings: dict[int, list[LesionSpec]] = {}
    for spec in lesions:
        findings.setdefault(spec.finding, []).append(spec)
    described: list[str] = []
    for group in findings.values():
        cats = {s.category for s in group}
        main = group[0]
        if cats == {MASS, CALCIFICATION}:
            template, name = _pick(rng, _COMBINED), "Mass with calcifications"
        elif cats == {MASS}:
            template, name = _pick(rng, _MASS), "Mass"
        else:
            template, name = _pick(rng, _CALC), "Calcifications"
        described.append(name)
        sentences.append(
            template.format(
                size=format_size(rng, main.size_mm),
                shape=_pick(rng, _SHAPES),
                margin=_pick(rng, _MARGINS),
                quadrant=main.quadrant,
                side=side,
                Side=side.capitalize(),
                clock=main.clock(laterality),
                apos="’" if rng.random() < 0.3 else "'",
                depth=_depth_word(main.depth),
                dist=f"{round(3.0 + 7.0 * (1.0 - main.depth), 1):.1f}",
            )
        )
    if not lesions:
        sentences.append(_pick(rng, _NEGATIVE).format(side=side))
        if birads == 2:
            sentences.append(_pick(rng, _BENIGN).format(side=side))
    sep = "\n" if rng.random() < 0.25 else " "
    findings_text = sep.join(sentences)

    impression_template = _pick(rng, _IMPRESSION)
    if force_unicode and "–" not in impression_template:
        impression_template = "BI-RADS: {k} – {text}."
    impression = impression_template.format(
        k=birads, text=_BIRADS_TEXT[birads], Side=side.capitalize(), age=age
    )
    if birads in (0, 4, 5):
        key = "suspicious"
    elif birads == 3:
        key = "probably"
    elif birads == 2:
        key = "benign"
    else:
        key = "negative"
    assessment = _pick(rng, _ASSESSMENT[key])
    recommendation = _pick(rng, _RECOMMENDATION[key])
    if described:
        conclusion = _pick(rng, _CONCLUSION["positive"]).format(side=side, Findings=" and ".join(described))
    else:
        conclusion = _pick(rng, _CONCLUSION["negative"])
    return {
        "HISTORY": _pick(rng, _HISTORY).format(side=side),
        "FINDINGS": findings_text,
        "IMPRESSION": impression,
        "ASSESMENT": assessment,
        "RECOMENDATION": recommendation,
        "CONCLUSION": conclusion,
    }
