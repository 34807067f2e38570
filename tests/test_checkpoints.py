"""Checkpoints: safe reading of released files, the released key layout, strict loading, our format."""

from __future__ import annotations

import base64
import collections
import contextlib
import gzip
import os
import pickle
import sys
import types
import typing

import pytest
import torch

from mammoclip.checkpoints import (
    POSITION_IDS_KEY,
    CheckpointError,
    infer_architecture,
    load_clip,
    load_state_dict_strict,
    read_checkpoint,
    released_state_dict,
    save_clip_checkpoint,
    split_state_dict,
)
from mammoclip.models.clip import build_clip
from mammoclip.models.text_encoders import TextBackboneNotFoundError, build_tiny_bert, tokenize

TEXTS = ["spiculated mass in the left breast", "no suspicious calcifications"]

#: A torch.save archive made with the real omegaconf 2.3.0 the way upstream's trainer leaves it: the config
#: converted to plain dicts except one ListConfig (transform.train.transform.affine_scale) whose parent
#: chain drags in DictConfig, AnyNode, (Container)Metadata, defaultdict and typing.Any; struct flag set;
#: an unresolved interpolation and a "???" value; storages tagged cuda:0. Made by:
#:   cfg = OmegaConf.create({...}); OmegaConf.set_struct(cfg, True)
#:   plain = OmegaConf.to_container(cfg)
#:   plain[...]["affine_scale"] = cfg.transform.train.transform.affine_scale
#:   torch.save({"model": {"logit_scale": tensor(2.5)}, "config": plain, "epoch": 7,
#:               "train_loss": tensor(1.5)}, f)   # with torch.serialization.location_tag -> "cuda:0"
REAL_OMEGACONF_CKPT_GZ_B64 = (
    "H4sIAAAAAAACA6WXeXwcZRnHJz3SMG3T9LBHCGmpxW6EbnZzNoGSsoUgLg3pUGBEcJydfXffIbMz+8xRkuIr1FptvW8EFe8bvAsK"
    "iIgK3qWIihYVxateqHjrHz7vOzvJzIS2Sufz2c/OzL7P9/d7n/d5Z54dL86dJ0ktLdKso01aJlXMST9wSXdZ9/VsfcIaLbRKVyaO"
    "G+YwkDLqfAyoOWViQRODOepCvLScqulrnqFbBOYavuMaNKsFvml5suaSUmBaZc0ntue42q4eGeZlMuoCDPNwpF4lMD8MkUctR/cv"
    "DW/K0Kw24ZgcLFCb8dsIyvpwDlqKTT6csqModXUdMAzHsojhm47tyZe4ZeKS8vmm4csgdymw0IdFCiz2wmjHrphVaGWwJKNiEqSS"
    "7hFoY7A0vPQIKcOyoqwuwQufTPpaTZ/ULGJXfQrLt0tNguIEfj3wYQWDZ6gyp1JiTNQd0/ZhpboUb3RTp0a69cCnjtuNP/mwKtTH"
    "IcStw2p1EV5suI6rZ7kmgzUiEzXT80y7Cu3qXLwaGRmBUwP1FO7FmSC2uZu40MHgtIx6Gt6ru8R3ddMmZU2sg2brNaJhbus6uu1U"
    "1+IYUjOtKd3yiO1jcHfBdLRtlmmbuESFC5SdsFbQDR2noJVNF9apy9P+s+JXOL1hxNVtr+K4NVjP4JmiCIQJ2MDgDIr3npURk9Mr"
    "FXTWqIWNBvKqOs9+1jI9P1wG+WI83RaeQqZrD3QxeHZGqGg14uu8AuHMWChPl4wBPp+0u70xRIazMHYTg2xG5TXtkormT9UJdBv4"
    "hdmUz7OnZMiJCnVK12ClhL/nDU3jNembtqbJ3JcMPQLh1Hkx6Rb07hcLMUGmoI9uFLOtWHrVg34GA2LtxaXmOo4PgwfUVqHvOdYu"
    "4mph3jYnyrNMKnpg+WVRnkMJA+G94X1wtgLnCBsoGzrdknTq4JzgXJFmYpEarm04bITmgpKoIywBF2/D1lj2OL+ReL47osSfh8kr"
    "MNiWoWdSnsjzGVyQod00R/N0mPbup310PcXpjtLBA3QzHaLo8EIFnkO34BChSLdSDrmIwXMjSJHBxSnIBg7ZHoOMKXDJLMg4gx0R"
    "RGFw6VM52RmDXKbA5bMgVzBQI8jzGFyZhIxxxvPFdvR8NzB8uGq/F0NercAL4sgxsRYaps7nKdUYvDBD24SQzqAUCRkMyim3bVyJ"
    "xNAVBaoJt1dQxNEMXRZbJxv3ssdrdgxPZDCRfQ2DCdRJb4WZHWDhoBoDu2FgLNRfxvWdmH5dARC6unjaabuwxN2ijLeWU67jMfD5"
    "fDguYLAriVvOcdfGcJMKTIU46uKzEU9XiLTsZnBdlJYXMWCptKzgnBfHONcrcEMiLTpPyx66Uph6CYO9kamXMtiXNLWSw14Wg71c"
    "gf0Cspu6dFVQ8vBitQAdYPCKCPRKBq9KglZz0KtjoNco8NpodnQNnrULyusYvD6ivIHBG5OUdk55U4zyZgXeMk05NSgFeNEhsnQj"
    "g7dGWbqJwc2pLHVw0ttipLcr8I7ZxXNLhnYKX+9k8K7I17sZvCfpq5PT3hujvU+B9wvKjehrLZ6tE5QPMPhgRPkQgw8nKes45SMx"
    "ykcVuHWacno4u/V0nDaJGd7G4GPRDD/O4BOpGTZx2idjtE8p8OnZM/yMupi/OWvYDGjENnBTuHBQ8G9ncEfE/yyDz6X4Bzn/zhj/"
    "LgXuTvBv4/zPh69+/vKEe0QSvsDg3igJX2RwXzIJ93Dsl2LYLyvwFYG7nbpqB38hVjSCrz/DxOeFTXyt1K/Z3qYy8fEtAPfjI1qO"
    "Wqfwuf2AUP0qg69Fql9n8I2k6gNc9Zsx1W8p8O1pVf6SMmwbDiFcPNicwDUIPCjAhxk8FIG/w+DhJPhBDv5uDPw9Bb4fgekhsaZe"
    "uLKYrEfwOX6RF57/AJe60Dj/YYZupF2iU6vDESH7KIMfRbI/ZvCTpOwRLvtYTPanCvxMyBaoe+HIY2FD2tC9Gh7PCObPGfwiYv6S"
    "wa8SzKLEmb+OMY8q8BvB7OLMozfx42a8wVG/ZfC7CPV7Bn9IokRtPhFD/VGBP82gnuwVR1AieO/IjF3Po9gM/5keZPBkBivlfly3"
    "Q5jiQ4EXiO6B1B2Dwl+KC0QNiM5JsxzPg79S7IbpfBp2u3n4GxUt7t/DFpfyTvYfPvxTgX8F2fHigpZb/71p9R7saPhn/JgN/Spp"
    "eLqhz/KuTfc1bE087EVGCwOpvv5/PfJc/44nHt3LnfLPsfXbpcEZ/Uabr+mWWbV51zJa6H06Fgb6uIGRa+HoHJSYc1wDS6WRaQOl"
    "KZ84/O/BaOHspzl1cVim71uEe9i35fE1fLs1H9dDq3Ru4l9Vd260MHwSBiRp3Vaunr2z4z7+5Jp3AvWtSfX8aOGck5k+6t87wvWd"
    "Mx656sT6S2IrMF16J5X/XpmrH76letmJ179T6pkpQDF9j7gmVuBunTfkmlkeLWT/TzO5/oF8Pre5v6d3ID80MJjr7xnqy/cNbuZn"
    "fT35/GBPT653qHeQu8zddfd/MugjI1w2cbPTPuNbuG2W8/T/8HR0fAOuSkQeXigda9OnIfFN1J6A7FgkHWfnpjnxjbA0wXkoxpne"
    "gOnweCW3JsIvXyyl9k46Nl6FydiH07H5dGy8hpYkYne2SumqTQfHl7YzOedY8FMX3XixufmsqETnbpqObEl9L5wTfk823GEc/3sn"
    "7W0kOXz6zm8OY1rE+HDsfwEEdD925REAAA=="
)
REAL_OMEGACONF_CONFIG = {
    "base": {
        "seed": 10,
        "text_max_length": 256,
        "output": {"checkpoint": "/home/author/ckpt"},
        "interp": "${base.seed}",
        "missing": "???",
    },
    "tokenizer": {
        "pretrained_model_name_or_path": "emilyalsentzer/Bio_ClinicalBERT",
        "cache_dir": "/home/author/.cache",
    },
    "transform": {"train": {"transform": {"affine_scale": [0.8, 1.2], "p": 0.5}}},
    "model": {
        "image_encoder": {"name": "tf_efficientnet_b5_ns-detect", "model_type": "cnn", "source": "cnn"}
    },
}


