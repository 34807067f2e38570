"""Text side of the CLIP model: a Hugging Face BERT wrapped with Mammo-CLIP's pooling.

The wrapper keeps the BERT in the attribute ``text_encoder`` so that, inside the CLIP model (whose attribute
is also ``text_encoder``), parameters are named ``text_encoder.text_encoder.<BERT key>`` exactly as in the
released checkpoints (docs/upstream.md#models).

Loading is always offline (``local_files_only=True``): from a local model directory or from the Hugging
Face cache. ``build_tiny_bert`` makes a small BERT with a WordPiece vocabulary trained on a report corpus,
for tests and demo runs that must not download anything.
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

POOLINGS = ("eos", "bos", "mean")
DEFAULT_TEXT_BACKBONE = "emilyalsentzer/Bio_ClinicalBERT"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class TextBackboneNotFoundError(FileNotFoundError):
    """A text model or tokenizer is neither a local directory nor in the Hugging Face cache."""


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``[B, T, H]`` token states to ``[B, H]`` as upstream's ``encode_text``.

    ``eos``: the state at index ``attention_mask.sum(-1) - 1`` (the ``[SEP]`` of a right-padded batch);
    ``bos``: the state at index 0 (``[CLS]``); ``mean``: mask-weighted mean, denominator clamped at 1e-9.
    """
    if pooling == "eos":
        last = attention_mask.sum(dim=-1).long() - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "bos":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    raise ValueError(f"unknown text pooling {pooling!r}; expected one of {POOLINGS}")


