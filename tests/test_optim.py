"""Equivalence of the training plumbing with the hand-written code it replaced (copied below as references).

* The LR schedule: ``transformers.get_cosine_schedule_with_warmup`` against the old warmup-cosine formula
  at every step that updates weights.
* The no-decay groups: ``timm.optim.param_groups_weight_decay`` (through ``build_optimizer``) against the
  old name rule on the real models (demo CLIP, legacy EfficientNet-B5 / B2 CLIP encoders, classifiers),
  and the parameters where the two rules differ on encoders no config uses.
* The one autocast helper against the four it replaced.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from mammoclip.train.optim import build_optimizer
from mammoclip.train.precision import autocast
from mammoclip.train.pretrain import TrainConfig

# ---- learning-rate schedule ----------------------------------------------------------------------------


def reference_multiplier(step: int, warmup: int, total: int) -> float:
    """The warmup-cosine multiplier as it was written before (copied)."""
    if step < warmup:
        return step / warmup
    if step >= total:
        return 0.0
    progress = (step - warmup) / (total - warmup)
    return math.cos(math.pi / 2 * progress) ** 2


def _pairs() -> list[tuple[int, int]]:
    pairs = {(0, 1), (0, 10), (1, 1), (1, 2), (3, 3), (4, 12), (10, 150), (7, 100), (15, 15), (0, 37)}
    # the fractional warmup form (pretraining) and the classifiers' round(warmup_epochs * steps_per_epoch)
    for epochs, warmup_epochs in ((15, 0.5), (8, 2.5), (3, 0.1), (2, 0.5), (1, 0.75)):
        config = TrainConfig(epochs=epochs, warmup_epochs=warmup_epochs)
        for spe in (1, 3, 7, 10):
            total = spe * epochs
            pairs.add((config.warmup_steps(spe, total), total))
            pairs.add((min(int(round(warmup_epochs * spe)), total), total))
    return sorted(pairs)


@pytest.mark.parametrize(("warmup", "total"), _pairs())
def test_schedule_equals_the_old_formula_at_every_step(warmup, total):
    """Every lr an update uses (steps 0 .. total-1) equals the old one up to one rounding; the linear warmup
    exactly. After the last update the old formula said 0 and transformers says 0 too, except when the
    whole run is warmup (then 1: an lr no update uses)."""
    param = nn.Parameter(torch.zeros(()))
    opt = torch.optim.AdamW([param], lr=3e-4)
    sched = get_cosine_schedule_with_warmup(opt, warmup, total)
    for step in range(total + 1):
        ours, old = sched.get_last_lr()[0], 3e-4 * reference_multiplier(step, warmup, total)
        if step < warmup:
            assert ours == old, step
        elif step < total:
            assert ours == pytest.approx(old, rel=0, abs=3e-4 * 4.5e-16), step  # 1 rounding + the lr product
        else:
            assert ours == (3e-4 if warmup == total else pytest.approx(0.0, abs=1e-30)), step
        opt.step()
        sched.step()


def test_schedule_differs_from_the_old_formula_only_by_rounding():
    """Over every (warmup, total) up to 80 steps: differences exist (so the test above is not vacuous) and
    none exceeds 2.2e-16 of the base lr."""
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(()))], lr=1.0)
    worst, differing, steps = 0.0, 0, 0
    for total in range(1, 81):
        for warmup in range(total):
            theirs = get_cosine_schedule_with_warmup(opt, warmup, total).lr_lambdas[0]
            for step in range(total):
                a, b = reference_multiplier(step, warmup, total), theirs(step)
                steps += 1
                differing += a != b
                worst = max(worst, abs(a - b))
    assert 0 < worst <= 2.3e-16
    assert 0.2 < differing / steps < 0.4


# ---- no-decay parameter groups ------------------------------------------------------------------------

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)


def reference_split(model: nn.Module, rules=("bias", "norm", "logit_scale")):
    """The old split (copied): names of ``(decay, no_decay)``."""
    decay, no_decay, seen = [], [], set()
    for module_name, module in model.named_modules():
        for leaf, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{leaf}" if module_name else leaf
            module_path = name.rsplit(".", 1)[0] if "." in name else ""
            hit = False
            for rule in rules:
                if rule == "bias":
                    hit |= leaf == "bias"
                elif rule == "norm":
                    hit |= isinstance(module, NORM_TYPES) or "norm" in module_path.lower()
                else:
                    hit |= rule in name
            (no_decay if hit else decay).append(name)
    return decay, no_decay


def optimizer_split(model: nn.Module, **kwargs):
    """``build_optimizer``'s groups as ``[(name, weight decay, parameter names)]``."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups = build_optimizer(model, lr=1e-4, weight_decay=0.05, **kwargs).param_groups
    return [(g["name"], g["weight_decay"], [names[id(p)] for p in g["params"]]) for g in groups]


