"""Load and validate the pipeline configuration against workflow/schemas/config.schema.yaml.

Validation fills every default from the schema, so code downstream can index any key. Errors name the key:
`train.learning_rate: 'abc' is not of type 'number'`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or inconsistent with another."""


def _fill_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


_YAML_TYPES = {"integer": (int,), "number": (int, float), "boolean": (bool,), "null": (type(None),)}


def _coerce_strings(config: dict, schema: dict) -> None:
    """Turn command-line strings into the schema's scalar types, in place.

    Snakemake hands nested `--config 'train={learning_rate: 1e-3}'` values over as strings; a string that
    reads as YAML of an allowed type becomes that value. Anything else is left for the validator to reject.
    """
    for key, sub in schema.get("properties", {}).items():
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, dict):
            _coerce_strings(value, sub)
        elif isinstance(value, str):
            allowed = sub.get("type", [])
            allowed = [allowed] if isinstance(allowed, str) else allowed
            if "string" in allowed:
                continue
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                continue
            if isinstance(parsed, str) and "number" in allowed:
                try:  # PyYAML reads 1e-3 (no dot) as a string
                    parsed = float(parsed)
                except ValueError:
                    pass
            types = tuple(t for name in allowed for t in _YAML_TYPES.get(name, ()))
            if types and isinstance(parsed, types) and not (isinstance(parsed, bool) and bool not in types):
                config[key] = parsed


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Validate config in place (filling defaults) and return it; raise ConfigError naming the key."""
    schema = schema or load_schema()
    _coerce_strings(config, schema)
    validator = _fill_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "config"
        raise ConfigError(f"{where}: {err.message}")
    _check_consistency(config)
    return config


def _check_consistency(config: dict) -> None:
    data, tok, model = config["data"], config["tokenizer"], config["model"]
    if tok["num_shards"] > data["shards"]:
        raise ConfigError(f"tokenizer.num_shards: {tok['num_shards']} exceeds data.shards ({data['shards']})")
    if model["dim"] % model["n_heads"]:
        raise ConfigError(f"model.dim: {model['dim']} is not divisible by model.n_heads ({model['n_heads']})")
    if model["n_heads"] % model["n_kv_heads"]:
        raise ConfigError(
            f"model.n_kv_heads: {model['n_kv_heads']} does not divide model.n_heads ({model['n_heads']})"
        )
    if (model["dim"] // model["n_heads"]) % 2:
        raise ConfigError(f"model.dim: head size {model['dim'] // model['n_heads']} must be even (rotary)")


def load_config(path: str | Path) -> dict:
    """Read a YAML config file and validate it."""
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return validate_config(config)
