"""tinyllm.config: schema validation with defaults, experiments, config files read and merged. What a wrong
value, key or file gets is in tests/faults/test_config.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tinyllm.config import (
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


def test_load_config_reads_yaml(tmp_path):
    """(A file that is no mapping, or no strict YAML: tests/faults/test_config.py.)"""
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"data": {"shards": 2}, "tokenizer": {"num_shards": 2}}))
    assert load_config(good)["data"]["shards"] == 2
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty)["data"]["shards"] == 50


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


def test_the_reserved_experiment_names_are_the_comparisons():
    from tinyllm import paths
    from tinyllm.compare import MAIN_RUN
    from tinyllm.config import RESERVED_EXPERIMENT_NAMES

    names = {MAIN_RUN, Path(paths.COMPARE_PLOT).name, Path(paths.COMPARE_TABLE).name}
    assert set(RESERVED_EXPERIMENT_NAMES) == names


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

def test_merge_keys_and_json_are_read(tmp_path):
    """(A key given twice in JSON: tests/faults/test_config.py.)"""
    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &base {seed: 1, max_iters: 2}\ntrain:\n  <<: *base\n  seed: 3\n")
    assert read_config_file(merged)["train"] == {"seed": 3, "max_iters": 2}
    tabs = tmp_path / "tabs.json"
    tabs.write_text('{"train":\t{"seed": 1}}')
    assert read_config_file(tabs) == {"train": {"seed": 1}}
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
