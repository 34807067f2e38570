"""Image encoders: the legacy EfficientNet-B5/B2 of the released checkpoints (key layout, static padding,
numerical agreement with the independent ``efficientnet-pytorch`` implementation) and the timm path."""

from __future__ import annotations

import logging
import re

import pytest
import timm
import torch
from efficientnet_pytorch import EfficientNet
from huggingface_hub import constants as hf_constants
from torch import nn

from mammoclip.models.image_encoders import (
    LEGACY_ENCODERS,
    ImageEncoder,
    LegacyEfficientNet,
    StaticSamePadConv2d,
    build_image_encoder,
    infer_legacy_variant,
)

# the released encoders' sizes and key counts (docs/upstream.md#models)
NOMINAL = {"b5": 456, "b2": 260}
N_KEYS = {"b5": 852, "b2": 506}
N_BLOCKS = {"b5": 39, "b2": 23}
N_PARAMS = {"b5": 28.34e6, "b2": 7.70e6}
OUT_DIM = {"b5": 2048, "b2": 1408}
STEM_SHAPE = {"b5": (48, 3, 3, 3), "b2": (32, 3, 3, 3)}
HEAD_SHAPE = {"b5": (2048, 512, 1, 1), "b2": (1408, 352, 1, 1)}
STAGE0_BLOCKS = {"b5": 3, "b2": 2}  # expand ratio 1: no _expand_conv / block _bn0
# (before, after) pads of the stride-2 convs, identical for height and width
STRIDE2_PADS = {
    "b5": {"stem": (0, 1), 3: (0, 1), 8: (1, 2), 13: (1, 1), 27: (2, 2)},
    "b2": {"stem": (0, 1), 2: (0, 1), 5: (2, 2), 8: (1, 1), 16: (2, 2)},
}
# entries where a dynamic "same" padding at 1520x912 differs
DYNAMIC_DIFFERS = {"b5": {13}, "b2": {5, 8}}
BLOCK_LAYERS = {
    "_expand_conv",
    "_bn0",
    "_depthwise_conv",
    "_bn1",
    "_se_reduce",
    "_se_expand",
    "_project_conv",
    "_bn2",
}
VARIANT_NAME = {variant: name for name, variant in LEGACY_ENCODERS.items()}


@pytest.fixture(scope="module")
def encoders():
    torch.manual_seed(0)
    return {variant: LegacyEfficientNet(variant) for variant in ("b5", "b2")}


@pytest.fixture
def no_local_caches(tmp_path, monkeypatch):
    """Point the Hugging Face and torch hub caches at empty folders: weights on this machine are not found."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    return tmp_path


def reference_model(variant: str, image_size: int | None, seed: int = 0) -> nn.Module:
    """efficientnet-pytorch EfficientNet with random weights *and* random BatchNorm statistics/affines.

    PyTorch's default conv initialisation makes a random EfficientNet forget where things are (the final
    feature map is nearly constant in space), which would hide padding errors; a He-like normal with gain
    1.75 keeps spatial structure to the last layer while the outputs stay of order 1.
    """
    torch.manual_seed(seed)
    model = EfficientNet.from_name(f"efficientnet-{variant}", image_size=image_size)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0.0, (1.75 / module.weight[0].numel()) ** 0.5, generator=gen)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.1, generator=gen)
            elif isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 1.5, generator=gen)
                module.weight.uniform_(0.8, 1.2, generator=gen)
                module.bias.normal_(0.0, 0.1, generator=gen)
                module.num_batches_tracked.fill_(7)
    return model.eval()


def encoder_state(reference: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in reference.state_dict().items() if not k.startswith("_fc.")}


def reference_pooled(reference: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return reference._avg_pooling(reference.extract_features(x)).flatten(1)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Dynamic TF "same" padding for a real input size (written independently of the module)."""
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def stride2_convs(encoder: LegacyEfficientNet) -> dict:
    convs = {"stem": encoder._conv_stem}
    convs.update(
        {i: b._depthwise_conv for i, b in enumerate(encoder._blocks) if b._depthwise_conv.stride[0] == 2}
    )
    return convs


# ---------------------------------------------------------------------------------------------- key layout