# -- helpers ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def fake_omegaconf():
    """Modules ``omegaconf.{listconfig,dictconfig,base,nodes}`` with look-alike classes, so ``torch.save``
    pickles objects under OmegaConf's global names without omegaconf installed; removed afterwards."""
    names = ["omegaconf", "omegaconf.listconfig", "omegaconf.dictconfig", "omegaconf.base", "omegaconf.nodes"]
    assert not any(n in sys.modules for n in names), "the real omegaconf is imported; this fake would clash"
    modules = {n: types.ModuleType(n) for n in names}
    classes = {}
    for module, cls_name in [
        ("omegaconf.listconfig", "ListConfig"),
        ("omegaconf.dictconfig", "DictConfig"),
        ("omegaconf.base", "Metadata"),
        ("omegaconf.base", "ContainerMetadata"),
        ("omegaconf.nodes", "AnyNode"),
    ]:
        cls = type(cls_name, (), {"__module__": module, "__qualname__": cls_name})
        setattr(modules[module], cls_name, cls)
        classes[cls_name] = cls
    sys.modules.update(modules)
    try:
        yield types.SimpleNamespace(**classes)
    finally:
        for n in names:
            sys.modules.pop(n, None)


def omegaconf_list(fake, values, key):
    """A ListConfig look-alike with the attribute layout of omegaconf 2.3 (metadata, parent, nodes)."""

    def metadata(cls, **fields):
        obj = cls()
        defaults = {"ref_type": typing.Any, "object_type": None, "optional": True, "key": None, "flags": {}}
        obj.__dict__.update(defaults, flags_root=False, resolver_cache=collections.defaultdict(dict))
        obj.__dict__.update(fields)
        return obj

    container = fake.ListConfig()
    nodes = []
    for i, value in enumerate(values):
        node = fake.AnyNode()
        node.__dict__.update(_val=value, _metadata=metadata(fake.Metadata, key=i), _parent=container)
        nodes.append(node)
    container.__dict__.update(
        _metadata=metadata(fake.ContainerMetadata, key=key, key_type=int, element_type=typing.Any),
        _parent=None,
        _content=nodes,
    )
    container.__dict__["_metadata"].object_type = list
    return container


