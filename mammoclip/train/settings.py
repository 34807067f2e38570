"""Defaults of the training configs, read from the schema (their one home, mammoclip/schema.yaml).

A field of :class:`~mammoclip.train.pretrain.TrainConfig` or
:class:`~mammoclip.train.classify.ClassifierConfig` that is left out holds :data:`FROM_SCHEMA` until
``__post_init__`` replaces it with the schema's default (:func:`fill_from_schema`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

__all__ = ["FROM_SCHEMA", "fill_from_schema", "schema_defaults"]


class _FromSchema:
    """The value of a config field the caller left out (filled from the schema)."""

    def __repr__(self) -> str:
        return "FROM_SCHEMA"

    def __deepcopy__(self, memo: dict) -> _FromSchema:
        return self


FROM_SCHEMA: Any = _FromSchema()


@functools.lru_cache(maxsize=1)
def _filled_schema() -> dict[str, Any]:
    from mammoclip.config import fill_defaults, load_schema

    return fill_defaults({}, load_schema())


def schema_defaults(*keys: str) -> Any:
    """A copy of the default config, or of the section at ``keys`` (e.g. ``"classify", "labels", "Mass"``)."""
    node: Any = _filled_schema()
    for key in keys:
        node = node[key]
    return copy.deepcopy(node)


def fill_from_schema(config: Any, defaults: Mapping[str, Any]) -> None:
    """Set every field of the dataclass ``config`` that holds :data:`FROM_SCHEMA` to ``defaults[name]``;
    ``TypeError`` names the fields that have no default there (they must be given)."""
    missing = []
    for field in dataclasses.fields(config):
        if getattr(config, field.name) is FROM_SCHEMA:
            if field.name in defaults:
                setattr(config, field.name, copy.deepcopy(defaults[field.name]))
            else:
                missing.append(field.name)
    if missing:
        raise TypeError(f"{type(config).__name__} needs {', '.join(missing)} (no schema default)")
