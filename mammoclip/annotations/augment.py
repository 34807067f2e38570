"""Back-translation augmentation of the report texts, as upstream does it (docs/upstream.md#reports).

Every string of the pre-training table's ``text`` lists is translated English -> ``language`` -> English
with the Marian models ``Helsinki-NLP/opus-mt-en-{language}`` and ``Helsinki-NLP/opus-mt-{language}-en``
(upstream: Italian), and the results, regrouped per row, become ``text_augment``.

Models are never downloaded here: :func:`find_translation_models` looks in a model folder, then in the
Hugging Face cache (offline), and raises :class:`TranslationModelsMissing` with instructions otherwise.
The real opus-mt repositories ship SentencePiece files (``source.spm``/``target.spm``), so their
``MarianTokenizer`` needs the ``sentencepiece`` package; a folder with a ``tokenizer.json`` does not.

Generation as upstream: beam sampling (``num_beams=5, do_sample=True, temperature=1.5``), batches of 128
in input order, ``random``/numpy/torch seeded (42) just before each of the two directions, decoded with
special tokens skipped, stripped and lowercased (upstream lowercases the re-read augmented text; it is not
re-tokenised, so punctuation stays attached: "birads: 4, ..."). Fixes and deviations:

* inputs are truncated to the model's maximum length (upstream does not truncate: > 512 tokens crash);
* generation stops at ``max_length`` tokens (default 512, upstream's Marian generation default);
* no DataLoader worker processes; the intermediate translation is returned on request
  (``return_intermediate``) instead of being written next to the data;
* Moses punctuation normalisation is applied only when ``sacremoses`` is installed (it was not in
  upstream's environment; MarianTokenizer's "Recommended: pip install sacremoses" warning is silenced).

Determinism: for fixed models, inputs, batch size, seed and device the output is reproducible (on CPU
bit-for-bit). A sampled translation depends on the other texts of its batch and on its position.
"""

from __future__ import annotations

import ast
import logging
import random
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

__all__ = [
    "TranslationModelsMissing",
    "augment_table",
    "back_translate",
    "find_translation_models",
    "make_back_translator",
    "translation_repo_ids",
]

log = logging.getLogger(__name__)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


class TranslationModelsMissing(FileNotFoundError):
    """The Marian translation models are not available locally (the message says how to provide them)."""


def translation_repo_ids(language: str) -> tuple[str, str]:
    """Hugging Face repository ids of the forward (en -> language) and backward models."""
    if not language or not language.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"not a language code: {language!r}")
    return f"Helsinki-NLP/opus-mt-en-{language}", f"Helsinki-NLP/opus-mt-{language}-en"