@contextlib.contextmanager
def cuda_location_tags():
    """Make torch.save tag every storage as ``cuda:0`` (as the released files, saved from GPU memory)."""
    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        yield
    finally:
        torch.serialization.location_tag = original


def perturb_buffers(model):
    """Give BatchNorm statistics and logit_scale non-default values, so a lossy load would show."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
        model.logit_scale.fill_(3.0)
    return model


def outputs(model, tokenizer, images):
    tokens = tokenize(tokenizer, TEXTS, max_length=24, padding="longest")
    with torch.no_grad():
        return (
            model.encode_image(images),
            model.embed_image(images),
            model.encode_text(tokens["input_ids"], tokens["attention_mask"]),
            model.embed_text(tokens["input_ids"], tokens["attention_mask"]),
        )


def assert_same_outputs(a, b):
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def resave(src, dst, edit):
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


# -- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def b2_clip(tiny_bert_dir):
    """The released B2 layout (legacy EfficientNet-B2, 506 keys) with a tiny BERT."""
    torch.manual_seed(0)
    model, tokenizer = build_clip(
        image_encoder="tf_efficientnetv2-detect", text_backbone=tiny_bert_dir, pretrained_image=False
    )
    return perturb_buffers(model).eval(), tokenizer


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def released_path(tmp_path_factory, b2_clip):
    """A file in the released structure: state dict, AdamW/LambdaLR states, config with an OmegaConf
    ListConfig inside (pickled under OmegaConf's names), epoch, train_loss tensor, cuda:0 storages."""
    model, _ = b2_clip
    path = tmp_path_factory.mktemp("released") / "b2-model-best-epoch-10.tar"
    state = model.state_dict()
    optimizer = {
        "state": {0: {"step": torch.tensor(70.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
        "param_groups": [
            {
                "lr": 5e-5,
                "betas": (0.9, 0.999),
                "eps": 1e-8,
                "weight_decay": 1e-4,
                "amsgrad": False,
                "initial_lr": 5e-5,
                "params": [0],
            }
        ],
    }
    scheduler = {"tsteps": 700, "wsteps": 70, "base_lrs": [5e-5], "last_epoch": 70, "_step_count": 71,
                 "_last_lr": [4e-5], "lr_lambdas": [{}]}  # fmt: skip
    with fake_omegaconf() as fake:
        config = {
            "model": {"image_encoder": {"name": "tf_efficientnetv2-detect", "model_type": "cnn"}},
            "tokenizer": {
                "pretrained_model_name_or_path": "emilyalsentzer/Bio_ClinicalBERT",
                "cache_dir": "/restricted/author/.cache/huggingface",
            },  # fmt: skip
            "base": {"seed": 10, "text_max_length": 256, "output": {"checkpoint": "/restricted/author/ckpt"}},
            "transform": {
                "train": {"transform": {"affine_scale": omegaconf_list(fake, [0.8, 1.2], "affine_scale")}}
            },
        }
        ckpt = {"model": state, "optimizer": optimizer, "scheduler": scheduler, "config": config, "epoch": 7,
                "train_loss": torch.tensor(1.234)}  # fmt: skip
        with cuda_location_tags():
            torch.save(ckpt, path)
    assert "omegaconf" not in sys.modules
    return path


@pytest.fixture(scope="module")
def tiny_clip(tiny_bert_dir):
    """A small model (timm test_efficientnet, tiny BERT) in our format, for the strict-loading checks."""
    torch.manual_seed(0)
    model, tokenizer = build_clip(
        image_encoder="test_efficientnet", text_backbone=tiny_bert_dir, pretrained_image=False
    )
    return perturb_buffers(model).eval(), tokenizer


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory, tiny_clip):
    model, tokenizer = tiny_clip
    path = tmp_path_factory.mktemp("ours") / "tiny.pt"
    return save_clip_checkpoint(path, model, metadata={"seed": 1}, tokenizer=tokenizer)


# -- released files --------------------------------------------------------------------------------------


def test_released_fixture_is_what_weights_only_refuses(released_path):
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(released_path))
    assert {"omegaconf.listconfig.ListConfig", "omegaconf.base.ContainerMetadata", "omegaconf.nodes.AnyNode",
            "collections.defaultdict", "typing.Any"} <= unsafe  # fmt: skip
    with pytest.raises(pickle.UnpicklingError):
        torch.load(released_path, map_location="cpu", weights_only=True)
    if not torch.cuda.is_available():  # the storages really are tagged cuda:0
        from mammoclip.checkpoints import STAND_IN_GLOBALS

        with pytest.raises(RuntimeError, match="CUDA"), torch.serialization.safe_globals(STAND_IN_GLOBALS):
            torch.load(released_path, weights_only=True)


def test_read_released_checkpoint(released_path, b2_clip):
    model, _ = b2_clip
    ckpt = read_checkpoint(released_path)
    assert set(ckpt) == {"model", "optimizer", "scheduler", "config", "epoch", "train_loss"}
    assert ckpt["epoch"] == 7 and ckpt["train_loss"].item() == pytest.approx(1.234)
    assert ckpt["config"]["transform"]["train"]["transform"]["affine_scale"] == [0.8, 1.2]
    assert ckpt["config"]["base"]["seed"] == 10
    assert ckpt["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    state = ckpt["model"]
    assert all(t.device.type == "cpu" for t in state.values())
    # the released key layout, exactly
    keys = set(state)
    image = {k for k in keys if k.startswith("image_encoder.")}
    text = {k for k in keys if k.startswith("text_encoder.text_encoder.")}
    assert keys == {"logit_scale"} | image | text | {
        "image_projection.projection.weight",
        "image_projection.projection.bias",
        "text_projection.projection.weight",
        "text_projection.projection.bias",
    }
    assert len(image) == 506 and not any("_fc" in k or "_model." in k for k in image)
    assert state["image_encoder._conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["image_encoder._conv_head.weight"].shape == (1408, 352, 1, 1)
    assert {"image_encoder._blocks.22._project_conv.weight", "image_encoder._bn1.running_var"} <= image
    assert "image_encoder._blocks.0._expand_conv.weight" not in image  # stage 0: expand ratio 1
    assert state["image_projection.projection.weight"].shape == (512, 1408)
    assert state["text_projection.projection.weight"].shape == (512, 128)
    assert "text_encoder.text_encoder.embeddings.word_embeddings.weight" in text
    assert state["logit_scale"].shape == ()
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key


def test_load_released_round_trip(released_path, b2_clip, images, tiny_bert_dir):
    model, tokenizer = b2_clip
    loaded, loaded_tokenizer, info = load_clip(released_path, text_backbone=tiny_bert_dir)
    assert not loaded.training
    assert info["format"] == "released" and info["epoch"] == 7
    assert info["train_loss"] == pytest.approx(1.234) and info["ignored_keys"] == []
    assert info["architecture"]["image_encoder"] == {"name": "tf_efficientnetv2-detect", "out_dim": 1408}
    assert info["logit_scale"] == pytest.approx(3.0)
    assert info["config"]["tokenizer"]["cache_dir"].startswith("/restricted")  # reported, never used
    assert loaded_tokenizer("mass")["input_ids"] == tokenizer("mass")["input_ids"]
    assert_same_outputs(outputs(model, tokenizer, images), outputs(loaded, loaded_tokenizer, images))


def test_infer_architecture_from_names_and_shapes(b2_clip):
    model, _ = b2_clip
    arch = infer_architecture(model.state_dict())
    assert arch["image_encoder"] == {"name": "tf_efficientnetv2-detect", "out_dim": 1408}
    assert arch["projection"] == {"type": "linear", "dim": 512, "dropout": 0.1}
    bert = arch["text_encoder"]["bert_config"]
    assert (bert["vocab_size"], bert["hidden_size"], bert["num_hidden_layers"]) == (300, 128, 2)
    assert (bert["intermediate_size"], bert["max_position_embeddings"], bert["type_vocab_size"]) == (
        256,
        64,
        2,
    )
    assert bert["num_attention_heads"] == 2  # hidden // 64
    assert arch["text_encoder"]["add_pooling_layer"] is True and arch["text_encoder"]["pooling"] == "eos"
    meta = {"text_encoder": {"bert_config": {"num_attention_heads": 4}, "pooling": "mean"}}
    arch = infer_architecture(model.state_dict(), meta)
    assert arch["text_encoder"]["bert_config"]["num_attention_heads"] == 4
    assert arch["text_encoder"]["pooling"] == "mean"


def test_infer_architecture_mlp_and_unknown_encoder(tiny_bert_dir):
    model, _ = build_clip(
        image_encoder="test_efficientnet",
        text_backbone=tiny_bert_dir,
        projection="mlp",
        pretrained_image=False,
    )
    with pytest.raises(CheckpointError, match="cannot tell which image encoder"):
        infer_architecture(model.state_dict())
    arch = infer_architecture(model.state_dict(), {"image_encoder": {"name": "test_efficientnet"}})
    assert arch["image_encoder"] == {"name": "test_efficientnet", "out_dim": 256}
    assert arch["projection"]["type"] == "mlp"


def test_real_omegaconf_pickle_reads_as_plain_data(tmp_path):
    path = tmp_path / "omegaconf.tar"
    path.write_bytes(gzip.decompress(base64.b64decode("".join(REAL_OMEGACONF_CKPT_GZ_B64))))
    assert "omegaconf.listconfig.ListConfig" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    ckpt = read_checkpoint(path)
    assert ckpt["config"] == REAL_OMEGACONF_CONFIG
    assert ckpt["model"]["logit_scale"].item() == 2.5 and ckpt["model"]["logit_scale"].device.type == "cpu"
    assert ckpt["epoch"] == 7 and ckpt["train_loss"].item() == 1.5
    assert "omegaconf" not in sys.modules


def test_released_without_tokenizer_says_how_to_provide_one(released_path, tmp_path):
    with pytest.raises(TextBackboneNotFoundError, match="holds no tokenizer") as info:
        load_clip(released_path, cache_dir=tmp_path / "empty-hf-cache")
    assert "huggingface-cli download emilyalsentzer/Bio_ClinicalBERT" in str(info.value)


def test_wrong_tokenizer_is_refused(released_path, tmp_path, report_corpus):
    bigger = build_tiny_bert(report_corpus, tmp_path / "bigger", vocab_size=10_000, hidden_size=64, layers=1)
    with pytest.raises(CheckpointError, match="wrong tokenizer"):
        load_clip(released_path, text_backbone=bigger)


# -- strict loading --------------------------------------------------------------------------------------


def test_missing_and_unexpected_keys_are_listed(tiny_path, tmp_path):
    def edit(ckpt):
        del ckpt["model"]["text_encoder.text_encoder.pooler.dense.bias"]
        del ckpt["model"]["image_projection.projection.bias"]
        ckpt["model"]["image_encoder._fc.weight"] = torch.zeros(1, 256)

    bad = resave(tiny_path, tmp_path / "bad.pt", edit)
    with pytest.raises(CheckpointError) as info:
        load_clip(bad)
    message = str(info.value)
    assert (
        "Missing keys 2: image_projection.projection.bias, text_encoder.text_encoder.pooler.dense.bias"
        in message
    )
    assert "Unexpected keys 1: image_encoder._fc.weight" in message


def test_shape_mismatch_and_long_key_lists(tiny_clip):
    model, _ = tiny_clip
    state = model.state_dict()
    state["text_projection.projection.weight"] = torch.zeros(512, 64)
    with pytest.raises(
        CheckpointError, match=r"text_projection.projection.weight \(512, 64\) vs model \(512, 128\)"
    ):
        load_state_dict_strict(model, state)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("image_encoder.")}
    n_image = sum(k.startswith("image_encoder.") for k in model.state_dict())
    with pytest.raises(CheckpointError, match=rf"Missing keys {n_image}: .*\.\.\. \({n_image - 20} more\)"):
        load_state_dict_strict(model, state)


def test_position_ids_tolerated_and_wrappers_stripped(tiny_clip, tiny_path, tmp_path, images):
    model, tokenizer = tiny_clip

    def edit(ckpt):
        ckpt["model"] = {f"module.{k}": v for k, v in ckpt["model"].items()}  # DistributedDataParallel
        ckpt["model"][f"module.{POSITION_IDS_KEY}"] = torch.arange(64)[None]  # older transformers

    path = resave(tiny_path, tmp_path / "ddp.pt", edit)
    loaded, loaded_tokenizer, info = load_clip(path)
    assert info["ignored_keys"] == [POSITION_IDS_KEY]
    assert_same_outputs(outputs(model, tokenizer, images[:, :, :32, :32]),
                        outputs(loaded, loaded_tokenizer, images[:, :, :32, :32]))  # fmt: skip
    # absent position_ids (the normal case with transformers >= 4.31) is the plain round trip
    assert POSITION_IDS_KEY not in read_checkpoint(tiny_path)["model"]


def test_split_state_dict(tiny_clip):
    model, _ = tiny_clip
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    image, text, image_proj, text_proj, scale = split_state_dict(state)
    assert set(image) == set(model.image_encoder.state_dict())
    assert set(text) == set(model.text_encoder.text_encoder.state_dict())
    assert set(image_proj) == set(text_proj) == {"projection.weight", "projection.bias"}
    assert scale.item() == pytest.approx(3.0)
    assert set(released_state_dict({"model": state})) == set(model.state_dict())
    with pytest.raises(CheckpointError, match="belong to no part"):
        split_state_dict({**state, "classifier.weight": torch.zeros(1)})


# -- refusing and rejecting files ------------------------------------------------------------------------


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsExec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload, name", [(_RunsShell, "system"), (_RunsExec, "builtins.exec")])
def test_arbitrary_globals_are_refused(tmp_path, payload, name):
    marker = tmp_path / "it-ran"
    path = tmp_path / "evil.tar"
    torch.save({"model": {"w": torch.zeros(1)}, "config": {"x": payload(marker)}}, path)
    with pytest.raises(CheckpointError, match=f"refused for safety.*{name}"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="refused for safety"):
        load_clip(path)
    assert not marker.exists()


def test_unlisted_class_under_omegaconf_is_refused(tmp_path):
    module = types.ModuleType("omegaconf")
    module.OmegaConf = type("OmegaConf", (), {"__module__": "omegaconf", "__qualname__": "OmegaConf"})
    sys.modules["omegaconf"] = module
    try:
        torch.save({"model": {}, "config": module.OmegaConf()}, tmp_path / "x.tar")
    finally:
        del sys.modules["omegaconf"]
    with pytest.raises(CheckpointError, match="refused for safety.*omegaconf.OmegaConf"):
        read_checkpoint(tmp_path / "x.tar")


def test_bad_files_give_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint file \\(absent\\)"):
        read_checkpoint(tmp_path / "missing.tar")
    with pytest.raises(CheckpointError, match="not a checkpoint file \\(a directory\\)"):
        read_checkpoint(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "notes.txt")
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "detector.pth")
    with pytest.raises(CheckpointError, match="no 'model' entry.*'state_dict'.*detector"):
        read_checkpoint(tmp_path / "detector.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="found list"):
        read_checkpoint(tmp_path / "list.pt")
    torch.save({"model": {"w": [1, 2]}}, tmp_path / "notensor.pt")
    with pytest.raises(CheckpointError, match="not a tensor"):
        load_clip(tmp_path / "notensor.pt")


# -- our checkpoints -------------------------------------------------------------------------------------


def test_our_checkpoint_round_trip(tmp_path, b2_clip, images):
    from mammoclip.provenance import code_version

    model, tokenizer = b2_clip
    metadata = {"config": {"lr": 5e-5, "folds": [0, 1]}, "data": tmp_path / "reports.csv", "seed": 10}
    optimizer = torch.optim.AdamW(model.text_projection.parameters(), lr=1e-3)
    path = save_clip_checkpoint(
        tmp_path / "run" / "model-epoch-3.tar",
        model,
        metadata=metadata,
        tokenizer=tokenizer,
        optimizer_state=optimizer.state_dict(),
        epoch=3,
        train_loss=torch.tensor(0.5),
        extra={"best_metric": 0.75},
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["model-epoch-3.tar"]  # no temporary left
    # plain weights_only load, no allow-list needed; upstream's entries where upstream's tools look
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"model", "config", "optimizer", "scheduler", "epoch", "train_loss", "mammoclip",
                        "best_metric"}  # fmt: skip
    assert set(raw["model"]) == set(model.state_dict())
    assert raw["config"]["model"]["image_encoder"]["name"] == "tf_efficientnetv2-detect"
    assert raw["config"]["base"]["text_max_length"] == 256 and raw["epoch"] == 3 and raw["train_loss"] == 0.5
    assert raw["mammoclip"]["code_version"] == code_version()
    assert "vocab.txt" in raw["mammoclip"]["tokenizer"]["files"]
    # upstream's classifier: strip "image_encoder." and load strictly into a fresh encoder
    from mammoclip.models.image_encoders import build_image_encoder

    encoder = build_image_encoder("tf_efficientnetv2-detect", pretrained=False)
    encoder.load_state_dict(
        {k.split(".", 1)[1]: v for k, v in raw["model"].items() if k.startswith("image_encoder.")}
    )

    loaded, loaded_tokenizer, info = load_clip(path)  # no text_backbone: the tokenizer is embedded
    assert info["format"] == "mammoclip" and info["tokenizer"] == "embedded in the checkpoint"
    assert info["metadata"] == {**metadata, "data": str(metadata["data"])}
    assert info["epoch"] == 3 and info["code_version"] == code_version()
    assert loaded.architecture == model.architecture
    assert loaded_tokenizer(TEXTS)["input_ids"] == tokenizer(TEXTS)["input_ids"]
    assert_same_outputs(outputs(model, tokenizer, images), outputs(loaded, loaded_tokenizer, images))


def test_save_unwraps_data_parallel(tmp_path, tiny_clip):
    model, _ = tiny_clip
    wrapped = torch.nn.DataParallel(model)  # keys "module.*", no architecture attribute of its own
    path = save_clip_checkpoint(tmp_path / "dp.tar", wrapped, metadata={})
    assert set(read_checkpoint(path)["model"]) == set(model.state_dict())


def test_save_refuses_what_it_cannot_store(tmp_path, tiny_clip):
    model, _ = tiny_clip
    with pytest.raises(TypeError, match="metadata\\['bad'\\]"):
        save_clip_checkpoint(tmp_path / "x.tar", model, metadata={"bad": object()})
    with pytest.raises(ValueError, match="reserved"):
        save_clip_checkpoint(tmp_path / "x.tar", model, metadata={}, extra={"model": 1})
    assert list(tmp_path.iterdir()) == []
