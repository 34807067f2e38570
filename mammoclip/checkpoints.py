"""Read released Mammo-CLIP checkpoints safely, write ours in the same key layout, rebuild models from either.

Reading (:func:`read_checkpoint`)
---------------------------------
Always ``torch.load(path, map_location="cpu", weights_only=True)``: no arbitrary unpickling, and storages
saved from ``cuda:0`` (as in the released files) land on the CPU. The released files' ``config`` entry can
hold OmegaConf objects (a ``ListConfig`` left in ``transform.train.transform.affine_scale``, which drags in
its parent ``DictConfig``, nodes, metadata dataclasses, ``collections.defaultdict``, ``typing.Any`` and
builtin types; docs/upstream.md#checkpoints). ``weights_only=True`` refuses those globals. We
allow-list, *under those global names only*, inert stand-ins defined here (:data:`STAND_IN_GLOBALS`): a
stand-in class only records the pickled state as data (it has no behaviour and omegaconf need not be
installed), ``defaultdict`` becomes a plain ``dict``, and type references (``typing.Any``, ``builtins.list``,
...) become :class:`GlobalRef` markers. After loading, every stand-in in the result is converted to plain
data (a ``ListConfig`` to a list of its values, a ``DictConfig`` to a dict, a ``GlobalRef`` to its dotted
name). Any other global is still refused, and the error names it.

Writing (:func:`save_clip_checkpoint`)
--------------------------------------
Our file is a ``torch.save`` archive readable by upstream's tools and by ``weights_only=True``::

    {
      "model":      state dict in the released key layout (CPU tensors; see mammoclip.models.clip),
      "config":     upstream-shaped description (config["model"]["image_encoder"]["name"], ...["tokenizer"],
                    ["base"]["text_max_length"]) so upstream's loaders rebuild the encoder,
      "optimizer":  optimizer.state_dict() or None,  "scheduler": scheduler.state_dict() or None,
      "epoch":      int,  "train_loss": float or None,
      "mammoclip":  {"format_version": 1, "code_version": ..., "architecture": MammoClip.architecture,
                     "metadata": caller's dict (config, data, seed, ...),
                     "tokenizer": {"class": ..., "files": {file name: text}} or None},
      ...extra top-level entries given by the caller
    }

Only plain types and tensors are written; the writer checks the finished file with
``torch.serialization.get_unsafe_globals_in_checkpoint`` before moving it into place (atomic replace).

Rebuilding (:func:`load_clip`)
------------------------------
From our ``mammoclip.architecture`` when present, else inferred from key names and tensor shapes
(:func:`infer_architecture`); paths stored in a checkpoint's ``config`` are never used. The state dict is
loaded strictly: only ``text_encoder.text_encoder.embeddings.position_ids`` may be absent or extra.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mammoclip.io import atomic_path

FORMAT_VERSION = 1
IMAGE_PREFIX = "image_encoder."
TEXT_PREFIX = "text_encoder.text_encoder."
IMAGE_PROJECTION_PREFIX = "image_projection."
TEXT_PROJECTION_PREFIX = "text_projection."
LOGIT_SCALE_KEY = "logit_scale"
POSITION_IDS_KEY = TEXT_PREFIX + "embeddings.position_ids"
#: wrapper prefixes stripped from state-dict keys: DistributedDataParallel / DataParallel, torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 20  # keys listed per category in error messages


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not match the model; the message says why."""


# ------------------------------------------------------------------------------------------------------------
# Inert stand-ins for the OmegaConf objects inside released checkpoints
# ------------------------------------------------------------------------------------------------------------