def _model_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a usable Marian model folder (None when it is)."""
    if not folder.is_dir():
        return "not found"
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        missing.append(" or ".join(_WEIGHT_FILES[:2]))
    if not (folder / "tokenizer.json").is_file() and not (folder / "source.spm").is_file():
        missing.append("source.spm/target.spm/vocab.json or tokenizer.json")
    return f"incomplete, lacks {', '.join(missing)}" if missing else None


def _find_one(repo_id: str, model_dir: str | Path | None, cache_dir: str | Path | None, looked: list[str]):
    if model_dir is not None:
        base = Path(model_dir)
        for folder in (base / repo_id.split("/")[-1], base / repo_id):
            problem = _model_problem(folder)
            if problem is None:
                return folder
            looked.append(f"{folder} ({problem})")
    from huggingface_hub import constants, snapshot_download

    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            snapshot = Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError and friends: not in the cache
        looked.append(f"Hugging Face cache {cache} ({repo_id}: {type(exc).__name__})")
        return None
    problem = _model_problem(snapshot)
    if problem is None:
        return snapshot
    looked.append(f"Hugging Face cache {snapshot} ({problem})")
    return None


def find_translation_models(
    language: str, *, model_dir: str | Path | None, cache_dir: str | Path | None = None
) -> tuple[Path, Path]:
    """Local folders of the forward (en -> ``language``) and backward opus-mt models.

    Looks in ``model_dir`` for ``opus-mt-en-{language}`` / ``opus-mt-{language}-en`` subfolders (or the
    full repo-id path ``Helsinki-NLP/opus-mt-...``), then in the Hugging Face cache (``cache_dir``, default
    ``$HF_HUB_CACHE``) without any network access. A folder counts when it has ``config.json``, weights
    and tokenizer files. Raises :class:`TranslationModelsMissing` listing every place looked at.
    """
    looked: list[str] = []
    found = [_find_one(repo, model_dir, cache_dir, looked) for repo in translation_repo_ids(language)]
    if all(f is not None for f in found):
        return found[0], found[1]
    missing = [repo for repo, f in zip(translation_repo_ids(language), found, strict=True) if f is None]
    target = Path(model_dir) if model_dir is not None else Path("<model_dir>")
    howto = "\n".join(
        f"  huggingface-cli download {repo} --local-dir {target / repo.split('/')[-1]}" for repo in missing
    )
    raise TranslationModelsMissing(
        f"back-translation model(s) {', '.join(missing)} not found locally. Looked in:\n  "
        + "\n  ".join(looked)
        + "\nProvide them on a machine with internet access, e.g.\n"
        + howto
        + "\n(or `huggingface-cli download <repo>` into the Hugging Face cache and copy the cache over, or "
        "`MarianMTModel.from_pretrained(repo).save_pretrained(dir)` and the same for `AutoTokenizer`), then "
        "point the model folder at them. The tokenizers need the `sentencepiece` package. To skip "
        "augmentation instead, set `reports.augmentation.method: none` in the config (text_augment = text)."
    )


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _load(path: str | Path, device: str):
    from transformers import AutoTokenizer, MarianMTModel

    path = Path(path)
    if not (path / "tokenizer.json").is_file() and (path / "source.spm").is_file():
        try:
            import sentencepiece  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                f"{path}: the Marian tokenizer (source.spm/target.spm) needs the `sentencepiece` package: "
                "pip install sentencepiece"
            ) from exc
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model: Any = MarianMTModel.from_pretrained(path, local_files_only=True)
    model = model.to(device).eval()
    return tokenizer, model


def _translate(
    texts: Sequence[str],
    tokenizer,
    model,
    *,
    device: str,
    batch_size: int,
    max_length: int,
    generate: dict[str, Any],
    bar,
) -> list[str]:
    import torch

    limits = [max_length, getattr(model.config, "max_position_embeddings", None) or max_length]
    if isinstance(getattr(tokenizer, "model_max_length", None), int):
        limits.append(tokenizer.model_max_length)
    input_limit = min(limits)
    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        encoded = tokenizer(
            batch, padding=True, truncation=True, max_length=input_limit, return_tensors="pt"
        ).to(device)
        with torch.inference_mode():
            generated = model.generate(**encoded, max_length=min(limits[:2]), **generate)
        decoded = tokenizer.batch_decode(generated, skip_special_tokens=True)
        out.extend(text.strip() for text in decoded)
        bar.update(1)
    return out


def back_translate(
    texts: list[str],
    *,
    forward: str | Path,
    backward: str | Path,
    temperature: float = 1.5,
    num_beams: int = 5,
    do_sample: bool = True,
    batch_size: int = 128,
    max_length: int = 512,
    seed: int = 42,
    device: str | None = None,
    progress: bool = True,
    return_intermediate: bool = False,
) -> list[str] | tuple[list[str], list[str]]:
    """``texts`` translated with ``forward`` and back with ``backward`` (model folders), lowercased.

    One output per input, in order. Inputs are truncated to ``min(max_length, model and tokenizer
    limits)`` tokens; generation stops at ``max_length``. ``device=None``: CUDA when available. The seed
    is set just before each direction. ``return_intermediate=True`` also returns the forward
    translations: ``(back_translated, intermediate)``.
    """
    import torch
    from tqdm.auto import tqdm

    texts = [str(t) for t in texts]
    if not texts:
        return ([], []) if return_intermediate else []
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    generate = {"temperature": temperature, "num_beams": num_beams, "do_sample": do_sample}
    n_batches = -(-len(texts) // batch_size)
    options: dict[str, Any] = {
        "device": device,
        "batch_size": batch_size,
        "max_length": max_length,
        "generate": generate,
    }
    with tqdm(total=2 * n_batches, desc="back-translation", unit="batch", disable=not progress) as bar:
        tokenizer, model = _load(forward, device)
        _seed_everything(seed)
        intermediate = _translate(texts, tokenizer, model, bar=bar, **options)
        del tokenizer, model
        tokenizer, model = _load(backward, device)
        _seed_everything(seed)
        result = [t.lower() for t in _translate(intermediate, tokenizer, model, bar=bar, **options)]
    return (result, intermediate) if return_intermediate else result


def make_back_translator(
    language: str,
    *,
    model_dir: str | Path | None,
    cache_dir: str | Path | None = None,
    **options: Any,
) -> Callable[[list[str]], list[str]]:
    """A ``translate`` function for :func:`augment_table`: models located now, loaded on first call.

    ``options`` are passed to :func:`back_translate` (``seed``, ``batch_size``, ``device``, ...).
    """
    forward, backward = find_translation_models(language, model_dir=model_dir, cache_dir=cache_dir)
    log.info("back-translation models: %s, %s", forward, backward)

    def translate(texts: list[str]) -> list[str]:
        result = back_translate(texts, forward=forward, backward=backward, **options)
        return cast(list[str], result)  # without return_intermediate: the texts only

    return translate


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = ast.literal_eval(value)
    return [str(v) for v in value]


def augment_table(table: pd.DataFrame, *, translate: Callable[[list[str]], list[str]]) -> pd.DataFrame:
    """A copy of ``table`` with ``text_augment``: each row's ``text`` list translated, in the same order.

    All texts of all rows are flattened in row order and passed to ``translate`` in one call (it batches);
    the results are regrouped per row (same count as ``text``). ``text`` may hold lists or their repr.
    ``text_augment`` is placed before ``fold`` (upstream's column order).
    """
    texts = [_as_list(v) for v in table["text"]]
    flat = [t for row in texts for t in row]
    translated = list(translate(flat)) if flat else []
    if len(translated) != len(flat):
        raise ValueError(f"translate returned {len(translated)} strings for {len(flat)} inputs")
    regrouped, start = [], 0
    for row in texts:
        regrouped.append(translated[start : start + len(row)])
        start += len(row)
    out = table.copy()
    if "text_augment" in out.columns:
        out = out.drop(columns="text_augment")
    position = out.columns.get_loc("fold") if "fold" in out.columns else len(out.columns)
    out.insert(position, "text_augment", pd.Series(regrouped, index=out.index, dtype=object))
    return out
