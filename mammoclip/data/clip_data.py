"""Pre-training datasets, VinDr label -> report text, and the collate function (docs/upstream.md#pretraining,
with upstream's data defects fixed).

Datasets. Each item is one breast (a row of a table):

* :class:`ImageTextDataset` -- the image+report table of :mod:`mammoclip.annotations.reports`
  (``image``, ``CC``, ``MLO``, ``text``, optional ``text_augment``);
* :class:`VindrLabelDataset` -- VinDr's image-label table of :mod:`mammoclip.annotations.vindr`
  (``image``, ``CC``, ``MLO``, ``laterality``, ``CC_FINDING``, ``MLO_FINDING``), whose texts are generated
  from the labels with :func:`generate_report` and this project's ``vindr_prompts.yaml``.

An item is a dict with ``image``, ``image2`` (float32 tensors ``[3, H, W]``: resized to ``(height, width)``
with ``INTER_AREA`` when the PNG differs, augmented in training, then normalised by
:func:`mammoclip.inference.normalise_image`: per-image min-max, ``(x - 0.3089279) / 0.25053555``, grey
replicated to 3 channels), ``text``, ``text2`` (str) and, for logging, ``view``, ``view2`` (``"CC"``,
``"MLO"`` or ``"other"``), ``image_name``, ``image2_name``, ``patient_id``, ``laterality``, ``dataset``.

View sampling (multi-view supervision). Per breast the images fall into three pools: ``CC``, ``MLO`` (the
table's columns) and *other* (images of the ``image`` list in neither, i.e. ML, LM, XCCL, AT, ... views,
whose individual view code the report table does not record). Decision for other views: they are
stand-ins, used only where a CC or MLO image is missing -- a second, different projection of the breast is
a better multi-view partner than a copy of the same view:

* CC and MLO present: one CC and one MLO image (other views unused);
* only one of CC / MLO present, other views present: that view plus one other-view image;
* a single pool (CC only, MLO only, or other views only): two distinct images of it when it has at least
  two, else the same image twice (augmented independently in training).

Training draws the image of each pool uniformly and puts the pair in random order. Validation is
deterministic and uses no randomness at all (upstream drew view order and images with ``np.random`` also in
validation, so its validation loss was stochastic): first CC (or the single pool's first image) as
``image``, first MLO / stand-in (or the pool's second image, else its first) as ``image2``, no
augmentation. The VinDr table contains CC and MLO images only; an image of another view there has no label
slot and is excluded (counted).

Report texts (:class:`ImageTextDataset`). Training: ``text`` and ``text2`` are two independent draws with
replacement from the breast's sections (``text``), each replaced by its back-translation (``text_augment``,
same position) with probability ``text_aug_prob`` (0.5). A breast with a single section gets the original
and the back-translation, in random order. A missing or empty back-translation means the original is kept
(counted in the log); ``text_aug_prob=0`` disables back-translations altogether. Validation: ``text`` =
first section, ``text2`` = second section (first again if there is only one), never back-translated.
(Upstream's sentence-shuffle augmentation is a no-op and is not reproduced.)

VinDr texts (:func:`generate_report`). ``text`` comes from the ``*_FINDING`` slots of ``image``'s view,
``text2`` from those of ``image2``'s view (the same view for a single-view breast). The 4-slot format is
``[pos_right, pos_left, neg_right, neg_left]`` (section 3.3); the breast's laterality picks the slots and the
``*_right`` / ``*_left`` sentences (slots of the other side must be empty). For each positive label one
``pos_*`` sentence, then for each negative label one ``neg_*`` sentence -- a random variant in training,
the first variant otherwise; if ``No Finding`` is positive, the absence sentence of every finding category
follows it (upstream, ``normal_states_absences=False``, gives it no negatives at all); sentences are
de-duplicated keeping the first occurrence (a deterministic order, where upstream used ``set`` order,
section 13.1 item 7), shuffled in training, and joined with single spaces (no periods, as the cleaned
reports). A view's slots are the union of its images' labels, so when one of two same-view images was
excluded its labels still describe the remaining one.

Missing images. Image names are looked up in ``png_paths`` as written in the table (``{image_id}.png``),
then without / with the ``.png`` suffix, so a mapping keyed by image id or by file name both work
(:func:`mammoclip.annotations.reports.png_paths_from_manifest` builds one from a preprocessing manifest).
Images absent from it (failed or missing conversion) are excluded up front and breasts left without any
image (or, for reports, without text) are dropped; both are counted in one log line per dataset (a
warning when anything was excluded) and in ``dataset.stats``. A PNG that cannot be read, or that is
constant, raises :class:`mammoclip.inference.InferenceError` naming the file when the item is loaded.

Randomness. Training items draw everything from ``numpy.random.default_rng([seed, stream, epoch, index])``
(``stream`` differs per dataset class), so an item depends only on the seed, the epoch and its index --
not on DataLoader workers or the order items are fetched in. Call :func:`set_epoch` (or
``dataset.set_epoch``) before each epoch for fresh augmentations; with ``persistent_workers=True`` the
workers keep the epoch they were started with.

Batches (:func:`make_collate`): ``images``, ``images2`` ``[B, 3, H, W]``; ``input_ids``,
``attention_mask``, ``input_ids2``, ``attention_mask2`` ``[B, max_length]`` (padding to ``max_length``,
truncation; upstream 256); ``text_ids``, ``text2_ids`` (int64 ``[B]``: the first 8 bytes of the BLAKE2b
hash of the UTF-8 text, :func:`text_id`), so the loss can recognise identical texts (e.g. many VinDr
breasts share a "no finding" sentence: false negatives, section 5.3).

Splits (:func:`build_pretraining_datasets`). Report table: training = ``fold != val_fold``, validation =
``fold == val_fold`` (as upstream). VinDr: training = ``split == "training"`` and ``val_fold != k``,
validation = ``split == "training"`` and ``val_fold == k`` (``k = vindr_val_fold``, default ``val_fold``),
i.e. a patient-level part of the training split. The VinDr *test* split is never used (upstream validated
on it, selecting the checkpoint on test data: section 13.1 item 14); its breasts are counted in the log.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from mammoclip.annotations.vindr import FINDING_CATEGORIES, NO_FINDING
from mammoclip.data.transforms import EvalTransform, TrainAugment
from mammoclip.inference import InferenceError, normalise_image

__all__ = [
    "DEFAULT_PROMPTS",
    "PROMPT_KEYS",
    "ImageTextDataset",
    "PretrainCollate",
    "PretrainDataError",
    "PromptsError",
    "VindrLabelDataset",
    "build_pretraining_datasets",
    "generate_report",
    "load_prompts",
    "make_collate",
    "set_epoch",
    "text_id",
]

log = logging.getLogger(__name__)

#: The prompts file shipped with the package.
DEFAULT_PROMPTS = Path(__file__).with_name("vindr_prompts.yaml")
#: Keys of a finding category in the prompts file (``No Finding`` has the ``pos_*`` keys only).
PROMPT_KEYS = ("pos_right", "pos_left", "neg_right", "neg_left")
_SIDES = {"R": "right", "L": "left"}


class PretrainDataError(ValueError):
    """A pre-training table, prompts file or argument is unusable; the message says which and why."""


class PromptsError(PretrainDataError):
    """The prompts file is malformed; the message names the file, the category and the key."""


# --------------------------------------------------------------------------------------------------
# Prompts and VinDr report generation
# --------------------------------------------------------------------------------------------------


def _check_sentence(sentence: object, side: str, where: str) -> str:
    from nltk.tokenize import wordpunct_tokenize

    if not isinstance(sentence, str) or not sentence.strip():
        raise PromptsError(f"{where}: expected a non-empty sentence, got {sentence!r}")
    tokens = wordpunct_tokenize(sentence)
    problem = None
    if not sentence.isascii():
        problem = "non-ASCII characters"
    elif sentence != sentence.lower():
        problem = "upper-case letters (the cleaned reports are lower case)"
    elif "." in sentence:
        problem = "a period (the cleaned reports have none)"
    elif sentence != " ".join(tokens):
        problem = "not in word-punct form (single spaces between words and punctuation)"
    elif side not in tokens or ({"right", "left"} - {side}) & set(tokens):
        problem = f"it must name the {side} side (and not the other)"
    if problem:
        raise PromptsError(f"{where}: sentence {sentence!r}: {problem}")
    return sentence


def load_prompts(path: str | Path | None = None) -> dict[str, dict[str, list[str]]]:
    """The VinDr prompts, ``{category: {key: [sentence, ...]}}``, validated.

    ``path``: a YAML file in the format of ``vindr_prompts.yaml`` (default: the package's,
    :data:`DEFAULT_PROMPTS`). Every one of the 10 finding categories needs the four :data:`PROMPT_KEYS`,
    ``No Finding`` needs ``pos_right`` and ``pos_left`` (it is never a negative, so ``neg_*`` are rejected);
    every list must be non-empty, without duplicates, of lower-case word-punct ASCII sentences without
    periods that name their own side. Anything else raises :class:`PromptsError` naming the file,
    category and key.
    """
    import yaml

    path = Path(path) if path is not None else DEFAULT_PROMPTS
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise PromptsError(f"{path}: cannot read the prompts file: {err}") from None
    except yaml.YAMLError as err:
        raise PromptsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise PromptsError(f"{path}: expected a mapping of category -> keys, got {type(data).__name__}")
    expected = (*FINDING_CATEGORIES, NO_FINDING)
    unknown = [c for c in data if c not in expected]
    if unknown:
        raise PromptsError(f"{path}: unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown}")
    prompts: dict[str, dict[str, list[str]]] = {}
    for category in expected:
        if category not in data:
            raise PromptsError(f"{path}: missing category {category!r}")
        entry = data[category]
        if not isinstance(entry, dict):
            raise PromptsError(
                f"{path}: category {category!r}: expected a mapping of {', '.join(PROMPT_KEYS)}"
            )
        keys = PROMPT_KEYS[:2] if category == NO_FINDING else PROMPT_KEYS
        extra = [k for k in entry if k not in keys]
        if extra:
            why = " (No Finding is never a negative)" if category == NO_FINDING else ""
            raise PromptsError(f"{path}: category {category!r}: unexpected key(s) {extra}{why}")
        prompts[category] = {}
        for key in keys:
            where = f"{path}: category {category!r}, key {key!r}"
            if key not in entry:
                raise PromptsError(f"{path}: category {category!r}: missing key {key!r}")
            sentences = entry[key]
            if not isinstance(sentences, list) or not sentences:
                raise PromptsError(f"{where}: expected a non-empty list of sentences, got {sentences!r}")
            side = key.split("_")[1]
            checked = [_check_sentence(s, side, where) for s in sentences]
            duplicated = sorted({s for s in checked if checked.count(s) > 1})
            if duplicated:
                raise PromptsError(f"{where}: duplicated sentence(s) {duplicated}")
            prompts[category][key] = checked
    return prompts


@lru_cache(maxsize=1)
def _default_prompts() -> dict[str, dict[str, list[str]]]:
    return load_prompts()


def generate_report(
    slots: Sequence[Sequence[str]],
    laterality: str,
    rng: np.random.Generator | None = None,
    *,
    prompts: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    normal_states_absences: bool = True,
) -> str:
    """Report-like text of one view's 4-slot labels ``[pos_right, pos_left, neg_right, neg_left]``.

    ``laterality`` (``"R"`` / ``"L"``) selects the slots and sentences; ``rng`` given = training (random
    variants, shuffled sentences), ``None`` = deterministic (first variants, label order). See the module
    docstring. ``prompts`` defaults to :func:`load_prompts`. Returns ``""`` for empty slots.

    ``normal_states_absences``: a ``No Finding`` view also gets the absence sentence of every finding
    category ("there is no mass ..."), as a radiologist's normal report would. Upstream (``False``) gives
    it none, so "no mass" is only ever said of breasts with *another* finding, and a zero-shot prompt "no
    mass" learns to mean "calcifications" (docs/upstream.md#pretraining).
    """
    prompts = prompts if prompts is not None else _default_prompts()
    side = _SIDES.get(str(laterality).strip().upper())
    if side is None:
        raise PretrainDataError(f"laterality must be 'R' or 'L', got {laterality!r}")
    if len(slots) != 4:
        raise PretrainDataError(
            f"expected 4 label slots [pos_right, pos_left, neg_right, neg_left], got {slots!r}"
        )
    own = 0 if side == "right" else 1
    other = 1 - own
    if slots[other] or slots[other + 2]:
        raise PretrainDataError(
            f"labels {slots!r} fill the slots of the {'left' if own == 0 else 'right'} side "
            f"for a {side} breast"
        )
    positives = list(slots[own])
    if NO_FINDING in positives:
        negatives = list(FINDING_CATEGORIES) if normal_states_absences else []
    else:
        negatives = list(slots[own + 2])
    sentences: list[str] = []
    for label, kind in [(p, "pos") for p in positives] + [(n, "neg") for n in negatives]:
        variants = prompts.get(label, {}).get(f"{kind}_{side}")
        if not variants:
            raise PretrainDataError(f"no {kind}_{side} sentence for label {label!r} in the prompts")
        sentences.append(variants[int(rng.integers(len(variants)))] if rng is not None else variants[0])
    unique = list(dict.fromkeys(s for s in sentences if s))
    if rng is not None and len(unique) > 1:
        unique = [unique[k] for k in rng.permutation(len(unique))]
    return " ".join(unique)


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------


def text_id(text: str) -> int:
    """A stable signed 64-bit id of ``text``: the first 8 bytes of its BLAKE2b hash (UTF-8), big-endian."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big", signed=True)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return False


