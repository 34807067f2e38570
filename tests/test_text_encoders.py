"""Text encoder: pooling as upstream, offline tiny BERT builder, offline loading and its error messages."""

from __future__ import annotations

import pytest
import torch

from mammoclip.models.text_encoders import (
    TextBackboneNotFoundError,
    TextEncoder,
    build_tiny_bert,
    load_text_backbone,
    load_tokenizer,
    pool_hidden_states,
    tokenize,
    train_wordpiece_vocab,
)


@pytest.fixture(scope="module")
def backbone(tiny_bert_dir):
    model, tokenizer = load_text_backbone(tiny_bert_dir)
    return model.eval(), tokenizer


def test_pool_hidden_states_by_hand():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    # eos: state at index sum(mask) - 1 -> rows 2 and 1
    assert torch.equal(pool_hidden_states(hidden, mask, "eos"), torch.stack([hidden[0, 2], hidden[1, 1]]))
    assert torch.equal(pool_hidden_states(hidden, mask, "bos"), hidden[:, 0])
    expected_mean = torch.stack([hidden[0, :3].mean(0), hidden[1, :2].mean(0)])
    assert torch.allclose(pool_hidden_states(hidden, mask, "mean"), expected_mean)
    # an all-padding row: denominator clamped, no NaN
    zero = pool_hidden_states(hidden, torch.zeros(2, 4, dtype=torch.long), "mean")
    assert torch.equal(zero, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="unknown text pooling"):
        pool_hidden_states(hidden, mask, "max")


@pytest.mark.parametrize("pooling", ["eos", "bos", "mean"])
def test_text_encoder_pooling_on_padded_batch(backbone, pooling):
    model, tokenizer = backbone
    texts = ["spiculated mass", "scattered areas of fibroglandular density in the left breast", "no"]
    batch = tokenize(tokenizer, texts, max_length=32, padding="longest")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lengths = mask.sum(-1).tolist()
    assert len(set(lengths)) == 3 and max(lengths) == ids.shape[1]  # really padded, different lengths
    encoder = TextEncoder(model, pooling=pooling).eval()
    assert encoder.out_dim == 128 and encoder.text_encoder is model
    with torch.no_grad():
        pooled = encoder(ids, mask)
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert pooled.shape == (3, 128)
    for i, n in enumerate(lengths):
        if pooling == "eos":
            assert ids[i, n - 1] == tokenizer.sep_token_id  # the [SEP] token, BERT's "EOS"
            expected = hidden[i, n - 1]
        elif pooling == "bos":
            assert ids[i, 0] == tokenizer.cls_token_id
            expected = hidden[i, 0]
        else:
            expected = hidden[i, :n].sum(0) / n
        assert torch.allclose(pooled[i], expected, atol=1e-6)
    assert set(encoder.state_dict()) == {f"text_encoder.{k}" for k in model.state_dict()}


def test_text_encoder_rejects_unknown_pooling(backbone):
    with pytest.raises(ValueError, match="unknown text pooling"):
        TextEncoder(backbone[0], pooling="cls")


def test_tiny_bert_is_deterministic(tmp_path, report_corpus):
    kwargs = {"vocab_size": 200, "hidden_size": 64, "layers": 1, "heads": 2, "intermediate": 64}
    a = build_tiny_bert(report_corpus, tmp_path / "a", seed=5, **kwargs)
    b = build_tiny_bert(report_corpus, tmp_path / "b", seed=5, **kwargs)
    c = build_tiny_bert(report_corpus, tmp_path / "c", seed=6, **kwargs)
    for name in ("vocab.txt", "tokenizer.json", "config.json", "model.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "vocab.txt").read_bytes() == (c / "vocab.txt").read_bytes()  # seed only changes weights
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    vocab = (a / "vocab.txt").read_text().split("\n")[:-1]
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(vocab) == 200


def test_wordpiece_vocab_is_deterministic_and_complete(report_corpus):
    first = train_wordpiece_vocab(report_corpus, vocab_size=150)
    assert first == train_wordpiece_vocab(list(reversed(report_corpus)), vocab_size=150)
    assert len(first) == len(set(first)) == 150
    letters = {c for text in report_corpus for c in text if c != " "}
    assert letters <= set(first) and {f"##{c}" for c in "aeiou"} <= set(first)


def test_load_text_backbone_round_trip(tiny_bert_dir, backbone):
    from safetensors.torch import load_file

    model, tokenizer = backbone
    again, _ = load_text_backbone(str(tiny_bert_dir))
    stored = load_file(tiny_bert_dir / "model.safetensors")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in stored.items() if k in state)
    batch = tokenize(tokenizer, ["a spiculated mass", "grouped amorphous calcifications"], max_length=16)
    with torch.no_grad():
        out1 = model(**batch).last_hidden_state
        out2 = again.eval()(**batch).last_hidden_state
    assert torch.equal(out1, out2)
    assert tokenizer.bos_token_id == tokenizer.cls_token_id  # upstream: BOS falls back to [CLS]


def test_tokenizer_really_uses_the_vocabulary(backbone, report_corpus):
    # transformers 5 trap: BertTokenizer(vocab_file=...) ignores the file and maps every word to [UNK]
    _, tokenizer = backbone
    ids = tokenize(tokenizer, report_corpus[:10], max_length=64, padding="longest")["input_ids"]
    assert (ids == tokenizer.unk_token_id).sum() == 0
    assert tokenizer.tokenize("LEFT Breast MASS") == ["left", "breast", "mass"]  # lower-cased, whole words
    pieces = tokenizer.tokenize("Spiculated")
    assert "".join(p.removeprefix("##") for p in pieces) == "spiculated" and "[UNK]" not in pieces
    assert tokenizer.convert_tokens_to_ids("breast") != tokenizer.unk_token_id
    assert len(tokenizer) == 300


def test_tokenize_padding_and_truncation(backbone):
    _, tokenizer = backbone
    fixed = tokenize(tokenizer, ["mass", "a b c d e f g h i j k l m n o p"], max_length=8)
    assert fixed["input_ids"].shape == (2, 8) and set(fixed) == {"input_ids", "attention_mask"}
    assert fixed["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert fixed["input_ids"][1, -1] == tokenizer.sep_token_id  # truncated but still ends with [SEP]
    longest = tokenize(tokenizer, ["left breast mass", "mass"], padding="longest")
    assert longest["input_ids"].shape == (2, 5)  # [CLS] left breast mass [SEP]
    assert longest["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    with pytest.raises(ValueError, match="padding"):
        tokenize(tokenizer, ["x"], padding="do_not_pad")


def test_missing_backbone_says_where_it_looked(tmp_path):
    cache = tmp_path / "hf-cache"
    with pytest.raises(TextBackboneNotFoundError) as info:
        load_text_backbone("emilyalsentzer/Bio_ClinicalBERT", cache_dir=cache)
    message = str(info.value)
    assert str(cache.resolve()) in message and "local directory" in message
    assert "huggingface-cli download emilyalsentzer/Bio_ClinicalBERT" in message
    assert isinstance(info.value, FileNotFoundError)

    missing_dir = tmp_path / "no-such-model"
    with pytest.raises(TextBackboneNotFoundError, match="absent") as info:
        load_tokenizer(missing_dir)
    assert str(missing_dir.resolve()) in str(info.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TextBackboneNotFoundError, match="no usable model files"):
        load_text_backbone(empty)
