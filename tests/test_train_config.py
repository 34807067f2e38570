"""TrainConfig and ClassifierConfig: defaults only in the schema, ``from_config`` equal to what the stages
built by hand before it (the reference code below is a copy of that code), old checkpoint field names."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from mammoclip.config import fill_defaults, load_schema, read_yaml, validate
from mammoclip.train.classify import ClassifierConfig
from mammoclip.train.pretrain import NO_DECAY_FOR, TrainConfig
from mammoclip.train.settings import FROM_SCHEMA

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ("config.yaml", "paper.yaml")
N_CLASSES = {"Mass": 1, "Suspicious_Calcification": 1, "density": 4, "cancer": 1}


@pytest.fixture(scope="module")
def schema():
    return load_schema()


def full_config(name: str, schema, **pretrain_overrides) -> dict:
    """A config file with the schema's defaults filled in and validated (its dataset paths not checked)."""
    config = read_yaml(ROOT / "config" / name)
    config.setdefault("pretrain", {}).update(pretrain_overrides)
    filled = fill_defaults(config, schema)
    validate(filled, schema)
    return filled


# ---- the reference: TrainConfig before the schema held its defaults, and the stage's hand-built dict ----

OLD_TRAIN_DEFAULTS = dict(
    epochs=15,
    lr=5e-5,
    weight_decay=1e-4,
    no_decay_for=("bias", "norm", "logit_scale"),
    warmup=1,
    grad_accum_steps=1,
    max_grad_norm=None,
    precision="bf16",
    channels_last=True,
    batch_size=4,
    val_batch_size=None,
    num_workers=4,
    drop_last=True,
    seed=10,
    clamp_logit_scale=math.log(100),
    i2i_weight=1.0,
    t2t_weight=0.5,
    label_smoothing=0.0,
    mask_false_negatives=False,
    freeze_text_pooler=True,
    find_unused_parameters=False,
    cudnn_benchmark=True,
    log_every=10,
)


def old_train_dict(settings: dict, *, legacy: bool) -> dict:
    """pipeline.pretraining_params's ``train`` dict (copied)."""
    train_keys = {
        "epochs": "epochs",
        "lr": "lr",
        "weight_decay": "weight_decay",
        "grad_accum_steps": "grad_accum_steps",
        "max_grad_norm": "max_grad_norm",
        "precision": "precision",
        "batch_size": "batch_size",
        "num_workers": "num_workers",
        "i2i_weight": "i2i_weight",
        "t2t_weight": "t2t_weight",
        "mask_false_negatives": "mask_false_negatives",
    }
    train = {ours: settings[key] for key, ours in train_keys.items()}
    warmup = settings["warmup_epochs"]
    train["warmup"] = int(warmup) if float(warmup).is_integer() else float(warmup) / settings["epochs"]
    if not settings["no_weight_decay_for_norms_biases_and_scale"]:
        train["no_decay_for"] = ()
    if legacy:
        train["clamp_logit_scale"] = None  # upstream never clamps
    return train


def old_warmup_steps(warmup, steps_per_epoch: int, total_steps: int) -> int:
    """TrainConfig.warmup_steps before (copied): int = epochs, float = fraction of the total steps."""
    if isinstance(warmup, int):
        return min(warmup * steps_per_epoch, total_steps)
    return int(round(warmup * total_steps))


def assert_same_training(config: TrainConfig, old: dict) -> None:
    """``config`` trains as the old TrainConfig with fields ``old`` did: same settings, same warmup steps for
    every loader length, same no-decay rules."""
    renamed = {"warmup", "no_decay_for"}
    new = config.to_dict()
    assert {k: v for k, v in old.items() if k not in renamed} == {
        k: v
        for k, v in new.items()
        if k not in {"warmup_epochs", "no_weight_decay_for_norms_biases_and_scale"}
    }
    for k in old.keys() - renamed:
        assert type(new[k]) is type(old[k]), k
    rules = NO_DECAY_FOR if config.no_weight_decay_for_norms_biases_and_scale else ()
    assert rules == tuple(old["no_decay_for"])
    for spe in range(1, 60):
        total = spe * config.epochs
        assert config.warmup_steps(spe, total) == old_warmup_steps(old["warmup"], spe, total), spe