def _as_list(value: Any, what: str) -> list:
    """A list cell (a list, its Python repr as read from CSV, or missing -> [])."""
    if _is_missing(value):
        return []
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as err:
            raise PretrainDataError(f"{what}: not a Python list literal: {value[:80]!r} ({err})") from None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise PretrainDataError(f"{what}: expected a list, got {type(value).__name__} {value!r}")
    return list(value)


def _names(value: Any, what: str) -> list[str]:
    names = (str(v).strip() for v in _as_list(value, what) if not _is_missing(v))
    return list(dict.fromkeys(n for n in names if n))


def _lookup(png_paths: Mapping[str, Any], name: str) -> str | None:
    path = png_paths.get(name)
    if path is None:
        alternative = name[:-4] if name.lower().endswith(".png") else f"{name}.png"
        path = png_paths.get(alternative)
    return None if path is None else str(path)


def _examples(values: Sequence[str], n: int = 3) -> str:
    more = f", ... ({len(values)} in all)" if len(values) > n else ""
    return ", ".join(repr(v) for v in values[:n]) + more


@dataclass(frozen=True)
class _Image:
    name: str
    path: str
    view: str


@dataclass(frozen=True)
class _Breast:
    patient_id: str
    laterality: str
    cc: tuple[_Image, ...]
    mlo: tuple[_Image, ...]
    other: tuple[_Image, ...]
    texts: tuple[str, ...] = ()
    texts_aug: tuple[str | None, ...] = ()
    slots: Mapping[str, list[list[str]]] | None = None


