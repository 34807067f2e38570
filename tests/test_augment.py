"""Back-translation with tiny, randomly initialised Marian models built offline."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from mammoclip.annotations.augment import (
    TranslationModelsMissing,
    augment_table,
    back_translate,
    find_translation_models,
    make_back_translator,
)

CORPUS = [
    "the breasts are heterogeneously dense",
    "there is a 1.5 cm irregular mass in the upper outer quadrant of the left breast",
    "birads : 4 , patient is : 69 years old , and no additional imaging required at this time",
    "le mammelle sono eterogeneamente dense",
    "c ' è una massa irregolare di 1.5 cm nel quadrante supero esterno della mammella sinistra",
    "nessuna massa sospetta BIRADS Mammella Sinistra",
]
MAX_POSITIONS = 32
FAST = {"max_length": 20, "progress": False}


def _marian(vocab_size: int, pad: int, eos: int):
    import torch
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=vocab_size,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=pad,
        eos_token_id=eos,
        decoder_start_token_id=pad,
        forced_eos_token_id=eos,
    )
    torch.manual_seed(0)
    return MarianMTModel(config)


def _save_fast_model(folder: Path) -> Path:
    """A Marian model with a word-level ``tokenizer.json`` (no sentencepiece needed)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["</s>", "<unk>", "<pad>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 0)])
    tok.decoder = decoders.WordPiece()
    # no model_max_length: truncation must come from the model's max_position_embeddings
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    )
    _marian(tok.get_vocab_size(), pad=2, eos=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _save_spm_model(folder: Path, language: str) -> Path:
    """A Marian model in the real opus-mt layout: source.spm, target.spm, vocab.json."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 3),
        model_writer=buffer,
        vocab_size=48,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    folder.mkdir(parents=True)
    for name in ("source.spm", "target.spm"):
        (folder / name).write_bytes(buffer.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buffer.getvalue())
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    src, tgt = folder.name.split("-")[-2:]
    (folder / "tokenizer_config.json").write_text(json.dumps({"source_lang": src, "target_lang": tgt}))
    _marian(len(vocab), pad=vocab["<pad>"], eos=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    _save_fast_model(root / "opus-mt-en-it")
    _save_fast_model(root / "opus-mt-it-en")
    return root


@pytest.fixture(scope="module")
def models(model_dir: Path) -> tuple[Path, Path]:
    return find_translation_models("it", model_dir=model_dir, cache_dir=model_dir / "no-cache")


# --------------------------------------------------------------------------------------- model lookup


def test_find_in_model_dir(model_dir: Path, tmp_path: Path) -> None:
    forward, backward = find_translation_models("it", model_dir=model_dir, cache_dir=tmp_path)
    assert (forward, backward) == (model_dir / "opus-mt-en-it", model_dir / "opus-mt-it-en")
    # the full repo-id layout works too
    nested = tmp_path / "m" / "Helsinki-NLP"
    nested.mkdir(parents=True)
    for name in ("opus-mt-en-it", "opus-mt-it-en"):
        (nested / name).symlink_to(model_dir / name)
    assert (
        find_translation_models("it", model_dir=tmp_path / "m", cache_dir=tmp_path)[1]
        == nested / "opus-mt-it-en"
    )


def test_find_in_hf_cache(model_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    for name in ("opus-mt-en-it", "opus-mt-it-en"):
        repo = cache / f"models--Helsinki-NLP--{name}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0" * 40)
        shutil.copytree(model_dir / name, repo / "snapshots" / ("0" * 40))
    forward, backward = find_translation_models("it", model_dir=tmp_path / "empty", cache_dir=cache)
    assert forward == cache / "models--Helsinki-NLP--opus-mt-en-it" / "snapshots" / ("0" * 40)
    assert backward.parent.parent.name == "models--Helsinki-NLP--opus-mt-it-en"


def test_missing_models_message(model_dir: Path, tmp_path: Path) -> None:
    local = tmp_path / "local"
    (local / "opus-mt-en-fr").mkdir(parents=True)
    (local / "opus-mt-en-fr" / "config.json").write_text("{}")
    with pytest.raises(TranslationModelsMissing) as info:
        find_translation_models("fr", model_dir=local, cache_dir=tmp_path / "hub")
    message = str(info.value)
    assert "Helsinki-NLP/opus-mt-en-fr, Helsinki-NLP/opus-mt-fr-en not found locally" in message
    assert f"{local / 'opus-mt-en-fr'} (incomplete, lacks model.safetensors or pytorch_model.bin" in message
    assert f"{local / 'Helsinki-NLP' / 'opus-mt-en-fr'} (not found)" in message
    assert f"{local / 'opus-mt-fr-en'} (not found)" in message
    assert f"Hugging Face cache {tmp_path / 'hub'}" in message
    assert (
        f"huggingface-cli download Helsinki-NLP/opus-mt-en-fr --local-dir {local / 'opus-mt-en-fr'}"
        in message
    )
    assert "huggingface-cli download Helsinki-NLP/opus-mt-fr-en" in message
    assert "save_pretrained" in message and "sentencepiece" in message
    assert "`reports.augmentation.method: none`" in message
    # only the missing direction is reported
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "opus-mt-en-it").symlink_to(model_dir / "opus-mt-en-it")
    with pytest.raises(TranslationModelsMissing, match=r"model\(s\) Helsinki-NLP/opus-mt-it-en not found"):
        find_translation_models("it", model_dir=partial, cache_dir=tmp_path / "hub")
    with pytest.raises(ValueError, match="not a language code"):
        find_translation_models("../it", model_dir=partial)


# ---------------------------------------------------------------------------------------- translation

TEXTS = [
    "the breasts are heterogeneously dense",
    "there is a 1.5 cm irregular mass in the upper outer quadrant of the left breast",
    "birads : 4 , patient is : 69 years old , and no additional imaging required at this time",
    "nessuna massa sospetta",
    "",
]


def test_back_translate_deterministic(models: tuple[Path, Path]) -> None:
    forward, backward = models
    a = back_translate(TEXTS, forward=forward, backward=backward, batch_size=2, seed=42, device="cpu", **FAST)
    b = back_translate(TEXTS, forward=forward, backward=backward, batch_size=2, seed=42, device="cpu", **FAST)
    c = back_translate(TEXTS, forward=forward, backward=backward, batch_size=2, seed=7, device="cpu", **FAST)
    assert len(a) == len(TEXTS) and all(isinstance(t, str) for t in a)
    assert a == b
    assert a != c  # beam sampling at temperature 1.5 with random weights
    assert all(t == t.lower() == t.strip() for t in a)
    assert not any("<pad>" in t or "</s>" in t for t in a)
    out, intermediate = back_translate(
        TEXTS, forward=forward, backward=backward, batch_size=2, seed=42, return_intermediate=True, **FAST
    )
    assert out == a and len(intermediate) == len(TEXTS)
    assert back_translate([], forward=forward, backward=backward) == []


def test_back_translate_truncates_long_inputs(models: tuple[Path, Path]) -> None:
    forward, backward = models
    long = " ".join(CORPUS * 10)  # ~ 250 words >> 32 positions of the tiny model
    out = back_translate([long, "the breasts are dense"], forward=forward, backward=backward, **FAST)
    assert len(out) == 2


def test_missing_sentencepiece_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mammoclip.annotations import augment

    folder = tmp_path / "opus-mt-en-it"
    folder.mkdir()
    (folder / "source.spm").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(ImportError, match="pip install sentencepiece"):
        augment._load(folder, "cpu")


def test_real_opus_mt_layout(tmp_path: Path) -> None:
    pytest.importorskip("sentencepiece")
    _save_spm_model(tmp_path / "opus-mt-en-it", "it")
    _save_spm_model(tmp_path / "opus-mt-it-en", "it")
    forward, backward = find_translation_models("it", model_dir=tmp_path, cache_dir=tmp_path / "hub")
    out = back_translate(TEXTS[:3] + [" ".join(CORPUS * 10)], forward=forward, backward=backward, **FAST)
    assert len(out) == 4 and all(t == t.lower() for t in out)
    assert out == back_translate(
        TEXTS[:3] + [" ".join(CORPUS * 10)], forward=forward, backward=backward, **FAST
    )


# -------------------------------------------------------------------------------------------- regrouping


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": ["1", "1", "2"],
            "laterality": ["L", "R", "L"],
            "text": [["a b c", "d e f"], ["g h i"], ["j k l", "m n o", "p q r"]],
            "fold": [0, 0, 1],
        }
    )


def test_augment_table_regroups_per_row() -> None:
    calls = []

    def translate(texts: list[str]) -> list[str]:
        calls.append(list(texts))
        return [t.upper() for t in texts]

    table = _table()
    out = augment_table(table, translate=translate)
    assert calls == [["a b c", "d e f", "g h i", "j k l", "m n o", "p q r"]]
    assert list(out.columns) == ["patient_id", "laterality", "text", "text_augment", "fold"]
    assert list(out.text_augment) == [["A B C", "D E F"], ["G H I"], ["J K L", "M N O", "P Q R"]]
    assert "text_augment" not in table.columns
    # repr-string lists (as read from CSV) work too, and a second run replaces the column
    as_repr = out.assign(text=out.text.map(repr))
    again = augment_table(as_repr, translate=lambda texts: [t[::-1] for t in texts])
    assert list(again.columns) == list(out.columns)
    assert list(again.text_augment.map(len)) == [2, 1, 3] and again.text_augment[1] == ["i h g"]
    with pytest.raises(ValueError, match="returned 1 strings for 6 inputs"):
        augment_table(table, translate=lambda texts: ["x"])


def test_augment_table_with_models(model_dir: Path) -> None:
    translate = make_back_translator("it", model_dir=model_dir, cache_dir=model_dir / "none", **FAST)
    table = _table().assign(text=[[TEXTS[0], TEXTS[1]], [TEXTS[2]], [TEXTS[3], TEXTS[0], TEXTS[1]]])
    out = augment_table(table, translate=translate)
    assert list(out.text_augment.map(len)) == [2, 1, 3]
    assert all(isinstance(t, str) for texts in out.text_augment for t in texts)