VARIANTS = [
    {},
    {"warmup_epochs": 0},
    {"warmup_epochs": 0.5},
    {"warmup_epochs": 2.5, "epochs": 7},
    {"warmup_epochs": 3.0},
    {"warmup_epochs": 20},  # more than the epochs: the whole run
    {"no_weight_decay_for_norms_biases_and_scale": False, "max_grad_norm": 1.0, "grad_accum_steps": 3},
]


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize(
    "variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "as is"
)
@pytest.mark.parametrize("name", CONFIGS)
def test_from_config_equals_the_hand_built_config(schema, name, variant, legacy):
    config = full_config(name, schema, **variant)
    seed = config["seed"] + 7
    settings = config["pretrain"]
    train = old_train_dict(settings, legacy=legacy)
    new = TrainConfig.from_config(settings, seed=seed, legacy=legacy)
    # the stages' path today: the hand-built dict through from_dict (old field names)
    assert new == TrainConfig.from_dict({**train, "seed": seed})
    old = {**OLD_TRAIN_DEFAULTS, **train, "seed": seed}
    assert_same_training(new, old)
    assert new.clamp_logit_scale == (None if legacy else math.log(100))


def test_demo_and_paper_values(schema):
    demo = TrainConfig.from_config(full_config("config.yaml", schema)["pretrain"], seed=42, legacy=False)
    assert (demo.epochs, demo.batch_size, demo.lr, demo.precision, demo.num_workers) == (
        15,
        8,
        2e-3,
        "fp32",
        0,
    )
    assert (demo.i2i_weight, demo.t2t_weight, demo.mask_false_negatives) == (0, 0, True)
    paper = TrainConfig.from_config(full_config("paper.yaml", schema)["pretrain"], seed=42, legacy=True)
    assert (paper.epochs, paper.warmup_epochs, paper.precision, paper.clamp_logit_scale) == (
        15,
        1,
        "bf16",
        None,
    )


# ---- TrainConfig on its own --------------------------------------------------------------------------


def test_no_defaults_of_their_own_and_schema_keys_are_field_names(schema):
    for cls in (TrainConfig, ClassifierConfig):
        assert all(f.default is FROM_SCHEMA for f in dataclasses.fields(cls)), cls
    pretrain_keys = set(schema["properties"]["pretrain"]["properties"])
    assert {f.name for f in dataclasses.fields(TrainConfig)} - {"seed"} <= pretrain_keys
    label_keys = set(schema["$defs"]["classifier_settings"])
    run_keys = {"mode", "label", "n_classes", "seed", "precision", "num_workers"}
    assert {f.name for f in dataclasses.fields(ClassifierConfig)} - run_keys <= label_keys


def test_left_out_fields_come_from_the_schema(schema):
    defaults = fill_defaults({}, schema)
    config = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        expected = defaults["seed"] if field.name == "seed" else defaults["pretrain"][field.name]
        assert getattr(config, field.name) == expected, field.name
    assert config.seed == 42  # the schema's seed, not the old dataclass's 10: callers pass theirs
    assert TrainConfig(lr=1e-3).lr == 1e-3


def test_warmup_epochs_whole_or_fractional():
    assert TrainConfig(epochs=15, warmup_epochs=1).warmup_steps(10, 150) == 10
    assert TrainConfig(epochs=15, warmup_epochs=1.0).warmup_epochs == 1  # a whole number counts epochs
    assert TrainConfig(epochs=15, warmup_epochs=1.5).warmup_steps(10, 150) == 15
    assert TrainConfig(epochs=2, warmup_epochs=5).warmup_steps(10, 20) == 20
    with pytest.raises(ValueError, match="at most epochs"):
        TrainConfig(epochs=2, warmup_epochs=2.5)
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig(warmup_epochs=-1)
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig(warmup_epochs=True)