class _MultiViewDataset(Dataset):
    """Shared table parsing, exclusion, view sampling and image loading (see the module docstring)."""

    stream = 0  #: distinguishes the random streams of the dataset classes
    other_views_allowed = True

    def __init__(
        self,
        table: pd.DataFrame,
        png_paths: Mapping[str, Any],
        *,
        height: int,
        width: int,
        train: bool,
        augment: TrainAugment | bool = True,
        seed: int = 0,
        name: str,
    ) -> None:
        if int(seed) < 0:
            raise PretrainDataError(f"seed must be >= 0, got {seed}")
        self.name = name
        self.height, self.width = int(height), int(width)
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        if not self.train or augment is False or augment is None:
            self.transform: TrainAugment | EvalTransform = EvalTransform(self.height, self.width)
        elif augment is True:
            self.transform = TrainAugment(self.height, self.width)
        elif isinstance(augment, TrainAugment):
            if (augment.height, augment.width) != (self.height, self.width):
                raise PretrainDataError(
                    f"{name}: augmentation size {augment.height}x{augment.width} differs from the dataset's "
                    f"{self.height}x{self.width}"
                )
            self.transform = augment
        else:
            raise PretrainDataError(f"{name}: augment must be a TrainAugment or a bool, got {augment!r}")
        missing = [c for c in ("image", "CC", "MLO", *self._required_columns()) if c not in table.columns]
        if missing:
            raise PretrainDataError(f"{name}: table lacks column(s) {', '.join(missing)}")
        self.stats: dict[str, int] = {"breasts_in": len(table), "images_in": 0, "excluded_images": 0}
        self._stat_keys_extra()
        excluded: list[str] = []
        self.breasts: list[_Breast] = []
        dropped_no_image = 0
        for position, row in enumerate(table.to_dict("records")):
            where = f"{name}: table row {position + 1} (patient {row.get('patient_id')!r})"
            cc = _names(row["CC"], f"{where}, column 'CC'")
            mlo = [n for n in _names(row["MLO"], f"{where}, column 'MLO'") if n not in cc]
            listed = set(cc) | set(mlo)
            other = [n for n in _names(row["image"], f"{where}, column 'image'") if n not in listed]
            self.stats["images_in"] += len(cc) + len(mlo) + len(other)
            if other and not self.other_views_allowed:
                self.stats["excluded_other_views"] += len(other)
                other = []
            pools = []
            for view, names in (("CC", cc), ("MLO", mlo), ("other", other)):
                found = []
                for image_name in names:
                    path = _lookup(png_paths, image_name)
                    if path is None:
                        excluded.append(image_name)
                    else:
                        found.append(_Image(image_name, path, view))
                pools.append(tuple(found))
            if not any(pools):
                dropped_no_image += 1
                continue
            breast = self._make_breast(row, where, *pools)
            if breast is not None:
                self.breasts.append(breast)
        self.stats["excluded_images"] = len(excluded)
        self.stats["dropped_breasts_without_image"] = dropped_no_image
        self.stats["breasts"] = len(self.breasts)
        self.stats["images"] = sum(len(b.cc) + len(b.mlo) + len(b.other) for b in self.breasts)
        self._log_stats(excluded)

    # -- hooks -------------------------------------------------------------------------------------

    def _required_columns(self) -> tuple[str, ...]:
        return ()

    def _stat_keys_extra(self) -> None:
        self.stats["excluded_other_views"] = 0

    def _make_breast(self, row: dict, where: str, cc, mlo, other) -> _Breast | None:
        raise NotImplementedError

    def _texts(self, breast: _Breast, first: _Image, second: _Image, rng) -> tuple[str, str]:
        raise NotImplementedError

    # -- bookkeeping -------------------------------------------------------------------------------

    def _log_stats(self, excluded: list[str]) -> None:
        s = self.stats
        details = ", ".join(f"{k}={v}" for k, v in s.items())
        dropped = s["breasts_in"] - s["breasts"]
        if s["excluded_images"] or dropped or s.get("excluded_other_views"):
            log.warning(
                "%s: excluded %d of %d images not in png_paths (failed or missing PNG conversion)%s; "
                "dropped %d of %d breasts (%s)",
                self._label,
                s["excluded_images"],
                s["images_in"],
                f", e.g. {_examples(excluded)}" if excluded else "",
                dropped,
                s["breasts_in"],
                details,
            )
        else:
            log.info("%s: %d breasts, %d images, none excluded", self._label, s["breasts"], s["images"])

    @property
    def _label(self) -> str:
        return f"{self.name} ({'training' if self.train else 'validation'})"

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of ``epoch`` (training augmentations differ between epochs)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.breasts)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.stream, self.epoch, index])

    # -- sampling ----------------------------------------------------------------------------------

    def pick_images(self, index: int, rng: np.random.Generator | None = None) -> tuple[_Image, _Image]:
        """The two images of item ``index`` (``rng`` None = validation choice)."""
        breast = self.breasts[index]
        primary = [p for p in (breast.cc, breast.mlo) if p]
        if len(primary) == 2:
            pools = primary
        elif len(primary) == 1 and breast.other:
            pools = [primary[0], breast.other]
        else:
            pools = [primary[0] if primary else breast.other]
        if len(pools) == 2:
            if rng is None:
                return pools[0][0], pools[1][0]
            first = pools[0][int(rng.integers(len(pools[0])))]
            second = pools[1][int(rng.integers(len(pools[1])))]
            return (first, second) if rng.random() < 0.5 else (second, first)
        pool = pools[0]
        if len(pool) == 1:
            return pool[0], pool[0]
        if rng is None:
            return pool[0], pool[1]
        i, j = rng.choice(len(pool), size=2, replace=False)
        return pool[int(i)], pool[int(j)]

    def _load(self, image: _Image, rng: np.random.Generator | None) -> torch.Tensor:
        raw = cv2.imread(image.path, cv2.IMREAD_GRAYSCALE)
        if raw is None:
            raise InferenceError(f"{image.path}: not a readable PNG (image {image.name!r} of {self.name})")
        if raw.min() == raw.max():
            # checked before augmenting: the affine's zero border would hide a constant image
            normalise_image(raw, source=image.path)  # raises InferenceError naming the file
        # rng is None only when not training, where the transform is an EvalTransform (which ignores it)
        pixels = self.transform(raw, cast(np.random.Generator, rng))
        try:
            return torch.from_numpy(normalise_image(pixels, source=image.path))
        except InferenceError:
            raise InferenceError(f"{image.path}: constant after augmentation, cannot be normalised") from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} items")
        rng = self._rng(index) if self.train else None
        breast = self.breasts[index]
        first, second = self.pick_images(index, rng)
        text, text2 = self._texts(breast, first, second, rng)
        return {
            "image": self._load(first, rng),
            "image2": self._load(second, rng),
            "text": text,
            "text2": text2,
            "view": first.view,
            "view2": second.view,
            "image_name": first.name,
            "image2_name": second.name,
            "patient_id": breast.patient_id,
            "laterality": breast.laterality,
            "dataset": self.name,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, breasts={len(self)}, train={self.train}, "
            f"size={self.height}x{self.width}, transform={self.transform!r})"
        )