@pytest.mark.parametrize("variant", ["b5", "b2"])
def test_legacy_state_dict_layout(encoders, variant):
    encoder = encoders[variant]
    state = encoder.state_dict()
    keys = list(state)
    assert len(keys) == N_KEYS[variant]
    assert keys[0] == "_conv_stem.weight" and keys[-1] == "_bn1.num_batches_tracked"
    assert keys[1:6] == [
        f"_bn0.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    ]
    assert tuple(state["_conv_stem.weight"].shape) == STEM_SHAPE[variant]
    assert tuple(state["_conv_head.weight"].shape) == HEAD_SHAPE[variant]
    assert not any("_fc" in k or "_dropout" in k or k.startswith("_model.") for k in keys)
    # named_parameters / buffers use the same names as the state dict: no key rewriting anywhere
    assert {n for n, _ in encoder.named_parameters()} | {n for n, _ in encoder.named_buffers()} == set(keys)

    block_keys = [k for k in keys if k.startswith("_blocks.")]
    indices = {int(k.split(".")[1]) for k in block_keys}
    assert indices == set(range(N_BLOCKS[variant]))
    assert {k.split(".")[2] for k in block_keys} == BLOCK_LAYERS
    without_expansion = {int(k.split(".")[1]) for k in block_keys} - {
        int(k.split(".")[1]) for k in block_keys if "._expand_conv." in k
    }
    assert without_expansion == set(range(STAGE0_BLOCKS[variant]))
    assert "_blocks.0._se_reduce.bias" in state and "_blocks.0._bn0.weight" not in state

    n_params = sum(p.numel() for p in encoder.parameters())
    assert abs(n_params - N_PARAMS[variant]) < 0.01e6
    assert encoder.out_dim == OUT_DIM[variant] and len(encoder._blocks) == N_BLOCKS[variant]
    assert infer_legacy_variant(state) == variant


@pytest.mark.parametrize("variant", ["b5", "b2"])
def test_legacy_architecture_matches_timm_parameter_shapes(encoders, variant):
    """Second independent implementation: timm's TF EfficientNet has the same parameter tensors."""
    reference = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False, num_classes=0)
    ours = sorted(tuple(p.shape) for p in encoders[variant].parameters())
    assert ours == sorted(tuple(p.shape) for p in reference.parameters())


@pytest.mark.parametrize("variant", ["b5", "b2"])
def test_legacy_hyperparameters(encoders, variant):
    encoder = encoders[variant]
    norms = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-3 and m.momentum == 0.01 for m in norms)
    assert encoder._dropout.p == {"b5": 0.4, "b2": 0.3}[variant]
    n = N_BLOCKS[variant]
    assert [b.drop_connect_rate for b in encoder._blocks] == pytest.approx([0.2 * i / n for i in range(n)])
    assert all(b._se_reduce.bias is not None and b._se_expand.bias is not None for b in encoder._blocks)
    assert encoder._blocks[0]._se_reduce.out_channels == STEM_SHAPE[variant][0] // 4  # SE of block *input*


# ------------------------------------------------------------------------------------------ static padding