def test_validation_and_unknown_keys():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="nope"):
        TrainConfig.from_dict({"epochs": 1, "nope": 2})


def test_from_dict_reads_old_checkpoint_names():
    old = {**OLD_TRAIN_DEFAULTS, "epochs": 2, "warmup": 0.25, "no_decay_for": ["bias", "norm", "logit_scale"]}
    config = TrainConfig.from_dict(old)
    assert config.warmup_epochs == 0.5 and config.no_weight_decay_for_norms_biases_and_scale is True
    assert config.warmup_steps(4, 8) == old_warmup_steps(0.25, 4, 8) == 2
    assert TrainConfig.from_dict({"warmup": 3, "no_decay_for": []}).to_dict() == {
        **TrainConfig().to_dict(),
        "warmup_epochs": 3,
        "no_weight_decay_for_norms_biases_and_scale": False,
    }
    assert TrainConfig.from_dict({"warmup": 1.0, "epochs": 15}).warmup_steps(10, 150) == 150
    # round trip of the new names
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="no_decay_for"):
        TrainConfig.from_dict({"no_decay_for": ["bias"]})
    with pytest.raises(ValueError, match="fraction"):
        TrainConfig.from_dict({"warmup": 1.5})
    with pytest.raises(ValueError, match="not both"):
        TrainConfig.from_dict({"warmup": 1, "warmup_epochs": 1})


# ---- ClassifierConfig ------------------------------------------------------------------------------


def old_classifier_config(label_section: dict, *, mode: str, label: str, seed: int, precision, num_workers):
    """What downstream.run_classification built (copied), from the settings rules/common.smk passes."""
    settings = {k: v for k, v in label_section.items() if k not in ("enabled", "fractions", "mode_overrides")}
    settings = {**settings, **label_section.get("mode_overrides", {}).get(mode, {})}
    train_settings = (
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "warmup_epochs",
        "weighted_loss",
        "balanced_sampler",
        "pos_weight",
    )
    assert not set(settings) - set(train_settings)
    return dict(
        mode={"lp": "linear_probe", "ft": "finetune"}[mode],
        label=label,
        n_classes=N_CLASSES[label],
        seed=seed,
        precision=precision,
        num_workers=num_workers,
        **{k: settings[k] for k in train_settings if k in settings},
    ), settings


@pytest.mark.parametrize("mode", ["lp", "ft"])
@pytest.mark.parametrize("name", CONFIGS)
def test_classifier_from_config_equals_run_classification(schema, name, mode):
    classify = full_config(name, schema)["classify"]
    assert set(classify["labels"]) == set(N_CLASSES)
    for label, section in classify["labels"].items():
        for seed in classify["seeds"]:
            run = dict(seed=seed, precision=classify["precision"], num_workers=classify["num_workers"])
            expected, merged = old_classifier_config(section, mode=mode, label=label, **run)
            kwargs = dict(mode=mode, label=label, n_classes=N_CLASSES[label], **run)
            config = ClassifierConfig.from_config(section, **kwargs)
            assert config.to_dict() == expected, (label, mode)
            assert {k: type(v) for k, v in config.to_dict().items()} == {
                k: type(v) for k, v in expected.items()
            }
            # the settings as the workflow passes them (overrides applied), and the old keyword call
            assert ClassifierConfig.from_config(merged, **kwargs) == config
            assert ClassifierConfig(**expected) == config


def test_classifier_from_config_checks_keys():
    with pytest.raises(ValueError, match="epoch"):
        ClassifierConfig.from_config(
            {"epoch": 3}, mode="lp", label="Mass", n_classes=1, seed=0, precision="fp32", num_workers=0
        )
    config = ClassifierConfig.from_config(
        {"epochs": 3, "mode_overrides": {"ft": {"epochs": 1}}},
        mode="finetune",
        label="Mass",
        n_classes=1,
        seed=0,
        precision="fp32",
        num_workers=0,
    )
    assert (config.mode, config.epochs, config.lr) == ("finetune", 1, 5e-5)