class ImageTextDataset(_MultiViewDataset):
    """Image+report pairs, one item per breast (module docstring: views, texts, exclusion, randomness).

    ``table``: the pre-training table (:func:`mammoclip.annotations.reports.read_pretraining_table`), already
    restricted to the wanted folds. ``png_paths``: ``{image id or file name: PNG path}``. ``augment``: True
    (default :class:`~mammoclip.data.transforms.TrainAugment`), False (none) or a ``TrainAugment``; only used
    when ``train``. ``text_aug_prob``: probability of replacing a drawn section by its back-translation.
    """

    stream = 1

    def __init__(
        self,
        table: pd.DataFrame,
        png_paths: Mapping[str, Any],
        *,
        height: int,
        width: int,
        train: bool,
        augment: TrainAugment | bool = True,
        seed: int = 0,
        text_aug_prob: float = 0.5,
        name: str = "reports",
    ) -> None:
        if not 0.0 <= text_aug_prob <= 1.0:
            raise PretrainDataError(f"text_aug_prob must be in [0, 1], got {text_aug_prob}")
        self.text_aug_prob = float(text_aug_prob)
        self._has_augment_column = "text_augment" in table.columns
        super().__init__(
            table, png_paths, height=height, width=width, train=train, augment=augment, seed=seed, name=name
        )
        if not self._has_augment_column and self.train and self.text_aug_prob > 0:
            log.warning("%s: no 'text_augment' column: texts are never replaced by back-translations", name)

    def _required_columns(self) -> tuple[str, ...]:
        return ("text",)

    def _stat_keys_extra(self) -> None:
        super()._stat_keys_extra()
        self.stats["dropped_breasts_without_text"] = 0
        self.stats["sections_without_back_translation"] = 0

    def _make_breast(self, row: dict, where: str, cc, mlo, other) -> _Breast | None:
        raw = _as_list(row["text"], f"{where}, column 'text'")
        augmented = (
            _as_list(row["text_augment"], f"{where}, column 'text_augment'")
            if self._has_augment_column
            else []
        )
        if augmented and len(augmented) != len(raw):
            raise PretrainDataError(
                f"{where}: 'text_augment' has {len(augmented)} entries but 'text' has {len(raw)}"
            )
        augmented = augmented or [None] * len(raw)
        texts: list[str] = []
        texts_aug: list[str | None] = []
        for text, back in zip(raw, augmented, strict=True):
            if _is_missing(text) or not str(text).strip():
                continue
            texts.append(str(text))
            texts_aug.append(None if _is_missing(back) or not str(back).strip() else str(back))
        if not texts:
            self.stats["dropped_breasts_without_text"] += 1
            return None
        self.stats["sections_without_back_translation"] += sum(a is None for a in texts_aug)
        return _Breast(
            patient_id=str(row.get("patient_id", "")),
            laterality=str(row.get("laterality", "")),
            cc=cc,
            mlo=mlo,
            other=other,
            texts=tuple(texts),
            texts_aug=tuple(texts_aug),
        )

    def _texts(self, breast: _Breast, first: _Image, second: _Image, rng) -> tuple[str, str]:
        texts, augmented = breast.texts, breast.texts_aug
        if rng is None:
            return texts[0], texts[1] if len(texts) > 1 else texts[0]
        p = self.text_aug_prob
        if len(texts) == 1 and p > 0 and augmented[0] is not None:
            pair = (texts[0], augmented[0])
            return pair if rng.random() < 0.5 else pair[::-1]
        drawn = []
        for k in rng.integers(len(texts), size=2):
            replace = rng.random() < p
            drawn.append(augmented[k] if replace and augmented[k] is not None else texts[k])
        return drawn[0], drawn[1]


