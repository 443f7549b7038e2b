"""Load and validate the pipeline configuration against workflow/schemas/config.schema.yaml.

Validation fills every default from the schema, so code downstream can index any key. Errors name the key:
`train.learning_rate: 'abc' is not of type 'number'`.

The `experiments` section maps a name to partial overrides of the model, train and sample sections. They are
checked against those sections' schemas but get no defaults (what they leave out comes from the main
sections); experiment_config(config, name) gives an experiment's whole config.
"""

from __future__ import annotations

import copy
from pathlib import Path

from tinyllm.errors import ConfigError

# jsonschema and yaml are imported where used: tinyllm.model imports check_model_shape from here, and a
# machine that only trains or samples (a bare GPU image) need not have them.

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"
OVERRIDABLE_SECTIONS = ("model", "train", "sample")  # what an experiment may change


def _fill_defaults(validator_class):
    import jsonschema

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


_YAML_TYPES = {"integer": (int,), "number": (int, float), "boolean": (bool,), "null": (type(None),)}


def _coerce_strings(config: dict, schema: dict, root: dict) -> None:
    """Turn command-line strings into the schema's scalar types, in place.

    Snakemake hands nested `--config 'train={learning_rate: 1e-3}'` values over as strings; a string that
    reads as YAML of an allowed type becomes that value. Anything else is left for the validator to reject.
    Keys a schema does not name take its additionalProperties schema (an experiment's name), and
    `$ref: "#/..."` points into root.
    """
    import yaml

    for key, value in config.items():
        sub = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
        if not isinstance(sub, dict):
            continue
        while "$ref" in sub:
            sub = _resolve_pointer(root, sub["$ref"])
        if isinstance(value, dict):
            _coerce_strings(value, sub, root)
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


def _resolve_pointer(root: dict, ref: str) -> dict:
    """The subschema a local `$ref` such as "#/properties/train" points at."""
    node = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Validate config in place (filling defaults) and return it; raise ConfigError naming the key."""
    import jsonschema

    schema = schema or load_schema()
    _coerce_strings(config, schema, schema)
    # Defaults fill the main sections only: an experiment's overrides are partial, so they are checked by a
    # validator that fills nothing, against the full schema (the same subschemas, by reference).
    main_only = {**schema, "properties": {**schema["properties"], "experiments": {"default": {}}}}
    filling = _fill_defaults(jsonschema.Draft202012Validator)(main_only)
    errors = list(filling.iter_errors(config))
    plain = jsonschema.Draft202012Validator(schema)
    errors += plain.iter_errors({"experiments": config.get("experiments", {})})
    if errors:
        raise ConfigError(_schema_error_line(min(errors, key=lambda e: [str(p) for p in e.absolute_path])))
    _check_consistency(config)
    for name in config["experiments"]:
        try:
            _check_consistency(experiment_config(config, name))
        except ConfigError as err:
            raise ConfigError(f"experiments.{name}: {err}") from None
    return config


def _schema_error_line(err) -> str:  # a jsonschema.ValidationError
    path = list(err.absolute_path)
    where = ".".join(str(p) for p in path) or "config"
    if "propertyNames" in err.schema_path:
        return (
            f"{where}: {err.instance!r} is not a valid experiment name: use letters, digits, '.', '_' and "
            "'-', starting with a letter or digit"
        )
    if err.validator == "additionalProperties" and len(path) == 2 and path[0] == "experiments":
        return (
            f"{where}: {err.message}; an experiment overrides only model, train and sample (it shares the "
            "data and the tokenizer with the main run)"
        )
    return f"{where}: {err.message}"


def experiment_config(config: dict, name: str) -> dict:
    """The whole config of experiment `name`: the validated main config with its overrides on top.

    The experiments section itself is left out, so the result reads like a main config.
    """
    overrides = config["experiments"][name]
    merged = {section: values for section, values in config.items() if section != "experiments"}
    for section in OVERRIDABLE_SECTIONS:
        merged[section] = {**config[section], **overrides.get(section, {})}
    return merged


def check_model_shape(dim: int, n_heads: int, n_kv_heads: int) -> None:
    """Raise ConfigError unless heads split dim evenly, key/value heads divide them, and a head is even-sized.

    The one copy of these checks: tinyllm.model.ModelArgs calls it too, and this module stays free of torch
    because the Snakefile imports it at parse time.
    """
    if dim % n_heads:
        raise ConfigError(f"model.dim: {dim} is not divisible by model.n_heads ({n_heads})")
    if n_heads % n_kv_heads:
        raise ConfigError(f"model.n_kv_heads: {n_kv_heads} does not divide model.n_heads ({n_heads})")
    if (dim // n_heads) % 2:
        raise ConfigError(f"model.dim: head size {dim // n_heads} (dim / n_heads) must be even (rotary)")


def _check_consistency(config: dict) -> None:
    data, tok, model = config["data"], config["tokenizer"], config["model"]
    if tok["num_shards"] > data["shards"]:
        raise ConfigError(f"tokenizer.num_shards: {tok['num_shards']} exceeds data.shards ({data['shards']})")
    check_model_shape(model["dim"], model["n_heads"], model["n_kv_heads"])


def load_config(path: str | Path) -> dict:
    """Read a YAML config file and validate it."""
    import yaml

    with open(path) as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return validate_config(config)