@pytest.fixture(scope="module")
def demo_text_model(tmp_path_factory, report_corpus):
    """The demo's tiny BERT (schema pretrain.tiny_text_model defaults), as run.py builds it."""
    from mammoclip.models.text_encoders import build_tiny_bert

    return build_tiny_bert(
        report_corpus,
        tmp_path_factory.mktemp("demo_bert"),
        vocab_size=2000,
        hidden_size=64,
        layers=2,
        heads=2,
        intermediate=256,
        seed=0,
    )


def _clip(image_encoder: str, text_dir, **kwargs):
    from mammoclip.models.clip import build_clip

    model, _ = build_clip(
        image_encoder=image_encoder, text_backbone=str(text_dir), pretrained_image=False, **kwargs
    )
    model.text_encoder.text_encoder.pooler.requires_grad_(False)  # as the trainer does
    return model


@pytest.mark.parametrize(
    ("encoder", "kwargs"),
    [
        ("efficientnet_b0", {"projection_dim": 128}),  # config/config.yaml's pretrain
        ("efficientnet_b0", {"projection_dim": 128, "projection": "mlp", "pooling": "mean"}),
        ("tf_efficientnet_b5_ns-detect", {}),  # the paper's B5 (its text model: tiny here)
        ("tf_efficientnetv2-detect", {}),  # the released B2
    ],
    ids=["demo", "demo-mlp", "legacy-b5", "legacy-b2"],
)
def test_optimizer_groups_equal_the_old_rule_on_real_models(demo_text_model, encoder, kwargs):
    model = _clip(encoder, demo_text_model, **kwargs)
    decay, no_decay = reference_split(model)
    assert optimizer_split(model) == [("decay", 0.05, decay), ("no_decay", 0.0, no_decay)]  # same order
    assert "logit_scale" in no_decay and "image_projection.projection.weight" in decay
    # legacy (upstream): one group, everything decayed
    assert optimizer_split(model, exclude_norms_biases_and_scale=False) == [
        ("decay", 0.05, reference_split(model, ())[0])
    ]


def test_optimizer_groups_of_classifiers():
    from mammoclip.models.image_encoders import build_image_encoder
    from mammoclip.train.classify import EncoderClassifier

    for freeze in (False, True):
        model = EncoderClassifier(
            build_image_encoder("efficientnet_b0", pretrained=False), 4, freeze_encoder=freeze
        )
        decay, no_decay = reference_split(model)
        assert optimizer_split(model) == [("decay", 0.05, decay), ("no_decay", 0.0, no_decay)]
        if freeze:
            assert (decay, no_decay) == (["head.weight"], ["head.bias"])


def test_timm_rule_also_spares_other_one_dimensional_parameters():
    """The one difference from the old rule: timm spares every 1-D parameter, also those that are neither
    biases nor norm parameters (ConvNeXt's layer-scale ``gamma``), which the old rule decayed. No config's
    encoder has such parameters (test above)."""
    import timm

    model = timm.create_model("convnext_atto", pretrained=False)
    old_no_decay = set(reference_split(model)[1])
    new_no_decay = set(optimizer_split(model)[1][2])
    only_new = new_no_decay - old_no_decay
    assert only_new and all(n.endswith(".gamma") for n in only_new)
    assert old_no_decay <= new_no_decay


# ---- autocast ---------------------------------------------------------------------------------------


class FakeAutocast:
    """Records what ``torch.autocast`` was called with."""

    def __init__(self, device_type, dtype=None, enabled=True):
        self.what = (device_type, dtype) if enabled else "off"


def _what(ctx) -> object:
    return "off" if isinstance(ctx, contextlib.nullcontext) else ctx.what


def old_classify(device, precision):
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def old_pretrain(device, precision):
    precision = precision if device.type == "cuda" else "fp32"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=amp_dtype)


def old_inference(device, precision):  # the configured precision was ignored
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def old_bench(device, precision):
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    return (
        torch.autocast(device.type, dtype=dtypes[precision])
        if dtypes[precision] is not None
        else torch.autocast(device.type, enabled=False)
    )


def new_inference(device, precision):
    # mammoclip.inference.embed_batches's choice (copied from its autocast line)
    precision = "fp16" if device.type == "cuda" and not torch.cuda.is_bf16_supported() else "bf16"
    return autocast(device, precision)


@pytest.mark.parametrize("bf16_supported", [True, False])
@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_autocast_helper_equals_the_four_it_replaced(monkeypatch, device, precision, bf16_supported):
    monkeypatch.setattr(torch, "autocast", FakeAutocast)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16_supported)
    device = torch.device(device)
    assert _what(autocast(device, precision)) == _what(old_classify(device, precision))
    assert _what(autocast(device, precision)) == _what(old_pretrain(device, precision))
    assert _what(new_inference(device, precision)) == _what(old_inference(device, precision))
    assert _what(autocast(device, precision, cpu=True)) == _what(old_bench(device, precision))


def test_autocast_on_the_cpu():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16), autocast("cpu", "fp32"):
        assert (a @ b).dtype == torch.float32  # switched off, even inside an outer autocast
    with autocast("cpu", "bf16", cpu=True):
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        autocast("cpu", "fp8")