@pytest.mark.parametrize("variant", ["b5", "b2"])
def test_static_padding_table(encoders, variant):
    encoder = encoders[variant]
    convs = stride2_convs(encoder)
    assert set(convs) == set(STRIDE2_PADS[variant])
    for where, (before, after) in STRIDE2_PADS[variant].items():
        assert convs[where].static_padding == (before, after, before, after), where
    for block in encoder._blocks:
        conv = block._depthwise_conv
        if conv.stride[0] == 1:
            k = conv.kernel_size[0]
            assert conv.static_padding == ((k - 1) // 2,) * 4
    one_by_one = [m for m in encoder.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert all(m.padding == (0, 0) and not isinstance(m, StaticSamePadConv2d) for m in one_by_one)


@pytest.mark.parametrize("variant", ["b5", "b2"])
def test_static_padding_differs_from_dynamic_at_1520x912(encoders, variant):
    """At the real input size a dynamic "same" padding would differ exactly at the bold entries of 4.2."""
    differs = set()
    for step, (where, conv) in enumerate(stride2_convs(encoders[variant]).items()):
        height, width = -(-1520 // 2**step), -(-912 // 2**step)  # input of the step-th stride-2 conv
        k = conv.kernel_size[0]
        dynamic = (*tf_same_pad(width, k, 2), *tf_same_pad(height, k, 2))
        if dynamic != conv.static_padding:
            differs.add(where)
    assert differs == DYNAMIC_DIFFERS[variant]


@pytest.mark.parametrize("variant", ["b5", "b2"])
def test_padding_matches_efficientnet_pytorch(encoders, variant):
    reference = EfficientNet.from_name(f"efficientnet-{variant}", image_size=NOMINAL[variant])
    theirs = [reference._conv_stem] + [b._depthwise_conv for b in reference._blocks]
    ours = [encoders[variant]._conv_stem] + [b._depthwise_conv for b in encoders[variant]._blocks]
    for mine, conv in zip(ours, theirs, strict=True):
        pad = conv.static_padding
        assert mine.static_padding == (pad.padding if isinstance(pad, nn.ZeroPad2d) else (0, 0, 0, 0))


# -------------------------------------------------------------------- numerics against efficientnet-pytorch


@pytest.mark.parametrize("variant", ["b5", "b2"])
def test_matches_efficientnet_pytorch_on_small_input(variant):
    reference = reference_model(variant, NOMINAL[variant])
    for ours_bn, ref_bn in zip(
        [m for m in LegacyEfficientNet(variant).modules() if isinstance(m, nn.BatchNorm2d)],
        [m for m in reference.modules() if isinstance(m, nn.BatchNorm2d)],
        strict=True,
    ):
        assert ours_bn.eps == ref_bn.eps and ours_bn.momentum == pytest.approx(ref_bn.momentum)
    encoder = LegacyEfficientNet(variant)
    state = encoder_state(reference)
    assert list(state) == list(encoder.state_dict())  # same keys in the same order
    encoder.load_state_dict(state, strict=True)
    encoder.eval()
    x = torch.randn(2, 3, 136, 88, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected_map = reference.extract_features(x)
        feature_map = encoder.forward_features(x)
        pooled = encoder(x)
        expected = reference_pooled(reference, x)
    assert feature_map.shape == expected_map.shape == (2, OUT_DIM[variant], 5, 3)
    assert expected.std() > 0.1 and expected_map.std(dim=(2, 3)).mean() > 0.05  # not a degenerate comparison
    assert max_abs(feature_map, expected_map) < 1e-5
    assert max_abs(pooled, expected) < 1e-5


def test_b2_matches_static_reference_and_not_dynamic_at_1520x912():
    static_ref = reference_model("b2", 260)
    dynamic_ref = EfficientNet.from_name("efficientnet-b2", image_size=None).eval()  # dynamic "same" pads
    state = encoder_state(static_ref)
    dynamic_ref.load_state_dict(static_ref.state_dict(), strict=True)
    encoder = LegacyEfficientNet("b2")
    encoder.load_state_dict(state, strict=True)
    encoder.eval()
    x = torch.randn(1, 3, 1520, 912, generator=torch.Generator().manual_seed(2))
    small = torch.randn(1, 3, 260, 260, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        feature_map = encoder.forward_features(x)
        pooled = torch.nn.functional.adaptive_avg_pool2d(feature_map, 1).flatten(1)
        static_map = static_ref.extract_features(x)
        dynamic_map = dynamic_ref.extract_features(x)
        # at the nominal size the two paddings coincide: the mismatch below is the padding, nothing else
        assert max_abs(encoder(small), reference_pooled(dynamic_ref, small)) < 1e-5
    assert feature_map.shape == static_map.shape == dynamic_map.shape == (1, 1408, 48, 29)
    assert static_map.std(dim=(2, 3)).mean() > 0.05
    assert max_abs(feature_map, static_map) < 1e-5
    assert max_abs(pooled, static_ref._avg_pooling(static_map).flatten(1)) < 1e-5
    assert max_abs(feature_map, dynamic_map) > 0.1
    assert max_abs(pooled, dynamic_ref._avg_pooling(dynamic_map).flatten(1)) > 1e-3


# ----------------------------------------------------------------------------------- state-dict round trip


def test_state_dict_round_trip_and_strict_errors():
    torch.manual_seed(4)
    source = LegacyEfficientNet("b2")
    with torch.no_grad():  # non-default BN statistics so the buffers matter
        for module in source.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    state = source.state_dict()
    target = LegacyEfficientNet("b2")
    target.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 96, 64)
    source.eval(), target.eval()
    with torch.no_grad():
        assert torch.equal(source(x), target(x))

    missing = dict(state)
    del missing["_blocks.3._se_reduce.bias"]
    with pytest.raises(RuntimeError, match=re.escape("_blocks.3._se_reduce.bias")):
        LegacyEfficientNet("b2").load_state_dict(missing, strict=True)
    extra = {**state, "_fc.weight": torch.zeros(1, 1408)}
    with pytest.raises(RuntimeError, match=re.escape("_fc.weight")):
        LegacyEfficientNet("b2").load_state_dict(extra, strict=True)


# ------------------------------------------------------------------------------------------------ modes


def test_eval_deterministic_train_dropout_active(encoders):
    encoder = encoders["b2"]
    x = torch.randn(2, 3, 96, 64)
    try:
        encoder.eval()
        with torch.no_grad():
            assert torch.equal(encoder(x), encoder(x))
            encoder.train()
            first, second = encoder(x), encoder(x)
        assert not torch.equal(first, second)
        zeros = (first == 0).float().mean().item()  # dropout p = 0.3 on the pooled vector
        assert 0.2 < zeros < 0.4
    finally:
        encoder.eval()


def test_drop_connect_only_in_training():
    torch.manual_seed(5)
    encoder = LegacyEfficientNet("b2")
    encoder._dropout.p = 0.0  # isolate drop-connect
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        encoder.train()
        assert not torch.equal(encoder.forward_features(x), encoder.forward_features(x))
        encoder.eval()
        assert torch.equal(encoder.forward_features(x), encoder.forward_features(x))


# -------------------------------------------------------------------------------------------- builder


@pytest.mark.parametrize("variant", ["b5", "b2"])
def test_build_legacy_random_init_logged(no_local_caches, caplog, variant):
    with caplog.at_level(logging.INFO, logger="mammoclip.models.image_encoders"):
        encoder = build_image_encoder(VARIANT_NAME[variant])
    assert isinstance(encoder, LegacyEfficientNet) and isinstance(encoder, ImageEncoder)
    assert encoder.variant == variant and encoder.out_dim == OUT_DIM[variant]
    assert any(
        r.levelno == logging.INFO and "random initialisation" in r.getMessage() for r in caplog.records
    )


def test_build_legacy_uses_local_imagenet_file(no_local_caches, caplog):
    reference = reference_model("b2", 260)
    torch.save(reference.state_dict(), no_local_caches / "efficientnet-b2-8bb594d6.pth")  # includes _fc
    with caplog.at_level(logging.INFO, logger="mammoclip.models.image_encoders"):
        encoder = build_image_encoder("tf_efficientnetv2-detect", cache_dir=str(no_local_caches))
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key
    assert any("ImageNet initialisation" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("name", "out_dim"),
    [("efficientnet_b0", 1280), ("resnet18", 512), ("tf_efficientnet_b5.ns_jft_in1k", 2048)],
)
def test_timm_offline_random_init_warns(no_local_caches, caplog, name, out_dim):
    with caplog.at_level(logging.INFO, logger="mammoclip.models.image_encoders"):
        encoder = build_image_encoder(name, pretrained=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "random initialisation" in warnings[0]
    assert str(no_local_caches / "hf-cache") in warnings[0]  # says where it looked
    assert encoder.out_dim == out_dim
    encoder.eval()
    x = torch.randn(2, 3, 160, 96)
    with torch.no_grad():
        assert encoder.forward_features(x).shape == (2, out_dim, 5, 3)
        assert encoder(x).shape == (2, out_dim)


def test_timm_efficientnet_b0_train_mode_without_dropout_is_deterministic(no_local_caches):
    encoder = build_image_encoder("efficientnet_b0", pretrained=False)
    assert encoder._dropout.p == 0.0
    encoder.train()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        assert torch.equal(encoder(x), encoder(x))


def _b0_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(6)
    return timm.create_model("efficientnet_b0", pretrained=False).state_dict()  # with classifier


def _assert_loaded(encoder, weights):
    for key, value in encoder.model.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_timm_pretrained_from_cache_dir_file(no_local_caches, caplog):
    weights = _b0_weights()
    torch.save(weights, no_local_caches / "pytorch_model.bin")
    with caplog.at_level(logging.INFO, logger="mammoclip.models.image_encoders"):
        encoder = build_image_encoder("efficientnet_b0", cache_dir=str(no_local_caches))
    _assert_loaded(encoder, weights)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_timm_pretrained_from_hugging_face_cache(no_local_caches):
    weights = _b0_weights()
    repo = no_local_caches / "hf-cache" / "models--timm--efficientnet_b0.ra_in1k"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    torch.save(weights, snapshot / "pytorch_model.bin")
    _assert_loaded(build_image_encoder("efficientnet_b0"), weights)


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="timm.list_models") as info:
        build_image_encoder("efficientnet_b5_ns-detect")
    assert all(name in str(info.value) for name in LEGACY_ENCODERS)


# ---------------------------------------------------------------------------------- infer_legacy_variant


def test_infer_legacy_variant(encoders):
    b5, b2 = encoders["b5"].state_dict(), encoders["b2"].state_dict()
    assert infer_legacy_variant(b5) == "b5"
    assert infer_legacy_variant(b2) == "b2"
    assert infer_legacy_variant({f"image_encoder.{k}": v for k, v in b2.items()}) == "b2"
    assert infer_legacy_variant(timm.create_model("efficientnet_b0", num_classes=0).state_dict()) is None
    assert infer_legacy_variant({}) is None
    truncated = {k: v for k, v in b5.items() if not k.startswith("_blocks.38.")}
    assert infer_legacy_variant(truncated) is None
