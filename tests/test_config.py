"""tinyllm.config: schema validation with defaults, and the errors a config typo gets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tinyllm.config import (
    check_model_shape,
    experiment_config,
    load_config,
    load_schema,
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
