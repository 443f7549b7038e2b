"""tinyllm.config: schema validation with defaults, and the errors a config typo gets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from tinyllm.config import (
    check_config_files,
    check_model_shape,
    experiment_config,
    load_config,
    load_schema,
    read_config_file,
    validate_config,
)
from tinyllm.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_empty_config_gets_every_default():
    config = validate_config({})
    assert config["data"]["shards"] == 50
    assert config["data"]["sha256"] is None
    assert config["tokenizer"] == {
        "vocab_size": 4096,
        "num_shards": 20,
        "input_sentence_size": 200000,
        "shuffle_input_sentence": True,
        "character_coverage": None,  # auto: from the text's alphabet
    }
    assert config["train"]["learning_rate"] == 5.0e-4
    assert config["sample"]["prompts"] == ["One day, Lily met a Shoggoth"]
    assert config["experiments"] == {}
    assert (config["train"]["optimizer"], config["train"]["lr_schedule"]) == ("adamw", "cosine")


def test_partial_section_keeps_given_values_and_fills_the_rest():
    config = validate_config({"tokenizer": {"vocab_size": 512}, "train": {}})
    assert config["tokenizer"]["vocab_size"] == 512
    assert config["tokenizer"]["num_shards"] == 20
    assert config["train"]["batch_size"] == 8 and config["model"]["dim"] == 288


def test_repository_config_yaml_is_valid_and_matches_schema_defaults():
    """config.yaml documents the defaults; the schema's must agree with it."""
    from_file = load_config(REPO / "config.yaml")
    assert from_file == validate_config({})


def test_the_tests_tiny_config_trains_the_tests_one_model_shape():
    """tests/configs/tiny.yaml, the end-to-end runs' config, holds conftest's TINY_MODEL."""
    from conftest import TINY_CONFIG, TINY_MODEL, TINY_MODEL_SECTION

    tiny = yaml.safe_load(TINY_CONFIG.read_text())
    assert tiny["model"] == TINY_MODEL_SECTION
    assert tiny["tokenizer"]["vocab_size"] == TINY_MODEL["vocab_size"]


def test_defaults_are_copies_not_shared():
    first, second = validate_config({}), validate_config({})
    first["sample"]["prompts"].append("another")
    assert second["sample"]["prompts"] == ["One day, Lily met a Shoggoth"]
    assert load_schema()["properties"]["sample"]["properties"]["prompts"]["default"] == [
        "One day, Lily met a Shoggoth"
    ]


@pytest.mark.parametrize(
    "config,message",
    [
        ({"train": {"learning_rate": "abc"}}, "train.learning_rate: 'abc' is not of type 'number'"),
        ({"data": {"shards": "two"}}, "data.shards: 'two' is not of type 'integer'"),
        (
            {"tokenizer": {"shuffle_input_sentence": "maybe"}},
            "tokenizer.shuffle_input_sentence: 'maybe' is not",
        ),
        ({"data": {"sha256": "abc"}}, "data.sha256: 'abc' does not match"),
        ({"tokenizer": {"vocab_size": 70000}}, "tokenizer.vocab_size: 70000 is greater than the maximum"),
        ({"train": {"dtype": "float8"}}, "train.dtype: 'float8' is not one of"),
    ],
    ids=["number", "integer", "boolean", "pattern", "maximum", "enum"],
)
def test_wrong_value_names_the_key(config, message):
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert str(err.value).startswith(message)


def test_wrong_type_message_is_exact():
    with pytest.raises(ConfigError) as err:
        validate_config({"train": {"learning_rate": "abc"}})
    assert str(err.value) == "train.learning_rate: 'abc' is not of type 'number'"


@pytest.mark.parametrize(
    "config,key",
    [({"trian": {}}, "trian"), ({"train": {"learning_rat": 0.1}}, "learning_rat")],
    ids=["section", "key"],
)
def test_unknown_key_is_rejected(config, key):
    with pytest.raises(ConfigError, match=f"'{key}' was unexpected"):
        validate_config(config)