class VindrLabelDataset(_MultiViewDataset):
    """VinDr image-label breasts with texts generated from their labels (module docstring).

    ``table``: the image-label table (:func:`mammoclip.annotations.vindr.vindr_image_label_table`), already
    restricted to the wanted rows. ``prompts``: :func:`load_prompts` output (default: the package's file).
    Other arguments as :class:`ImageTextDataset`.
    """

    stream = 2
    other_views_allowed = False

    def __init__(
        self,
        table: pd.DataFrame,
        png_paths: Mapping[str, Any],
        *,
        height: int,
        width: int,
        train: bool,
        augment: TrainAugment | bool = True,
        seed: int = 0,
        prompts: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
        normal_states_absences: bool = True,
        name: str = "vindr",
    ) -> None:
        self.prompts = prompts if prompts is not None else load_prompts()
        self.normal_states_absences = normal_states_absences
        super().__init__(
            table, png_paths, height=height, width=width, train=train, augment=augment, seed=seed, name=name
        )

    def _required_columns(self) -> tuple[str, ...]:
        return ("laterality", "CC_FINDING", "MLO_FINDING")

    def _make_breast(self, row: dict, where: str, cc, mlo, other) -> _Breast | None:
        laterality = str(row["laterality"]).strip().upper()
        slots = {}
        for view, column in (("CC", "CC_FINDING"), ("MLO", "MLO_FINDING")):
            value = [
                [str(v) for v in _as_list(s, where)] for s in _as_list(row[column], f"{where}, {column}")
            ]
            slots[view] = value
            if (view == "CC" and cc) or (view == "MLO" and mlo):
                try:
                    report = generate_report(
                        value,
                        laterality,
                        None,
                        prompts=self.prompts,
                        normal_states_absences=self.normal_states_absences,
                    )
                except PretrainDataError as err:
                    raise PretrainDataError(f"{where}, column {column!r}: {err}") from None
                if not report:
                    raise PretrainDataError(
                        f"{where}, column {column!r}: no label for a view that has images"
                    )
        return _Breast(
            patient_id=str(row.get("patient_id", "")),
            laterality=laterality,
            cc=cc,
            mlo=mlo,
            other=other,
            slots=slots,
        )

    def _texts(self, breast: _Breast, first: _Image, second: _Image, rng) -> tuple[str, str]:
        slots = breast.slots
        assert slots is not None

        def report(image: _Image) -> str:
            return generate_report(
                slots[image.view],
                breast.laterality,
                rng,
                prompts=self.prompts,
                normal_states_absences=self.normal_states_absences,
            )

        return report(first), report(second)