class GlobalRef:
    """A reference to a type found in a pickle (``typing.Any``, ``builtins.list``, ...), kept as its name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"GlobalRef({self.name!r})"


class StandIn:
    """Base of the inert stand-ins: records constructor arguments and pickled state, does nothing else."""

    global_name = "?"
    args: tuple[Any, ...]
    state: Any

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.global_name}>"

    def _field(self, name: str, default: Any = None) -> Any:
        state = self.state
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        return state.get(name, default) if isinstance(state, dict) else default

    def to_plain(self, convert) -> Any:
        state = self.state
        if isinstance(state, dict):
            return {k: convert(v) for k, v in state.items() if k != "_parent"}
        return convert(state)


class _ContainerStandIn(StandIn):
    """``ListConfig`` / ``DictConfig``: converts to the list / dict of its node values."""

    def to_plain(self, convert) -> Any:
        content = self._field("_content")
        if isinstance(content, Mapping):
            return {convert(k): convert(v) for k, v in content.items()}
        if isinstance(content, list | tuple):
            return [convert(v) for v in content]
        return content  # None, "???" (missing) or an interpolation string


class _NodeStandIn(StandIn):
    """An OmegaConf value node: converts to its value."""

    def to_plain(self, convert) -> Any:
        return convert(self._field("_val"))


def _defaultdict_stand_in(*args: Any, **kwargs: Any) -> dict:
    """``collections.defaultdict(factory)`` -> a plain dict (its items are set after construction)."""
    return {}


_CONTAINERS = ("omegaconf.listconfig.ListConfig", "omegaconf.dictconfig.DictConfig")
_NODES = tuple(
    f"omegaconf.nodes.{n}"
    for n in (
        "AnyNode",
        "StringNode",
        "IntegerNode",
        "FloatNode",
        "BooleanNode",
        "BytesNode",
        "PathNode",
        "EnumNode",
        "ValueNode",
        "InterpolationResultNode",
    )
)
_OTHER = ("omegaconf.base.Metadata", "omegaconf.base.ContainerMetadata")
_TYPE_REFS = (
    *(f"typing.{n}" for n in ("Any", "Dict", "List", "Tuple", "Optional", "Union", "Sequence", "Mapping")),
    *(
        f"builtins.{n}"
        for n in ("list", "dict", "int", "float", "str", "bool", "bytes", "tuple", "object", "NoneType")
    ),
)


def _make_stand_ins() -> list[tuple[Any, str]]:
    pairs: list[tuple[Any, str]] = []
    for names, base in ((_CONTAINERS, _ContainerStandIn), (_NODES, _NodeStandIn), (_OTHER, StandIn)):
        for name in names:
            cls = type(name.rsplit(".", 1)[1], (base,), {"global_name": name, "__module__": __name__})
            pairs.append((cls, name))
    pairs.extend((GlobalRef(name), name) for name in _TYPE_REFS)
    pairs.append((_defaultdict_stand_in, "collections.defaultdict"))
    return pairs


#: (stand-in, global name) pairs allow-listed while reading a checkpoint, and nothing else.
STAND_IN_GLOBALS: list[Any] = _make_stand_ins()
_STAND_IN_NAMES = frozenset(name for _, name in STAND_IN_GLOBALS)


def to_plain(obj: Any) -> Any:
    """Replace stand-ins (recursively, through dicts, lists and tuples) by plain data."""
    active: set[int] = set()

    def convert(x: Any) -> Any:
        if isinstance(x, GlobalRef):
            return x.name
        if isinstance(x, StandIn | dict | list | tuple):
            if id(x) in active:  # a cycle (only possible through stand-in state): cut it
                return None
            active.add(id(x))
            try:
                if isinstance(x, StandIn):
                    return x.to_plain(convert)
                if isinstance(x, dict):
                    return type(x)((k, convert(v)) for k, v in x.items()) if _has_stand_in(x) else x
                if isinstance(x, list):
                    return [convert(v) for v in x] if _has_stand_in(x) else x
                return tuple(convert(v) for v in x) if _has_stand_in(x) else x
            finally:
                active.discard(id(x))
        return x

    return convert(obj)


def _has_stand_in(obj: Any, _depth: int = 0) -> bool:
    if isinstance(obj, StandIn | GlobalRef):
        return True
    if _depth > 100:
        return True
    if isinstance(obj, dict):
        return any(_has_stand_in(v, _depth + 1) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_has_stand_in(v, _depth + 1) for v in obj)
    return False


# ------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------


def _refused_globals(path: Path, message: str) -> list[str]:
    names: list[str] = []
    try:
        names = [
            g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in _STAND_IN_NAMES
        ]
    except Exception:  # not a zip archive, or unreadable: fall back to the error message
        names = []
    if not names:
        names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", message)))
    return names


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level dict of a ``torch.save`` checkpoint, loaded with ``weights_only=True`` on the CPU.

    OmegaConf objects and ``defaultdict`` inside (released files) come back as plain data; any other
    non-tensor global is refused. Raises :class:`CheckpointError` when the path is not a file, not a torch
    archive, refused for safety, not a dict, or has no ``model`` entry.
    """
    path = Path(path)
    if not path.is_file():
        what = "a directory" if path.is_dir() else "absent"
        raise CheckpointError(f"{path}: not a checkpoint file ({what})")
    is_zip = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(STAND_IN_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as err:  # torch raises many types here; all become one clear message
        message = str(err)
        refused = _refused_globals(path, message) if "GLOBAL" in message else []
        if refused:
            raise CheckpointError(
                f"{path}: refused for safety: the file's pickle needs the global(s) {', '.join(refused)}, "
                "which a checkpoint has no reason to contain; loading it would run arbitrary code. Only "
                "tensors, plain Python data and OmegaConf config objects (read as plain data) are accepted."
            ) from err
        if is_zip and ("weights only" in message.lower() or "Unpickl" in type(err).__name__):
            detail = next(
                (ln.strip() for ln in message.splitlines() if "Unsupported" in ln or "Can only" in ln), ""
            )
            raise CheckpointError(
                f"{path}: refused for safety: its pickle uses operations that weights-only loading does not "
                f"allow ({detail or type(err).__name__})"
            ) from err
        first = message.strip().splitlines()[0] if message.strip() else ""
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (torch.save archive) ({type(err).__name__}: {first[:200]})"
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path}: expected a dict with a 'model' state dict at the top level, found {type(ckpt).__name__}"
        )
    if "model" not in ckpt:
        keys = ", ".join(map(repr, list(ckpt)[:_SHOW]))
        hint = (
            " (a detector checkpoint? those keep weights under 'state_dict')" if "state_dict" in ckpt else ""
        )
        raise CheckpointError(f"{path}: no 'model' entry; top-level keys are {keys}{hint}")
    return {k: to_plain(v) for k, v in ckpt.items()}


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def released_state_dict(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``ckpt["model"]`` with ``module.`` (DDP) / ``_orig_mod.`` (torch.compile) prefixes removed."""
    if not isinstance(ckpt, Mapping) or "model" not in ckpt:
        raise CheckpointError("not a CLIP checkpoint: no 'model' entry")
    state = ckpt["model"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"'model' is a {type(state).__name__}, not a state dict")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise CheckpointError(f"'model' entry {key!r} is a {type(value).__name__}, not a tensor")
        new = _strip_wrappers(key)
        if new in out:
            raise CheckpointError(f"'model' has {new!r} twice (with and without a wrapper prefix)")
        out[new] = value
    return out


def split_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[
    dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], Any
]:
    """``(image_encoder, text_encoder, image_projection, text_projection, logit_scale)`` of a CLIP state dict.

    Prefixes are removed: image-encoder keys as the encoder names them (lukemelas names for legacy
    encoders), BERT keys (``embeddings.word_embeddings.weight``, ...), projection keys
    (``projection.weight``, ...). ``logit_scale`` is the scalar tensor or ``None``. Wrapper prefixes
    (``module.``) are tolerated; any key outside these groups is an error.
    """
    groups: tuple[dict[str, torch.Tensor], ...] = ({}, {}, {}, {})
    prefixes = (IMAGE_PREFIX, TEXT_PREFIX, IMAGE_PROJECTION_PREFIX, TEXT_PROJECTION_PREFIX)
    logit_scale = None
    unknown: list[str] = []
    for key, value in state_dict.items():
        key = _strip_wrappers(key)
        if key == LOGIT_SCALE_KEY:
            logit_scale = value
            continue
        for prefix, group in zip(prefixes, groups, strict=True):
            if key.startswith(prefix):
                group[key[len(prefix) :]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} key(s) belong to no part of a CLIP model (expected prefixes "
            f"{', '.join(prefixes)} or {LOGIT_SCALE_KEY!r}): {', '.join(unknown[:_SHOW])}"
        )
    return groups[0], groups[1], groups[2], groups[3], logit_scale


# ------------------------------------------------------------------------------------------------------------
# Architecture from names and shapes
# ------------------------------------------------------------------------------------------------------------


def _projection_spec(group: Mapping[str, torch.Tensor], which: str) -> tuple[str, int, int]:
    weight = group.get("projection.weight")
    if weight is None or weight.ndim != 2:
        raise CheckpointError(f"no {which}_projection.projection.weight matrix in the checkpoint")
    kind = "mlp" if "fc.weight" in group or "layer_norm.weight" in group else "linear"
    return kind, int(weight.shape[0]), int(weight.shape[1])


def _bert_config_from_shapes(
    text: Mapping[str, torch.Tensor], base: Mapping[str, Any] | None
) -> dict[str, Any]:
    from transformers import BertConfig

    try:
        words = text["embeddings.word_embeddings.weight"]
        positions = text["embeddings.position_embeddings.weight"]
        token_types = text["embeddings.token_type_embeddings.weight"]
        intermediate = text["encoder.layer.0.intermediate.dense.weight"]
    except KeyError as err:
        raise CheckpointError(
            f"the text encoder is not a BERT: {TEXT_PREFIX}{err.args[0]} is missing"
        ) from err
    layers = {int(m.group(1)) for k in text if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}
    hidden = int(words.shape[1])
    config = dict(base or {})
    heads = config.get("num_attention_heads")
    if not heads:
        if hidden % 64:
            raise CheckpointError(
                f"cannot infer the number of attention heads for hidden size {hidden} (not a multiple of 64)"
            )
        heads = hidden // 64
    config.update(
        {
            "model_type": "bert",
            "vocab_size": int(words.shape[0]),
            "hidden_size": hidden,
            "num_hidden_layers": max(layers) + 1 if layers else 0,
            "num_attention_heads": int(heads),
            "intermediate_size": int(intermediate.shape[0]),
            "max_position_embeddings": int(positions.shape[0]),
            "type_vocab_size": int(token_types.shape[0]),
        }
    )
    if not base:  # Bio_ClinicalBERT / BERT-base defaults for what shapes do not tell
        defaults = BertConfig().to_dict()
        config = {**{k: defaults[k] for k in ("hidden_act", "layer_norm_eps", "pad_token_id")}, **config}
    return config


def infer_architecture(
    state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The model description (as ``MammoClip.architecture``) from key names and tensor shapes.

    Image encoder: the legacy B5/B2 variant recognised from its keys and shapes
    (:func:`~mammoclip.models.image_encoders.infer_legacy_variant`), else the name in ``metadata`` (our
    architecture dict). Text: BERT sizes from shapes (heads = hidden // 64 unless ``metadata`` says).
    Projection: ``linear`` or ``mlp`` from the keys, sizes from shapes. Nothing is read from paths.
    """
    from mammoclip.models.clip import make_architecture
    from mammoclip.models.image_encoders import LEGACY_ENCODERS, infer_legacy_variant

    metadata = metadata or {}
    image, text, image_proj, text_proj, _ = split_state_dict(state_dict)
    meta_image = metadata.get("image_encoder") or {}
    meta_text = metadata.get("text_encoder") or {}
    meta_proj = metadata.get("projection") or {}

    variant = infer_legacy_variant(image)
    if variant is not None:
        image_name = next(name for name, v in LEGACY_ENCODERS.items() if v == variant)
    elif meta_image.get("name"):
        image_name = meta_image["name"]
    else:
        sample = ", ".join(list(image)[:5]) or "none"
        raise CheckpointError(
            "cannot tell which image encoder the checkpoint holds: it is not the legacy EfficientNet-B5/B2 "
            f"layout and carries no mammoclip architecture (first image_encoder keys: {sample})"
        )
    kind, dim, image_dim = _projection_spec(image_proj, "image")
    text_kind, text_dim, text_hidden = _projection_spec(text_proj, "text")
    if (text_kind, text_dim) != (kind, dim):
        raise CheckpointError(
            f"image and text projections differ ({kind} to {dim} vs {text_kind} to {text_dim})"
        )
    bert = _bert_config_from_shapes(text, meta_text.get("bert_config"))
    if bert["hidden_size"] != text_hidden:
        raise CheckpointError(
            f"text projection expects {text_hidden} inputs but the BERT hidden size is {bert['hidden_size']}"
        )
    return make_architecture(
        image_encoder=image_name,
        image_dim=image_dim,
        bert_config=bert,
        text_source=meta_text.get("source"),
        pooling=meta_text.get("pooling", "eos"),
        projection=kind,
        projection_dim=dim,
        projection_dropout=float(meta_proj.get("dropout", 0.1)),
        add_pooling_layer="pooler.dense.weight" in text,
    )


# ------------------------------------------------------------------------------------------------------------
# Loading into a model
# ------------------------------------------------------------------------------------------------------------


def _key_list(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    more = f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{len(keys)}: {shown}{more}" if keys else "0"


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Load ``state_dict`` into ``model`` strictly; return the keys ignored.

    Only ``text_encoder.text_encoder.embeddings.position_ids`` may be absent (the model keeps its own) or
    extra (dropped). Any other missing or unexpected key, or a shape mismatch, raises
    :class:`CheckpointError` listing them (first 20 of each, with counts).
    """
    expected = model.state_dict()
    state = {_strip_wrappers(k): v for k, v in state_dict.items()}
    ignored: list[str] = []
    if POSITION_IDS_KEY in state and POSITION_IDS_KEY not in expected:
        del state[POSITION_IDS_KEY]
        ignored.append(POSITION_IDS_KEY)
    if POSITION_IDS_KEY in expected and POSITION_IDS_KEY not in state:
        state[POSITION_IDS_KEY] = expected[POSITION_IDS_KEY]
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            "checkpoint does not match the model. Missing keys "
            f"{_key_list(missing)}. Unexpected keys {_key_list(unexpected)}. "
            f"Shape mismatches {_key_list(mismatched)}."
        )
    model.load_state_dict(state, strict=True)
    return ignored


def _tokenizer_files(tokenizer) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files: dict[str, str | bytes] = {}
        for file in sorted(Path(tmp).rglob("*")):
            if file.is_file():
                data = file.read_bytes()
                try:
                    files[file.relative_to(tmp).as_posix()] = data.decode("utf-8")
                except UnicodeDecodeError:
                    files[file.relative_to(tmp).as_posix()] = data
    if isinstance(files.get("tokenizer.json"), str):
        # the backend remembers the truncation / padding of its last call; store it without them
        spec = json.loads(files["tokenizer.json"])
        spec["truncation"] = spec["padding"] = None
        files["tokenizer.json"] = json.dumps(spec, ensure_ascii=False, indent=2)
    if "vocab.txt" not in files and hasattr(tokenizer, "get_vocab"):
        # transformers 5 writes only tokenizer.json; keep the plain WordPiece vocabulary too
        by_id = sorted((i, t) for t, i in tokenizer.get_vocab().items())
        if [i for i, _ in by_id] == list(range(len(by_id))):
            files["vocab.txt"] = "".join(f"{t}\n" for _, t in by_id)
    return {"class": type(tokenizer).__name__, "files": files}


def _tokenizer_from_files(spec: Mapping[str, Any]):
    from transformers import AutoTokenizer

    from mammoclip.models.text_encoders import _fix_bos

    with tempfile.TemporaryDirectory() as tmp:
        for name, content in spec["files"].items():
            target = Path(tmp) / name
            if not target.resolve().is_relative_to(Path(tmp).resolve()):
                raise CheckpointError(f"embedded tokenizer file name {name!r} points outside its folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
    return _fix_bos(tokenizer)


def _backbone_config(text_backbone, cache_dir) -> dict[str, Any] | None:
    """The BERT config of a local / cached text backbone as plain data, or ``None`` when unavailable."""
    from transformers import AutoConfig

    from mammoclip.models.text_encoders import _source_and_kwargs

    source, kwargs = _source_and_kwargs(text_backbone, cache_dir)
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError):
        return None
    if getattr(config, "model_type", None) != "bert":
        return None
    return json.loads(config.to_json_string(use_diff=False))


def load_clip(
    path: str | os.PathLike,
    *,
    text_backbone: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    pooling: str | None = None,
    image_encoder: torch.nn.Module | None = None,
    tokenizer: bool = True,
):
    """``(model, tokenizer, info)`` from a released Mammo-CLIP ``.tar`` or one of our checkpoints.

    The architecture comes from our ``mammoclip`` entry when present, else from key names and shapes
    (:func:`infer_architecture`, taking attention heads etc. from ``text_backbone``'s ``config.json`` when
    given); the model is built with random weights (nothing downloaded) and the
    checkpoint loaded strictly (:func:`load_state_dict_strict`). Tokenizer: the one embedded in our
    checkpoint (it was trained with it), else ``text_backbone`` (a directory or a cached Hugging Face id),
    else ``emilyalsentzer/Bio_ClinicalBERT`` from the Hugging Face cache. ``pooling`` overrides the text
    pooling; ``image_encoder`` supplies the encoder module when the checkpoint names none.
    ``tokenizer=False`` skips the tokenizer (returned as None): image-only uses such as the downstream
    classifiers then need no text backbone on disk.
    The model is returned in eval mode on the CPU. ``info`` holds ``path``, ``format`` (``"mammoclip"``
    or ``"released"``), ``architecture``, ``epoch``, ``train_loss``, ``config`` (the stored config as plain
    data, for reference only), ``metadata`` (ours), ``code_version``, ``ignored_keys``, ``tokenizer``
    (where it came from) and ``logit_scale``.
    """
    from mammoclip.models.clip import clip_from_architecture
    from mammoclip.models.text_encoders import (
        DEFAULT_TEXT_BACKBONE,
        TextBackboneNotFoundError,
        load_tokenizer,
    )

    ckpt = read_checkpoint(path)
    state = released_state_dict(ckpt)
    ours = ckpt.get("mammoclip") if isinstance(ckpt.get("mammoclip"), Mapping) else None
    if ours is not None and isinstance(ours.get("architecture"), Mapping):
        architecture = dict(ours["architecture"])
        fmt = "mammoclip"
    else:
        # what shapes cannot tell (attention heads, activation, eps) comes from the text backbone's
        # config.json when one is given, else from the BERT-base defaults (Bio_ClinicalBERT's values)
        base = _backbone_config(text_backbone, cache_dir) if text_backbone is not None else None
        architecture = infer_architecture(state, {"text_encoder": {"bert_config": base}} if base else None)
        fmt = "released"
    try:
        model = clip_from_architecture(architecture, image_encoder=image_encoder, pooling=pooling)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err
    try:
        ignored = load_state_dict_strict(model, state)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    model.eval()

    want_tokenizer = tokenizer
    loaded: Any = None  # the tokenizer returned
    if not want_tokenizer:
        tokenizer_source = "not loaded"
    elif ours is not None and isinstance(ours.get("tokenizer"), Mapping):
        loaded = _tokenizer_from_files(ours["tokenizer"])
        tokenizer_source = "embedded in the checkpoint"
    elif text_backbone is not None:
        loaded = load_tokenizer(text_backbone, cache_dir=cache_dir)
        tokenizer_source = str(text_backbone)
    else:
        try:
            loaded = load_tokenizer(DEFAULT_TEXT_BACKBONE, cache_dir=cache_dir)
        except TextBackboneNotFoundError as err:
            raise TextBackboneNotFoundError(
                f"{path} holds no tokenizer (released checkpoints never do); pass text_backbone= (a folder "
                f"with {DEFAULT_TEXT_BACKBONE}'s tokenizer or a cached model id). {err}"
            ) from err
        tokenizer_source = DEFAULT_TEXT_BACKBONE
    text_config: Any = model.text_encoder.text_encoder.config
    vocab_rows = int(text_config.vocab_size)
    if loaded is not None and len(loaded) > vocab_rows:
        raise CheckpointError(
            f"{path}: the tokenizer ({tokenizer_source}) has {len(loaded)} tokens but the checkpoint's "
            f"text encoder only {vocab_rows} embeddings: wrong tokenizer"
        )
    train_loss = ckpt.get("train_loss")
    if torch.is_tensor(train_loss) and train_loss.numel() == 1:
        train_loss = float(train_loss)
    info = {
        "path": str(Path(path).resolve()),
        "format": fmt,
        "architecture": model.architecture,
        "epoch": ckpt.get("epoch"),
        "train_loss": train_loss,
        "config": ckpt.get("config"),
        "metadata": dict(ours.get("metadata") or {}) if ours else {},
        "code_version": ours.get("code_version") if ours else None,
        "ignored_keys": ignored,
        "tokenizer": tokenizer_source,
        "logit_scale": float(model.logit_scale.detach()),
    }
    return model, loaded, info


# ------------------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------------------


def _plain_data(obj: Any, where: str = "metadata") -> Any:
    """JSON-like plain data (and tensors) for a weights-only-safe pickle; paths and numpy become plain."""
    if obj is None or isinstance(obj, bool | int | float | str | bytes):
        return obj
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {_plain_data(k, where): _plain_data(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return (
            type(obj)(_plain_data(v, where) for v in obj)
            if isinstance(obj, tuple)
            else [_plain_data(v, where) for v in obj]
        )
    if isinstance(obj, set | frozenset):
        return sorted(_plain_data(v, where) for v in obj)
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"{where}: cannot store a {type(obj).__name__} in a checkpoint (plain data only)")


def upstream_config(
    architecture: Mapping[str, Any], *, text_max_length: int = 256, temperature: float = 0.07
) -> dict[str, Any]:
    """The ``config`` entry in upstream's shape: upstream's loaders find the encoder and tokenizer names."""
    text_source = architecture["text_encoder"].get("source")
    proj = architecture["projection"]
    return {
        "model": {
            "name": "clip_custom",
            "temperature": temperature,
            "image_encoder": {
                "source": "cnn",
                "name": architecture["image_encoder"].get("name"),
                "pretrained": False,
                "model_type": "cnn",
            },
            "text_encoder": {
                "source": "huggingface",
                "name": text_source,
                "pretrained": True,
                "gradient_checkpointing": False,
                "pooling": architecture["text_encoder"].get("pooling", "eos"),
                "trust_remote_code": False,
                "cache_dir": None,
            },
            "projection_head": {
                "name": proj["type"],
                "proj_dim": proj["dim"],
                "dropout": proj.get("dropout", 0.1),
            },
        },
        "tokenizer": {
            "source": "huggingface",
            "pretrained_model_name_or_path": text_source,
            "cache_dir": None,
        },
        "base": {"text_max_length": int(text_max_length)},
    }


_RESERVED = frozenset({"model", "config", "optimizer", "scheduler", "epoch", "train_loss", "mammoclip"})


def save_clip_checkpoint(
    path: str | os.PathLike,
    model,
    *,
    metadata: Mapping[str, Any],
    tokenizer: Any = None,
    optimizer_state: Mapping[str, Any] | None = None,
    scheduler_state: Mapping[str, Any] | None = None,
    epoch: int = 0,
    train_loss: float | torch.Tensor | None = None,
    extra: Mapping[str, Any] | None = None,
    text_max_length: int = 256,
) -> Path:
    """Write ``model`` (a :class:`~mammoclip.models.clip.MammoClip`) in the released layout plus our metadata.

    See the module docstring for the dict layout. ``metadata`` (config, data, seed, ...) must be plain data
    (paths and numpy values are converted). With ``tokenizer`` its files are embedded as strings, so
    :func:`load_clip` needs no external tokenizer. ``extra`` adds top-level entries (not the reserved
    ones). Written atomically (:func:`mammoclip.io.atomic_path`); returns the path.
    """
    from mammoclip.provenance import code_version

    raw = model
    while isinstance(getattr(raw, "module", None), torch.nn.Module):  # (Distributed)DataParallel
        raw = raw.module
    raw = getattr(raw, "_orig_mod", raw)  # torch.compile
    architecture = getattr(raw, "architecture", None)
    if not architecture:
        raise ValueError("model has no architecture description (build it with build_clip)")
    state = {}
    for key, value in raw.state_dict().items():
        key = _strip_wrappers(key)
        if key != POSITION_IDS_KEY:
            state[key] = value.detach().cpu()
    if torch.is_tensor(train_loss):
        train_loss = float(train_loss.detach().cpu())
    ckpt: dict[str, Any] = {
        "model": state,
        "config": upstream_config(architecture, text_max_length=text_max_length),
        "optimizer": _plain_data(optimizer_state, "optimizer_state") if optimizer_state is not None else None,
        "scheduler": _plain_data(scheduler_state, "scheduler_state") if scheduler_state is not None else None,
        "epoch": int(epoch),
        "train_loss": None if train_loss is None else float(train_loss),
        "mammoclip": {
            "format_version": FORMAT_VERSION,
            "code_version": code_version(),
            "architecture": _plain_data(architecture, "architecture"),
            "metadata": _plain_data(dict(metadata)),
            "tokenizer": _tokenizer_files(tokenizer) if tokenizer is not None else None,
        },
    }
    for key, value in (extra or {}).items():
        if key in _RESERVED:
            raise ValueError(f"extra entry {key!r} would overwrite a reserved checkpoint entry")
        ckpt[key] = _plain_data(value, f"extra[{key!r}]")

    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: torch names the archive "archive", not after tmp
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(tmp)
        if unsafe:
            raise TypeError(f"checkpoint would need non-weights-only globals {unsafe}; refusing to write it")
    return path
