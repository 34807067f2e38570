"""CLIP model: module layout (released key names), shapes, normalisation, similarity scale, heads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mammoclip.models.clip import (
    LOGIT_SCALE_INIT,
    LinearProjection,
    MammoClip,
    MLPProjection,
    build_clip,
    clip_from_architecture,
)
from mammoclip.models.text_encoders import load_text_backbone, tokenize

TEXTS = ["spiculated mass in the left breast", "no suspicious calcifications", "dense breasts"]


@pytest.fixture(scope="module")
def clip(tiny_bert_dir):
    torch.manual_seed(0)
    model, tokenizer = build_clip(
        image_encoder="test_efficientnet", text_backbone=tiny_bert_dir, pretrained_image=False
    )
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def batch(clip):
    _, tokenizer = clip
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 32, 32, generator=generator)
    return images, tokenize(tokenizer, TEXTS, max_length=24, padding="longest")


def test_module_layout_matches_release(clip):
    model, _ = clip
    assert [name for name, _ in model.named_children()] == [
        "image_encoder",
        "text_encoder",
        "image_projection",
        "text_projection",
    ]
    keys = list(model.state_dict())
    assert keys[0] == "logit_scale"
    assert {"image_projection.projection.weight", "image_projection.projection.bias"} <= set(keys)
    assert {"text_projection.projection.weight", "text_projection.projection.bias"} <= set(keys)
    bert_keys = [k for k in keys if k.startswith("text_encoder.")]
    assert bert_keys and all(k.startswith("text_encoder.text_encoder.") for k in bert_keys)
    assert "text_encoder.text_encoder.embeddings.word_embeddings.weight" in keys
    assert "text_encoder.text_encoder.pooler.dense.weight" in keys
    assert model.image_projection.projection.weight.shape == (512, 256)
    assert model.text_projection.projection.weight.shape == (512, 128)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07)) == pytest.approx(LOGIT_SCALE_INIT)
    assert model.logit_scale.requires_grad


def test_shapes_and_normalisation(clip, batch):
    model, _ = clip
    images, tokens = batch
    with torch.no_grad():
        raw_image = model.encode_image(images)
        raw_text = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
        image_emb = model.embed_image(images)
        text_emb = model.embed_text(tokens["input_ids"], tokens["attention_mask"])
    assert raw_image.shape == (3, 256) and raw_text.shape == (3, 128)
    assert image_emb.shape == text_emb.shape == (3, 512)
    assert torch.allclose(image_emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(text_emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    # embed = normalize(projection(encode))
    assert torch.allclose(image_emb, F.normalize(model.image_projection(raw_image), dim=-1), atol=1e-6)
    assert torch.allclose(text_emb, F.normalize(model.text_projection(raw_text), dim=-1), atol=1e-6)
    assert not torch.allclose(raw_image.norm(dim=-1), torch.ones(3))  # raw features are not normalised


def test_forward_returns_upstream_outputs(clip, batch):
    model, _ = clip
    images, tokens = batch
    with torch.no_grad():
        out = model(images, tokens["input_ids"], tokens["attention_mask"])
        both = model(
            images,
            tokens["input_ids"],
            tokens["attention_mask"],
            input_ids2=tokens["input_ids"].flip(0),
            attention_mask2=tokens["attention_mask"].flip(0),
            images2=images.flip(0),
        )
    assert set(out) == {
        "image_embeddings",
        "text_embeddings",
        "text_embeddings2",
        "image_view_embeddings",
        "labels",
        "logit_scale",
    }
    assert out["text_embeddings2"] is None and out["image_view_embeddings"] is None
    assert out["labels"].tolist() == [0, 1, 2]
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert torch.allclose(both["text_embeddings2"], out["text_embeddings"].flip(0), atol=1e-5)
    assert torch.allclose(both["image_view_embeddings"], out["image_embeddings"].flip(0), atol=1e-5)
    with pytest.raises(ValueError, match="together"):
        model(images, tokens["input_ids"], tokens["attention_mask"], input_ids2=tokens["input_ids"])


def test_similarity_uses_learned_scale(clip, batch):
    model, _ = clip
    images, tokens = batch
    with torch.no_grad():
        image_emb = model.embed_image(images)
        text_emb = model.embed_text(tokens["input_ids"], tokens["attention_mask"])
        cosine = image_emb @ text_emb.T
        assert torch.allclose(model.similarity(image_emb, text_emb), cosine / 0.07, atol=1e-4)
        saved = model.logit_scale.clone()
        try:
            model.logit_scale.fill_(1.0)
            assert torch.allclose(model.similarity(image_emb, text_emb), math.e * cosine, atol=1e-5)
        finally:
            model.logit_scale.copy_(saved)


def test_clamp_logit_scale():
    text_model, _ = _tiny_text_model()
    model = MammoClip(
        _Identity(8), _text_encoder(text_model), LinearProjection(8, 4), LinearProjection(16, 4)
    )
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    model.clamp_logit_scale(max=1.0)
    assert model.logit_scale.item() == pytest.approx(1.0)
    model.clamp_logit_scale()  # below the maximum: unchanged
    assert model.logit_scale.item() == pytest.approx(1.0)
    assert model.logit_scale.requires_grad


def test_mlp_projection_by_hand():
    torch.manual_seed(0)
    head = MLPProjection(6, 4, dropout=0.5).eval()
    assert [k for k in head.state_dict()] == [
        "projection.weight",
        "projection.bias",
        "fc.weight",
        "fc.bias",
        "layer_norm.weight",
        "layer_norm.bias",
    ]
    x = torch.randn(5, 6)
    p = x @ head.projection.weight.T + head.projection.bias
    h = F.gelu(p) @ head.fc.weight.T + head.fc.bias
    expected = F.layer_norm(h + p, (4,), head.layer_norm.weight, head.layer_norm.bias)
    assert torch.allclose(head(x), expected, atol=1e-6)
    head.train()
    assert not torch.allclose(head(x), expected, atol=1e-6)  # dropout active in training


def test_mlp_head_key_names(tiny_bert_dir):
    model, _ = build_clip(
        image_encoder="test_efficientnet",
        text_backbone=tiny_bert_dir,
        projection="mlp",
        pretrained_image=False,
    )
    keys = {k for k in model.state_dict() if "_projection." in k}
    assert keys == {
        f"{side}_projection.{layer}.{param}"
        for side in ("image", "text")
        for layer in ("projection", "fc", "layer_norm")
        for param in ("weight", "bias")
    }
    assert model.architecture["projection"] == {"type": "mlp", "dim": 512, "dropout": 0.1}


def test_architecture_rebuilds_identical_layout(clip):
    model, _ = clip
    arch = model.architecture
    assert arch["image_encoder"] == {"name": "test_efficientnet", "out_dim": 256}
    assert arch["text_encoder"]["pooling"] == "eos" and arch["text_encoder"]["add_pooling_layer"] is True
    assert arch["text_encoder"]["bert_config"]["hidden_size"] == 128
    rebuilt = clip_from_architecture(arch)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == shapes
    mean = clip_from_architecture(arch, pooling="mean")
    assert mean.text_encoder.pooling == "mean" and mean.architecture["text_encoder"]["pooling"] == "mean"


def test_build_clip_with_modules_and_pooling(tiny_bert_dir):
    text_model, tokenizer = load_text_backbone(tiny_bert_dir)
    model, tok = build_clip(
        image_encoder=_Identity(12), text_backbone=text_model, pooling="bos", projection_dim=32
    )
    assert tok is not None and tok.cls_token_id == tokenizer.cls_token_id  # found via name_or_path
    assert model.text_encoder.pooling == "bos" and model.architecture["image_encoder"]["name"] is None
    assert model.embed_image(torch.randn(2, 12)).shape == (2, 32)
    with pytest.raises(ValueError, match="unknown projection"):
        build_clip(image_encoder=_Identity(12), text_backbone=text_model, projection="conv")
    with pytest.raises(ValueError, match="pass the encoder module"):
        clip_from_architecture(model.architecture)


def test_gradients_reach_every_part(clip, batch):
    model, _ = clip
    images, tokens = batch
    model.train()
    try:
        out = model(images, tokens["input_ids"], tokens["attention_mask"])
        logits = out["logit_scale"] * out["image_embeddings"] @ out["text_embeddings"].T
        F.cross_entropy(logits, out["labels"]).backward()
        for name in (
            "logit_scale",
            "image_projection.projection.weight",
            "text_projection.projection.weight",
        ):
            assert model.get_parameter(name).grad is not None, name
        assert model.text_encoder.text_encoder.embeddings.word_embeddings.weight.grad is not None
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


# -- small helpers ---------------------------------------------------------------------------------------


class _Identity(torch.nn.Module):
    """A stand-in image encoder: features are the input vector."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _tiny_text_model():
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    )
    return BertModel(config), config


def _text_encoder(text_model):
    from mammoclip.models.text_encoders import TextEncoder

    return TextEncoder(text_model)