def set_epoch(dataset: Dataset, epoch: int) -> None:
    """``set_epoch(epoch)`` on every dataset of ``dataset`` (through ConcatDataset and Subset)."""
    if isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            set_epoch(part, epoch)
    elif isinstance(dataset, Subset):
        set_epoch(dataset.dataset, epoch)
    elif hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


# --------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------


class PretrainCollate:
    """Batches items of the pre-training datasets (a class, so DataLoader workers can pickle it)."""

    def __init__(self, tokenizer, *, max_length: int = 256) -> None:
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        from mammoclip.models.text_encoders import tokenize

        if not samples:
            raise PretrainDataError("cannot collate an empty batch")
        texts = [s["text"] for s in samples]
        texts2 = [s["text2"] for s in samples]
        first = tokenize(self.tokenizer, texts, max_length=self.max_length, padding="max_length")
        second = tokenize(self.tokenizer, texts2, max_length=self.max_length, padding="max_length")
        return {
            "images": torch.stack([s["image"] for s in samples]),
            "images2": torch.stack([s["image2"] for s in samples]),
            "input_ids": first["input_ids"],
            "attention_mask": first["attention_mask"],
            "input_ids2": second["input_ids"],
            "attention_mask2": second["attention_mask"],
            "text_ids": torch.tensor([text_id(t) for t in texts], dtype=torch.long),
            "text2_ids": torch.tensor([text_id(t) for t in texts2], dtype=torch.long),
        }


