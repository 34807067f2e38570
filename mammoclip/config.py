"""Configuration: defaults from the JSON schema, validation with messages that name the key and value.

The schema (``config/schema.yaml``) is the single home of every default. ``load_config`` fills the defaults
into a user's config, validates it, and checks that every path marked ``x-existing-path`` exists. We use the
``jsonschema`` library for validation; the error formatting is ours because the stock message of
``snakemake.utils.validate`` neither names the dotted key nor suggests the key a user probably meant.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

#: package data (config/schema.yaml in the repository is a link to it), so installed copies find it too
SCHEMA_PATH = Path(__file__).resolve().parent / "schema.yaml"


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or points to a missing path."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open() as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} does not exist") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping, got {type(data).__name__}")
    return data


def fill_defaults(instance: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``instance`` with every ``default`` of ``schema`` filled in, recursively.

    Objects that are absent but have properties with defaults are created, so a config may omit a whole
    section and still get its defaults.
    """
    result = copy.deepcopy(instance)
    _fill(result, schema, schema)
    return result


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """Merge a local ``$ref`` (``#/$defs/NAME``) into the schema that holds it."""
    ref = schema.get("$ref")
    if not ref:
        return schema
    target: Any = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    merged = dict(_resolve(target, root))
    merged.update({k: v for k, v in schema.items() if k != "$ref"})
    return merged


def _fill(instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> None:
    if not isinstance(instance, dict):
        return
    for key, subschema in schema.get("properties", {}).items():
        subschema = _resolve(subschema, root)
        if key not in instance:
            if "default" in subschema:
                instance[key] = copy.deepcopy(subschema["default"])
            elif subschema.get("type") == "object" and "properties" in subschema:
                instance[key] = {}
            else:
                continue
        _fill(instance[key], subschema, root)
    pattern_schemas = schema.get("additionalProperties")
    if isinstance(pattern_schemas, Mapping):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                _fill(value, _resolve(pattern_schemas, root), root)


_SCALAR_TYPES: dict[str, type | tuple[type, ...]] = {"integer": int, "number": (int, float), "boolean": bool}


def coerce_command_line_strings(instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> Any:
    """Turn strings into numbers/booleans where the schema expects them.

    ``snakemake --config key='{a: 1}'`` parses nested values with YAML's BaseLoader, which leaves every
    scalar a string; a string that reads (as YAML) as the type the schema asks for is converted.
    """
    schema = _resolve(schema, root)
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            sub = props.get(key, extra if isinstance(extra, Mapping) else None)
            if sub is not None:
                instance[key] = coerce_command_line_strings(value, sub, root)
        return instance
    if isinstance(instance, list) and isinstance(schema.get("items"), Mapping):
        return [coerce_command_line_strings(v, schema["items"], root) for v in instance]
    types = schema.get("type")
    types = [types] if isinstance(types, str) else (types or [])
    if isinstance(instance, str) and "string" not in types:
        try:
            parsed = yaml.safe_load(instance)
        except yaml.YAMLError:
            return instance
        for name in types:
            expected = _SCALAR_TYPES.get(name)
            if (
                expected
                and isinstance(parsed, expected)
                and not (name != "boolean" and isinstance(parsed, bool))
            ):
                return parsed
    return instance


def _dotted(path: Any) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in path]
    return ".".join(parts).replace(".[", "[") or "<top level>"


def _format_error(error: jsonschema.ValidationError) -> str:
    key = _dotted(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        lines = []
        for name in unknown:
            full = f"{key}.{name}" if error.absolute_path else name
            hint = difflib.get_close_matches(name, allowed, n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            lines.append(
                f"config key '{full}' is not a known setting{suggestion} (allowed here: {', '.join(allowed)})"
            )
        return "\n".join(lines)
    if error.validator == "required":
        return f"config key '{key}': {error.message}"
    if error.validator == "type" and error.instance is None:
        return (
            f"config key '{key}' must be set here (it is null or missing); expected {error.validator_value}"
        )
    return f"config key '{key}': value {error.instance!r} is invalid: {error.message}"


def validate(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Raise ``ConfigError`` listing every schema violation of ``config``."""
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        messages = "\n".join(f"  - {_format_error(e)}" for e in errors)
        raise ConfigError(f"invalid configuration:\n{messages}")


def _existing_path_keys(
    schema: Mapping[str, Any], root: Mapping[str, Any], prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    keys = []
    for key, sub in schema.get("properties", {}).items():
        sub = _resolve(sub, root)
        if sub.get("x-existing-path"):
            keys.append((*prefix, key))
        keys.extend(_existing_path_keys(sub, root, (*prefix, key)))
    return keys


def check_paths(config: Mapping[str, Any], schema: Mapping[str, Any], base_dir: Path) -> None:
    """Raise ``ConfigError`` for every non-null value of an ``x-existing-path`` key that does not exist."""
    problems = []
    for key in _existing_path_keys(schema, schema):
        node: Any = config
        for part in key:
            if not isinstance(node, Mapping) or part not in node:
                node = None
                break
            node = node[part]
        if node is None:
            continue
        path = Path(node) if Path(node).is_absolute() else base_dir / node
        if not path.exists():
            problems.append(f"  - config key '{'.'.join(key)}': path {str(node)!r} does not exist ({path})")
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    return read_yaml(path)


def load_config(
    config: Mapping[str, Any],
    schema: Mapping[str, Any] | None = None,
    *,
    base_dir: str | Path = ".",
) -> dict[str, Any]:
    """Fill defaults, validate and check paths; return the complete config."""
    schema = load_schema() if schema is None else schema
    filled = fill_defaults(dict(config), schema)
    coerce_command_line_strings(filled, schema, schema)
    validate(filled, schema)
    check_paths(filled, schema, Path(base_dir))
    return filled
