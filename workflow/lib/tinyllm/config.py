"""Load and validate the pipeline configuration against workflow/schemas/config.schema.yaml.

Validation fills every default from the schema, so code downstream can index any key. Errors name the key:
`train.learning_rate: 'abc' is not of type 'number'`.

The `experiments` section maps a name to partial overrides of the model, train and sample sections. They are
checked against those sections' schemas but get no defaults (what they leave out comes from the main
sections); experiment_config(config, name) gives an experiment's whole config.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from tinyllm import paths
from tinyllm.errors import ConfigError
from tinyllm.sources import check_data_section

# jsonschema and yaml are imported where used: tinyllm.model imports check_model_shape from here, and a
# machine that only trains or samples (a bare GPU image) need not have them.

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"
OVERRIDABLE_SECTIONS = ("model", "train", "sample")  # what an experiment may change
# Names an experiment may not take: the comparison's outputs share results/experiments/ with the experiments'
# folders, and the comparison calls the main run "main" (tinyllm.compare.MAIN_RUN).
RESERVED_EXPERIMENT_NAMES = ("main", Path(paths.COMPARE_PLOT).name, Path(paths.COMPARE_TABLE).name)


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
    check_data_section(config["data"])
    _check_experiment_names(config["experiments"])
    for name in config["experiments"]:
        try:
            _check_consistency(experiment_config(config, name))
        except ConfigError as err:
            raise ConfigError(f"experiments.{name}: {err}") from None
    _check_init_from(config)
    return config


def _check_experiment_names(experiments: dict) -> None:
    """No name of the comparison's own outputs, and no two names one folder on a case-blind filesystem."""
    seen = {}
    for name in experiments:
        folded = name.casefold()
        if folded in RESERVED_EXPERIMENT_NAMES:
            what = "the comparison's name for the main run"
            if folded != "main":
                what = f"the comparison's output {paths.EXPERIMENTS_DIR}/{folded}"
            raise ConfigError(f"experiments: {name!r} is reserved ({what}): choose another name")
        if folded in seen:
            raise ConfigError(
                f"experiments: {seen[folded]!r} and {name!r} differ only in case, and would share one folder "
                "on a case-insensitive filesystem (macOS, Windows): rename one"
            )
        seen[folded] = name