def make_collate(tokenizer, *, max_length: int = 256) -> PretrainCollate:
    """The collate function of the pre-training loaders (module docstring, "Batches")."""
    return PretrainCollate(tokenizer, max_length=max_length)


# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------


def _read_report_table(table: pd.DataFrame | str | Path) -> tuple[pd.DataFrame, str]:
    if isinstance(table, pd.DataFrame):
        return table, str(table.attrs.get("source", "report table"))
    from mammoclip.annotations.reports import read_pretraining_table

    return read_pretraining_table(table), str(table)


def _read_vindr_table(table: pd.DataFrame | str | Path) -> tuple[pd.DataFrame, str]:
    if isinstance(table, pd.DataFrame):
        return table, str(table.attrs.get("source", "VinDr table"))
    from mammoclip.annotations.tables import read_table
    from mammoclip.annotations.vindr import LIST_COLUMNS

    frame = read_table(
        table,
        list_columns=LIST_COLUMNS,
        str_columns=("patient_id", "laterality", "split", "patient_id_laterality"),
    )
    return frame, str(table)


def _int_column(frame: pd.DataFrame, column: str, source: str) -> np.ndarray:
    if column not in frame.columns:
        raise PretrainDataError(f"{source}: no {column!r} column")
    try:
        return frame[column].astype("int64").to_numpy()
    except (ValueError, TypeError) as err:
        raise PretrainDataError(f"{source}: column {column!r} is not integer: {err}") from None