def test_tokenizer_shards_beyond_data_shards_are_rejected():
    with pytest.raises(ConfigError, match=r"tokenizer.num_shards: 5 exceeds data.shards \(4\)"):
        validate_config({"data": {"shards": 4}, "tokenizer": {"num_shards": 5}})
    assert (
        validate_config({"data": {"shards": 4}, "tokenizer": {"num_shards": 4}})["tokenizer"]["num_shards"]
        == 4
    )


def test_model_shape_consistency_is_checked():
    with pytest.raises(ConfigError, match="model.dim: 100 is not divisible by model.n_heads"):
        validate_config({"model": {"dim": 100, "n_heads": 8}})
    with pytest.raises(ConfigError, match="model.n_kv_heads: 3 does not divide"):
        validate_config({"model": {"n_kv_heads": 3}})
    with pytest.raises(ConfigError, match=r"model.dim: head size 9 \(dim / n_heads\) must be even"):
        validate_config({"model": {"dim": 72, "n_heads": 8, "n_kv_heads": 8}})


def test_model_shape_check_is_one_function_that_the_model_shares():
    """ModelArgs runs the config's check (model.py imports it), so both say the same thing."""
    from tinyllm.model import ModelArgs

    check_model_shape(288, 6, 2)
    for dim, n_heads, n_kv_heads in [(100, 8, 4), (288, 8, 3), (72, 8, 8)]:
        with pytest.raises(ConfigError) as from_config:
            check_model_shape(dim, n_heads, n_kv_heads)
        with pytest.raises(ConfigError) as from_model:
            ModelArgs(dim=dim, n_heads=n_heads, n_kv_heads=n_kv_heads)
        assert str(from_model.value) == str(from_config.value)