def _schema_error_line(err) -> str:  # a jsonschema.ValidationError
    path = list(err.absolute_path)
    where = ".".join(str(p) for p in path) or "config"
    if "propertyNames" in err.schema_path:
        if not isinstance(err.instance, str):  # YAML read an unquoted 123, 1.5, true or null as a value
            kind = {bool: "a boolean", type(None): "null"}.get(type(err.instance), "a number")
            text = "null" if err.instance is None else str(err.instance).lower()  # true, 123, 1.5
            return f"{where}: YAML reads the name {text} as {kind}, not text: quote it ('{text}': ...)"
        return (
            f"{where}: {err.instance!r} is not a valid experiment name: use letters, digits, '.', '_' and "
            f"'-', starting with a letter or digit, at most {err.schema.get('maxLength', '?')} characters"
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
    if not data["sources"] and tok["num_shards"] > data["shards"]:
        raise ConfigError(f"tokenizer.num_shards: {tok['num_shards']} exceeds data.shards ({data['shards']})")
    check_model_shape(model["dim"], model["n_heads"], model["n_kv_heads"])


# --- train.init_from: never a run's own output ----------------------------------------------------------


def _run_label(run: str | None) -> str:
    return f"the main run ({paths.TRAIN_DIR})" if run is None else f"experiment {run} ({paths.run_dir(run)})"


def _run_outputs(run: str | None) -> list[str]:
    """What a run's training writes, and what the pipeline makes from it: an init_from there is a cycle."""
    made_from_every_run = [paths.COMPARE_PLOT, paths.COMPARE_TABLE]
    if run is None:
        return [paths.TRAIN_DIR, paths.SAMPLES, paths.EXPORT_DIR, paths.REPORT_DIR, *made_from_every_run]
    return [paths.run_dir(run), *made_from_every_run]


def _owner(value: str, runs) -> str | None | bool:
    """The run whose outputs hold path `value` (None: the main run), or False where none does."""
    where = Path(value).resolve()
    for run in runs:
        for output in _run_outputs(run):
            output = Path(output).resolve()
            if where == output or output in where.parents:
                return run
    return False


def _check_init_from(config: dict) -> None:
    """Refuse a train.init_from that the pipeline makes from the run itself (its own ckpt.pt, its exports),
    directly or through other runs: Snakemake would see a cycle, delete the run's outputs and fail.

    Paths are read as Snakemake reads them, relative to the working directory.
    """
    runs = [None, *config["experiments"]]
    key_of, start_of = {}, {}
    for run in runs:
        if run is None:
            key_of[run], start_of[run] = "train.init_from", config["train"]["init_from"]
        elif "init_from" in config["experiments"][run].get("train", {}):
            key_of[run] = f"experiments.{run}.train.init_from"
            start_of[run] = config["experiments"][run]["train"]["init_from"]
        else:  # inherited from the main run
            key_of[run] = f"train.init_from (which experiment {run} inherits)"
            start_of[run] = config["train"]["init_from"]
    starts_from = {run: _owner(start_of[run], runs) if start_of[run] else False for run in runs}
    for run in runs:
        chain, current = [run], starts_from[run]
        while current is not False and current not in chain:
            chain.append(current)
            current = starts_from[current]
        if current is not run:
            continue
        fix = f"point it at a file the pipeline does not write, e.g. a copy (cp {start_of[run]} init.pt)"
        if len(chain) == 1:
            raise ConfigError(
                f"{key_of[run]}: {start_of[run]} is written by {_run_label(run)} itself, which would delete "
                f"it before starting from it: {fix}"
            )
        through = " -> ".join(_run_label(r) for r in [*chain, run])
        raise ConfigError(
            f"{key_of[run]}: {start_of[run]} is made from this run's own output, a cycle ({through}): {fix}"
        )


# --- config files -------------------------------------------------------------------------------------------


def read_config_file(path: str | os.PathLike) -> dict:
    """A YAML (or JSON) config file as a mapping, read strictly.

    A syntax error or a tab is one line naming the file, the line and the column; a key given twice in one
    mapping (two `train:` blocks, an experiment named twice) is refused naming both lines, where YAML
    parsers keep the last one without a word.
    """
    import json

    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    try:
        config = yaml.load(text, Loader=_strict_loader(path))
    except yaml.MarkedYAMLError as err:
        try:  # JSON that YAML does not take (tabs between tokens): Snakemake reads JSON first
            config = json.loads(text, object_pairs_hook=_json_pairs(path))
        except ValueError:
            raise ConfigError(_yaml_error_line(path, err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data:, train:, ...)")
    return config


def check_config_files(config_files) -> None:
    """read_config_file each config file that exists (Snakemake reports a missing one itself)."""
    for path in config_files:
        if Path(path).is_file():
            read_config_file(path)


def _yaml_error_line(path: Path, err) -> str:
    mark = err.problem_mark or err.context_mark
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
    problem = err.problem or err.context or "not valid YAML"
    if "'\\t'" in problem:
        problem = "a tab, which YAML does not allow for indenting: indent with spaces"
    elif err.context and err.context_mark and mark is not err.context_mark:
        problem += f", {err.context} begun on line {err.context_mark.line + 1}"
    return f"{where}: {problem}"


def _strict_loader(path: Path):
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses a key given twice in one mapping (merge keys `<<` excepted)."""

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                first_line = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        line = first_line.setdefault(key, key_node.start_mark.line + 1)
                    except TypeError:  # an unhashable key: SafeLoader says so itself
                        continue
                    if line != key_node.start_mark.line + 1:
                        raise ConfigError(
                            f"{path}, line {key_node.start_mark.line + 1}: key {key!r} given twice (first on "
                            f"line {line}); YAML would keep only the last: merge or rename them"
                        )
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _json_pairs(path: Path):
    def pairs(items):
        mapping = {}
        for key, value in items:
            if key in mapping:
                raise ConfigError(f"{path}: key {key!r} given twice in one object; JSON keeps only the last")
            mapping[key] = value
        return mapping

    return pairs


REPOSITORY_CONFIG = Path(__file__).resolve().parents[3] / "config.yaml"  # the pipeline's base config


def check_config(config_files, base: str | os.PathLike | None = REPOSITORY_CONFIG) -> dict:
    """The config the pipeline would run with: base (the repository's config.yaml), then each file merged on
    top as `snakemake --configfile` merges them, every file read strictly and the result validated.

    `tinyllm config FILE...` runs it: Snakemake reads --configfile files itself before the workflow starts,
    and for a syntax error or a tab says only "Config file is not valid JSON or YAML".
    """
    merged = {}
    for path in [*([base] if base is not None and Path(base).is_file() else []), *config_files]:
        _merge(merged, read_config_file(path))
    return validate_config(merged)


def _merge(config: dict, overrides: dict) -> None:
    """overrides into config, mappings key by key, as Snakemake's update_config does."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _merge(config[key], value)
        else:
            config[key] = copy.deepcopy(value)


def load_config(path: str | Path) -> dict:
    """Read a YAML config file (read_config_file: strictly) and validate it."""
    return validate_config(read_config_file(path))