def build_pretraining_datasets(
    report_table: pd.DataFrame | str | Path | None = None,
    vindr_table: pd.DataFrame | str | Path | None = None,
    png_paths: Mapping[str, Any] | None = None,
    *,
    height: int,
    width: int,
    val_fold: int = 0,
    vindr_val_fold: int | None = None,
    seed: int = 0,
    augment: bool = True,
    legacy_augment: bool = False,
    text_aug_prob: float = 0.5,
    prompts: Mapping[str, Mapping[str, Sequence[str]]] | str | Path | None = None,
    normal_states_absences: bool = True,
) -> tuple[ConcatDataset, ConcatDataset]:
    """``(train, val)`` ConcatDatasets of the given tables (module docstring, "Splits").

    Tables are DataFrames or CSV paths. ``png_paths``: ``{image id or file name: PNG path}`` (required).
    Each part of ``val.datasets`` has a ``name`` (``"reports"``, ``"vindr"``): upstream averaged the
    validation loss per dataset, then over datasets. ``augment``: image augmentation in training
    (``legacy_augment``: upstream's fixed-magnitude affine). ``prompts``: a :func:`load_prompts` dict or a
    prompts file (default: the package's). ``normal_states_absences``: see :func:`generate_report` (upstream:
    False). Raises :class:`PretrainDataError` when no table is given, when
    a validation fold has no breast, or when the training set is empty.
    """
    if report_table is None and vindr_table is None:
        raise PretrainDataError("build_pretraining_datasets needs a report table, a VinDr table, or both")
    if png_paths is None:
        raise PretrainDataError("build_pretraining_datasets needs png_paths ({image id: PNG path})")
    augmenter: TrainAugment | bool = TrainAugment(height, width, legacy=legacy_augment) if augment else False
    common: dict[str, Any] = {"height": height, "width": width, "augment": augmenter, "seed": seed}
    train_parts: list[_MultiViewDataset] = []
    val_parts: list[_MultiViewDataset] = []

    if report_table is not None:
        table, source = _read_report_table(report_table)
        folds = _int_column(table, "fold", source)
        present = sorted(set(folds.tolist()))
        if val_fold not in present:
            raise PretrainDataError(
                f"{source}: no breast in validation fold {val_fold} (folds present: {present})"
            )
        is_val = folds == val_fold
        log.info(
            "%s: %d training and %d validation breasts (fold %d)",
            source,
            (~is_val).sum(),
            is_val.sum(),
            val_fold,
        )
        kwargs = {**common, "text_aug_prob": text_aug_prob}
        train_parts.append(ImageTextDataset(table[~is_val], png_paths, train=True, name="reports", **kwargs))
        val_parts.append(ImageTextDataset(table[is_val], png_paths, train=False, name="reports", **kwargs))

    if vindr_table is not None:
        table, source = _read_vindr_table(vindr_table)
        if isinstance(prompts, str | Path):
            prompts = load_prompts(prompts)
        if "split" not in table.columns:
            raise PretrainDataError(f"{source}: no 'split' column")
        k = val_fold if vindr_val_fold is None else vindr_val_fold
        folds = _int_column(table, "val_fold", source)
        training = (table["split"] == "training").to_numpy()
        is_val = training & (folds == k)
        is_train = training & (folds != k)
        if not is_val.any():
            present = sorted(set(folds[training].tolist()))
            raise PretrainDataError(
                f"{source}: no training-split breast in val_fold {k} (val_folds present: {present})"
            )
        log.info(
            "%s: %d training and %d validation breasts (val_fold %d of the training split); %d breasts of "
            "other splits (test) are never used",
            source,
            is_train.sum(),
            is_val.sum(),
            k,
            (~training).sum(),
        )
        kwargs = {**common, "prompts": prompts, "normal_states_absences": normal_states_absences}
        train_parts.append(VindrLabelDataset(table[is_train], png_paths, train=True, name="vindr", **kwargs))
        val_parts.append(VindrLabelDataset(table[is_val], png_paths, train=False, name="vindr", **kwargs))

    if sum(len(d) for d in train_parts) == 0:
        raise PretrainDataError("no training breast left (see the exclusion counts logged above)")
    return ConcatDataset(train_parts), ConcatDataset(val_parts)