def test_load_config_reads_yaml_and_refuses_a_non_mapping(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"data": {"shards": 2}, "tokenizer": {"num_shards": 2}}))
    assert load_config(good)["data"]["shards"] == 2
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty)["data"]["shards"] == 50
    listed = tmp_path / "list.yaml"
    listed.write_text("- data\n- train\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(listed)


def test_command_line_strings_become_the_schema_types():
    """Snakemake passes nested --config values as strings: `train={learning_rate: 1e-3, max_iters: 20}`."""
    config = validate_config(
        {
            "train": {"learning_rate": "1e-3", "max_iters": "20", "decay_lr": "false"},
            "sample": {"top_k": "null"},
        }
    )
    assert config["train"]["learning_rate"] == 1e-3
    assert config["train"]["max_iters"] == 20 and config["train"]["decay_lr"] is False
    assert config["sample"]["top_k"] is None


@pytest.mark.parametrize(
    "config, message",
    [
        ({"train": {"max_iters": "2.5"}}, "train.max_iters: '2.5' is not of type 'integer'"),
        ({"train": {"compile": "1"}}, "train.compile: '1' is not of type 'boolean'"),
    ],
)
def test_command_line_strings_of_the_wrong_type_are_still_refused(config, message):
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert str(info.value) == message


# --- experiments -------------------------------------------------------------------------------------------


def test_experiments_are_partial_overrides_merged_over_the_main_sections():
    config = validate_config(
        {
            "train": {"learning_rate": 1e-3, "max_iters": 50},
            "experiments": {
                "lr3e-3": {"train": {"learning_rate": "3e-3"}},  # as --config hands it over
                "muon.wide_2": {
                    "train": {"optimizer": "muon"},
                    "model": {"dim": 384},
                    "sample": {"top_k": None},
                },
            },
        }
    )
    # The overrides stay as given: no defaults filled in, or they would mask the main sections' values.
    assert config["experiments"] == {
        "lr3e-3": {"train": {"learning_rate": 3e-3}},
        "muon.wide_2": {"train": {"optimizer": "muon"}, "model": {"dim": 384}, "sample": {"top_k": None}},
    }
    faster = experiment_config(config, "lr3e-3")
    assert faster["train"] == {**config["train"], "learning_rate": 3e-3}
    assert faster["model"] == config["model"] and faster["tokenizer"] == config["tokenizer"]
    assert "experiments" not in faster
    wide = experiment_config(config, "muon.wide_2")
    assert wide["train"]["optimizer"] == "muon" and wide["train"]["max_iters"] == 50
    assert wide["model"] == {**config["model"], "dim": 384} and wide["sample"]["top_k"] is None
    assert config["train"]["learning_rate"] == 1e-3 and config["model"]["dim"] == 288  # main run untouched


@pytest.mark.parametrize(
    "experiments, message",
    [
        (
            {"lr": {"train": {"learning_rat": 0.1}}},
            "experiments.lr.train: Additional properties are not allowed ('learning_rat' was unexpected)",
        ),
        (
            {"lr": {"train": {"learning_rate": "fast"}}},
            "experiments.lr.train.learning_rate: 'fast' is not of",
        ),
        ({"muon": {"train": {"optimizer": "sgd"}}}, "experiments.muon.train.optimizer: 'sgd' is not one of"),
        (
            {"v4k": {"tokenizer": {"vocab_size": 4096}}},
            "experiments.v4k: Additional properties are not allowed ('tokenizer' was unexpected); "
            "an experiment overrides only model, train and sample",
        ),
        ({"my run": {}}, "experiments: 'my run' is not a valid experiment name: use letters, digits"),
        ({"../up": {}}, "experiments: '../up' is not a valid experiment name"),
        (
            {"wide": {"model": {"dim": 100}}},
            "experiments.wide: model.dim: 100 is not divisible by model.n_heads",
        ),
        ({"lr": [{"train": {}}]}, "experiments.lr: [{'train': {}}] is not of type 'object'"),
    ],
    ids=["unknown-key", "type", "enum", "tokenizer", "space", "path", "shape-of-the-merge", "not-a-mapping"],
)
def test_a_bad_experiment_is_one_line_naming_it_and_the_key(experiments, message):
    with pytest.raises(ConfigError) as err:
        validate_config({"experiments": experiments})
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_experiment_names_must_be_text_unreserved_and_distinct_in_any_case():
    for name in ("main", "Main", "compare.png", "COMPARE.MD"):
        with pytest.raises(ConfigError, match=rf"experiments: '{re.escape(name)}' is reserved"):
            validate_config({"experiments": {name: {}}})
    for name, text, kind in [
        (123, "123", "a number"),
        (1.5, "1.5", "a number"),
        (False, "false", "a boolean"),
    ]:
        with pytest.raises(ConfigError) as err:
            validate_config({"experiments": {name: {}}})
        expected = f"experiments: YAML reads the name {text} as {kind}, not text: quote it ('{text}': ...)"
        assert str(err.value) == expected
    with pytest.raises(ConfigError, match="at most 64 characters"):
        validate_config({"experiments": {"x" * 65: {}}})
    with pytest.raises(ConfigError, match="'Wide' and 'wide' differ only in case"):
        validate_config({"experiments": {"Wide": {}, "wide": {}}})
    fine = validate_config({"experiments": {"x" * 64: {}, "123": {}}})
    assert list(fine["experiments"]) == ["x" * 64, "123"]


def test_the_reserved_experiment_names_are_the_comparisons():
    from tinyllm import paths
    from tinyllm.compare import MAIN_RUN
    from tinyllm.config import RESERVED_EXPERIMENT_NAMES

    names = {MAIN_RUN, Path(paths.COMPARE_PLOT).name, Path(paths.COMPARE_TABLE).name}
    assert set(RESERVED_EXPERIMENT_NAMES) == names


OWN_OUTPUT_CASES = {
    "own best.pt": (
        {"init_from": "results/train/best.pt"},
        {},
        "train.init_from: results/train/best.pt is written by the main run",
    ),
    "made from it": (
        {"init_from": "results/samples.txt"},
        {},
        "train.init_from: results/samples.txt is written by the main run",
    ),
    "inherited by an experiment": (
        {"init_from": "results/experiments/a/ckpt.pt"},
        {"a": {}},
        "train.init_from (which experiment a inherits): results/experiments/a/ckpt.pt is written by "
        "experiment a",
    ),
    "two experiments": (
        {},
        {
            "a": {"train": {"init_from": "results/experiments/b/ckpt.pt"}},
            "b": {"train": {"init_from": "results/experiments/a/ckpt.pt"}},
        },
        "experiments.a.train.init_from: results/experiments/b/ckpt.pt is made from this run's own output, "
        "a cycle (experiment a (results/experiments/a) -> experiment b (results/experiments/b) -> "
        "experiment a",
    ),
}


@pytest.mark.parametrize("case", list(OWN_OUTPUT_CASES))
def test_init_from_what_the_run_itself_makes_is_refused(case):
    train, experiments, message = OWN_OUTPUT_CASES[case]
    with pytest.raises(ConfigError) as err:
        validate_config({"train": train, "experiments": experiments})
    assert str(err.value).startswith(message), str(err.value)


def test_init_from_another_runs_output_or_a_copy_is_allowed(tmp_path):
    fine = [
        ({"init_from": str(tmp_path / "init.pt")}, {}),
        ({}, {"a": {"train": {"init_from": "results/train/ckpt.pt"}}}),  # fine-tune the main run's model
        ({"init_from": "results/experiments/a/ckpt.pt"}, {"a": {"train": {"init_from": None}}}),
        ({"init_from": "results/train_old/ckpt.pt"}, {}),  # a folder that only starts alike
    ]
    for train, experiments in fine:
        validate_config({"train": train, "experiments": experiments})


# --- config files, read strictly ---------------------------------------------------------------------------

BAD_FILES = {
    "tab": (
        "train:\n\tseed: 1\n",
        ", line 2, column 1: a tab, which YAML does not allow for indenting: indent with spaces",
    ),
    "unclosed": (
        "train: [1\n",
        ", line 2, column 1: expected ',' or ']', but got '<stream end>', while parsing a flow sequence "
        "begun on line 1",
    ),
    "colon": ("a: b: c\n", ", line 1, column 5: mapping values are not allowed here"),
    "nested duplicate": (
        "train:\n  seed: 1\n  seed: 2\n",
        ", line 3: key 'seed' given twice (first on line 2); YAML would keep only the last: merge or "
        "rename them",
    ),
    "list": ("- data\n", ": the top level must be a mapping of sections (data:, train:, ...)"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_config_file_is_read_strictly_naming_the_file_and_the_line(tmp_path, case):
    text, message = BAD_FILES[case]
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_config_file(path)
    assert str(err.value) == f"{path}{message}"
    with pytest.raises(ConfigError):
        check_config_files([tmp_path / "absent.yaml", path])  # an absent file is Snakemake's to report
    with pytest.raises(ConfigError):
        load_config(path)


def test_merge_keys_and_json_are_read_and_a_json_duplicate_refused(tmp_path):
    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &base {seed: 1, max_iters: 2}\ntrain:\n  <<: *base\n  seed: 3\n")
    assert read_config_file(merged)["train"] == {"seed": 3, "max_iters": 2}
    tabs = tmp_path / "tabs.json"
    tabs.write_text('{"train":\t{"seed": 1}}')
    assert read_config_file(tabs) == {"train": {"seed": 1}}
    twice = tmp_path / "twice.json"
    twice.write_text('{"train":\t{"seed": 1}, "train": {}}')
    with pytest.raises(ConfigError, match="key 'train' given twice in one object"):
        read_config_file(twice)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert read_config_file(empty) == {}


def test_check_config_merges_the_files_over_config_yaml_as_snakemake_does(tmp_path):
    from tinyllm.config import REPOSITORY_CONFIG, check_config

    first = write_file(tmp_path / "a.yaml", "train:\n  max_iters: 40\n  seed: 2\nexperiments:\n  a: {}\n")
    second = write_file(tmp_path / "b.yaml", "train:\n  seed: 3\nexperiments:\n  b: {train: {seed: 4}}\n")
    config = check_config([first, second])
    assert (config["train"]["max_iters"], config["train"]["seed"]) == (40, 3)
    assert config["experiments"] == {"a": {}, "b": {"train": {"seed": 4}}}
    assert check_config([]) == load_config(REPOSITORY_CONFIG)
    with pytest.raises(ConfigError, match=r"b.yaml, line 3: key 'seed' given twice \(first on line 2\)"):
        check_config([first, write_file(second, "train:\n  seed: 3\n  seed: 4\n")])


def write_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