class TextEncoder(nn.Module):
    """A Hugging Face encoder (``text_encoder``) followed by eos / bos / mean pooling.

    ``forward(input_ids, attention_mask) -> [B, out_dim]`` with ``out_dim`` the model's hidden size.
    """

    def __init__(self, backbone: nn.Module, pooling: str = "eos") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown text pooling {pooling!r}; expected one of {POOLINGS}")
        self.text_encoder = backbone
        self.pooling = pooling
        config: Any = backbone.config  # a transformers model's config
        self.out_dim = int(config.hidden_size)

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-token last hidden states ``[B, T, out_dim]``."""
        return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return pool_hidden_states(
            self.forward_tokens(input_ids, attention_mask), attention_mask, self.pooling
        )


def _hub_cache(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _not_found(
    name_or_dir: str | os.PathLike, cache_dir, what: str, cause: Exception
) -> TextBackboneNotFoundError:
    name = str(name_or_dir)
    local = Path(name).expanduser().resolve()
    state = "exists but holds no usable model files" if local.is_dir() else "absent"
    repo_id = name if "/" in name and not local.is_dir() and not name.startswith(("/", ".", "~")) else None
    reason = str(cause).splitlines()[0] if str(cause) else ""
    return TextBackboneNotFoundError(
        f"cannot load the text {what} {name!r} offline (local_files_only=True). Looked in:\n"
        f"  1. the local directory {local} ({state})\n"
        f"  2. the Hugging Face cache {_hub_cache(cache_dir)} (as model id {name!r})\n"
        "To provide it: on a machine with internet run "
        f"`huggingface-cli download {repo_id or DEFAULT_TEXT_BACKBONE} --local-dir DIR` (or without "
        "--local-dir to fill the Hugging Face cache, ~/.cache/huggingface/hub or $HF_HOME/hub), copy DIR or "
        "the cache to this machine, and pass DIR as the model directory (or point cache_dir / HF_HOME at "
        f"the cache).\n(underlying error: {type(cause).__name__}: {reason})"
    )


def _source_and_kwargs(name_or_dir, cache_dir) -> tuple[str, dict[str, Any]]:
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return str(path), {"local_files_only": True}
    kwargs: dict[str, Any] = {"local_files_only": True}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    return str(name_or_dir), kwargs


def _fix_bos(tokenizer):
    # upstream: a tokenizer without a BOS token (BERT) uses [CLS] as BOS
    if getattr(tokenizer, "bos_token_id", None) is None and tokenizer.cls_token is not None:
        tokenizer.bos_token = tokenizer.cls_token
    return tokenizer


def load_tokenizer(name_or_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None):
    """The tokenizer of a local model directory or a cached Hugging Face model, offline only."""
    from transformers import AutoTokenizer

    source, kwargs = _source_and_kwargs(name_or_dir, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise _not_found(name_or_dir, cache_dir, "tokenizer", exc) from exc
    return _fix_bos(tokenizer)


def load_text_backbone(name_or_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None):
    """``(model, tokenizer)`` from a local directory or the Hugging Face cache, never from the network.

    ``name_or_dir`` is a directory written by ``save_pretrained`` (e.g. by :func:`build_tiny_bert`) or a
    Hugging Face model id (default model: ``emilyalsentzer/Bio_ClinicalBERT``) found in the cache
    (``cache_dir`` or the standard one). The tokenizer gets ``bos_token = cls_token`` when it has no BOS.
    """
    from transformers import AutoModel

    source, kwargs = _source_and_kwargs(name_or_dir, cache_dir)
    try:
        model = AutoModel.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise _not_found(name_or_dir, cache_dir, "model", exc) from exc
    tokenizer = load_tokenizer(name_or_dir, cache_dir=cache_dir)
    return model, tokenizer


def tokenize(
    tokenizer,
    texts: str | Sequence[str],
    *,
    max_length: int = 256,
    padding: str = "max_length",
) -> dict[str, torch.Tensor]:
    """``{"input_ids", "attention_mask"}`` as ``[B, T]`` tensors; truncation to ``max_length``.

    ``padding="max_length"`` (training, upstream ``text_max_length = 256``) or ``"longest"`` (prompts).
    """
    if padding not in ("max_length", "longest"):
        raise ValueError(f"padding must be 'max_length' or 'longest', not {padding!r}")
    if isinstance(texts, str):
        texts = [texts]
    enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def train_wordpiece_vocab(texts: Iterable[str], *, vocab_size: int = 2000) -> list[str]:
    """A lower-cased WordPiece vocabulary learnt from ``texts``, deterministically.

    Same algorithm as the ``tokenizers`` WordPiece trainer (BPE merges over words split into a first symbol
    and ``##``-prefixed continuation symbols, text normalised and pre-tokenised exactly as
    ``BertWordPieceTokenizer(lowercase=True)`` does), but ties between equally frequent pairs are broken by
    the pair itself instead of by hash-map order, so the same corpus always gives the same vocabulary (the
    Rust trainer does not). Order: special tokens, the alphabet (every character seen, alone and with
    ``##``, sorted, so any word made of seen characters has a tokenization without ``[UNK]``), then merges
    in the order learnt.
    """
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(str(text))))
    words = sorted(counts)
    freqs = [counts[w] for w in words]
    splits = [[w[0], *("##" + c for c in w[1:])] for w in words]

    vocab = list(SPECIAL_TOKENS)
    seen = set(vocab)
    chars = {c for w in words for c in w}
    for symbol in sorted(chars | {"##" + c for c in chars}):
        if symbol not in seen:
            vocab.append(symbol)
            seen.add(symbol)

    pair_counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    heap: list[tuple[int, tuple[str, str]]] = []

    def account(i: int, sign: int) -> None:
        split = splits[i]
        for pair in zip(split, split[1:], strict=False):
            pair_counts[pair] += sign * freqs[i]
            if sign > 0:
                where[pair].add(i)
            else:
                where[pair].discard(i)
            heapq.heappush(heap, (-pair_counts[pair], pair))

    for i in range(len(splits)):
        account(i, +1)

    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg or -neg <= 0:
            continue  # stale heap entry
        first, second = pair
        merged = first + second[2:]
        for i in sorted(where[pair]):
            account(i, -1)
            split, new = splits[i], []
            k = 0
            while k < len(split):
                if k + 1 < len(split) and split[k] == first and split[k + 1] == second:
                    new.append(merged)
                    k += 2
                else:
                    new.append(split[k])
                    k += 1
            splits[i] = new
            account(i, +1)
        del pair_counts[pair]
        if merged not in seen:
            vocab.append(merged)
            seen.add(merged)
    return vocab


def build_tiny_bert(
    corpus: Iterable[str],
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = 2000,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 128,
    max_position: int = 256,
    seed: int = 0,
) -> Path:
    """Write a small randomly initialised BERT and its WordPiece tokenizer to ``out_dir``; return it.

    The vocabulary (lower-cased WordPiece, :func:`train_wordpiece_vocab`) is learnt offline from ``corpus``;
    the weights are drawn from a generator seeded with ``seed``. Same corpus and arguments give the same
    vocabulary and weights. The directory loads with :func:`load_text_backbone`.
    """
    from tokenizers import BertWordPieceTokenizer

    # transformers 5 exports BertTokenizerFast as an alias its stubs do not declare; 4.x as a class
    from transformers import BertConfig, BertModel, BertTokenizerFast  # type: ignore[attr-defined]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = [str(t) for t in corpus]
    if not texts:
        raise ValueError("build_tiny_bert needs a non-empty corpus")

    vocab = train_wordpiece_vocab(texts, vocab_size=vocab_size)
    (out / "vocab.txt").write_text("".join(token + "\n" for token in vocab), encoding="utf-8")
    wordpiece = BertWordPieceTokenizer(str(out / "vocab.txt"), lowercase=True)
    tokenizer = BertTokenizerFast(
        tokenizer_object=wordpiece._tokenizer,
        do_lower_case=True,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=max_position,
    )
    tokenizer.save_pretrained(str(out))

    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_position,
        pad_token_id=wordpiece.token_to_id("[PAD]"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    model.save_pretrained(str(out))
    (out / "tiny_bert.json").write_text(
        json.dumps(
            {"seed": seed, "corpus_lines": len(texts), "vocab_size": config.vocab_size},
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
    return out
