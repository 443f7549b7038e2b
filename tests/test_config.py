"""tinyllm.config: schema validation with defaults, and the errors a config typo gets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tinyllm.config import ConfigError, load_config, load_schema, validate_config

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
    }
    assert config["train"]["learning_rate"] == 5.0e-4
    assert config["sample"]["prompts"] == ["One day, Lily met a Shoggoth"]


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
