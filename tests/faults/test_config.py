"""Config faults: a wrong value, an unknown key, a bad experiment, init_from at what the run itself writes, a
config file that is not strict YAML, bad data sources. Each is one line naming the file and the line, or the
key, before anything runs; the Snakemake runs here start in a folder holding a run's outputs and prove that
every one of them stays as it was.
"""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import TINY_CONFIG, copy_workflow, run_snakemake, tail, write_yaml
from corpora import plan_for
from tinyllm.config import check_config, check_config_files, load_config, read_config_file, validate_config
from tinyllm.errors import ConfigError

from .conftest import failed_run_keeping_earlier_outputs

# --- values and keys ----------------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    "config, message",
    [
        ({"train": {"learning_rate": "abc"}}, "train.learning_rate: 'abc' is not of type 'number'"),
        # Snakemake passes nested --config values as strings: the schema's types still hold.
        ({"train": {"max_iters": "2.5"}}, "train.max_iters: '2.5' is not of type 'integer'"),
        ({"train": {"compile": "1"}}, "train.compile: '1' is not of type 'boolean'"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_exactly(config, message):
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert str(info.value) == message


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


@pytest.mark.parametrize("coverage", [0.9, 0.979, 0, 1.01])
def test_character_coverage_outside_sentencepieces_bounds_is_refused_at_validation(coverage):
    from tinyllm.config import validate_config

    with pytest.raises(ConfigError, match=r"^tokenizer.character_coverage: ") as err:
        validate_config({"tokenizer": {"character_coverage": coverage}})
    assert "\n" not in str(err.value)
    lowest = validate_config({"tokenizer": {"character_coverage": 0.98}})
    assert lowest["tokenizer"]["character_coverage"] == 0.98



# --- experiments --------------------------------------------------------------------------------------------


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


NAMES = {
    "compare.png": "experiments: 'compare.png' is reserved (the comparison's output "
    "results/experiments/compare.png): choose another name",
    "main": "experiments: 'main' is reserved (the comparison's name for the main run): choose another name",
    "123": "experiments: YAML reads the name 123 as a number, not text: quote it ('123': ...)",
    "true": "experiments: YAML reads the name true as a boolean, not text: quote it ('true': ...)",
    "../up": "experiments: '../up' is not a valid experiment name: use letters, digits, '.', '_' and '-', "
    "starting with a letter or digit, at most 64 characters",
}


@pytest.mark.slow  # Snakemake: about 1 s each
@pytest.mark.parametrize("name", list(NAMES))
def test_an_unsafe_experiment_name_is_one_line(name, tmp_path):
    """compare.png used to end in a ChildIOException, 123 and true in a KeyError."""
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"experiments:\n  {name}: {{train: {{optimizer: muon}}}}\n")
    console = failed_run_keeping_earlier_outputs(tmp_path / "run", configfiles=(TINY_CONFIG, mine))
    assert f"invalid config: {NAMES[name]}" in console, tail(console)


@pytest.mark.slow
def test_experiment_names_that_one_folder_would_hold_are_refused(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("experiments:\n  Muon: {train: {optimizer: muon}}\n  muon: {}\n")
    console = failed_run_keeping_earlier_outputs(tmp_path / "run", configfiles=(TINY_CONFIG, mine))
    assert "invalid config: experiments: 'Muon' and 'muon' differ only in case" in console, tail(console)



@pytest.mark.slow
def test_a_bad_experiment_stops_snakemake_naming_it(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", {"experiments": {"v4k": {"tokenizer": {"vocab_size": 4096}}}})
    console = failed_run_keeping_earlier_outputs(tmp_path / "run", configfiles=(TINY_CONFIG, bad))
    problem = "Additional properties are not allowed ('tokenizer' was unexpected)"
    assert f"invalid config: experiments.v4k: {problem}" in console, tail(console)




# --- train.init_from at what the run itself writes (issue 18, 8) --------------------------------------------


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


OWN_OUTPUTS = {
    "own ckpt.pt": (
        {"train": {"init_from": "results/train/ckpt.pt"}},
        "train.init_from: results/train/ckpt.pt is written by the main run (results/train) itself",
    ),
    "own export": (
        {"train": {"init_from": "./results/export/model.bin"}},
        "train.init_from: ./results/export/model.bin is written by the main run (results/train) itself",
    ),
    "an experiment's own": (
        {"experiments": {"wide": {"train": {"init_from": "results/experiments/wide/best.pt"}}}},
        "experiments.wide.train.init_from: results/experiments/wide/best.pt is written by experiment wide",
    ),
    "a cycle through an experiment": (
        {
            "train": {"init_from": "results/experiments/a/ckpt.pt"},
            "experiments": {"a": {"train": {"init_from": "results/train/ckpt.pt"}}},
        },
        "train.init_from: results/experiments/a/ckpt.pt is made from this run's own output, a cycle "
        "(the main run (results/train) -> experiment a (results/experiments/a) -> the main run",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(OWN_OUTPUTS))
def test_init_from_the_runs_own_output_is_refused_and_its_outputs_stay(case, tmp_path):
    """Snakemake used to report a cycle, carry on and delete ckpt.pt, best.pt, metrics.csv and loss.png."""
    changes, line = OWN_OUTPUTS[case]
    mine = write_yaml(tmp_path / "mine.yaml", changes)
    console = failed_run_keeping_earlier_outputs(tmp_path / "run", configfiles=(TINY_CONFIG, mine))
    assert f"invalid config: {line}" in console, tail(console)
    assert "point it at a file the pipeline does not write" in console


# --- config files, read strictly: a tab, broken YAML, a key given twice (issue 18, 2 and 3) -----------------


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
    "JSON duplicate": (  # JSON with a tab between tokens, which YAML does not take
        '{"train":\t{"seed": 1}, "train": {}}',
        ": key 'train' given twice in one object; JSON keeps only the last",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_config_file_is_read_strictly_naming_the_file_and_the_line(tmp_path, case):
    text, message = BAD_FILES[case]
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_config_file(path)
    assert str(err.value) == f"{path}{message}"
    readers = (
        # An absent file is Snakemake's to report.
        lambda: check_config_files([tmp_path / "absent.yaml", path]),
        lambda: check_config([path]),  # tinyllm config: config.yaml, then the file
        lambda: load_config(path),
    )
    for read in readers:
        with pytest.raises(ConfigError) as err:
            read()
        assert str(err.value) == f"{path}{message}"


DUPLICATES = {
    "two train blocks": (
        "train:\n  max_iters: 40\nsample:\n  num_samples: 1\ntrain:\n  seed: 3\n",
        "line 5: key 'train' given twice (first on line 1)",
    ),
    "an experiment named twice": (
        "experiments:\n  muon: {train: {optimizer: muon}}\n  wsd: {train: {lr_schedule: wsd}}\n"
        "  muon: {train: {learning_rate: 1.0e-3}}\n",
        "line 4: key 'muon' given twice (first on line 2)",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DUPLICATES))
def test_a_key_given_twice_names_the_file_the_line_and_the_key(case, tmp_path):
    text, where = DUPLICATES[case]
    mine = tmp_path / "mine.yaml"
    mine.write_text(text)
    console = failed_run_keeping_earlier_outputs(tmp_path / "run", configfiles=(TINY_CONFIG, mine))
    assert f"invalid config: {mine}, {where}; YAML would keep only the last: merge or rename them" in console


BROKEN_YAML = {
    "tab": ("  seed: 1337", "\tseed: 1337", "column 1: a tab, which YAML does not allow for indenting"),
    "unclosed bracket": (
        "    - One day, Lily met a Shoggoth",
        "    - [One day, Lily met a Shoggoth",
        "expected ',' or ']', but got",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BROKEN_YAML))
def test_broken_yaml_in_config_yaml_names_the_file_and_the_line(case, tmp_path):
    good, bad, problem = BROKEN_YAML[case]
    snakefile = copy_workflow(tmp_path / "repo")
    config_yaml = tmp_path / "repo/config.yaml"
    lines = config_yaml.read_text().splitlines(keepends=True)
    line = next(i for i, text in enumerate(lines) if text.rstrip("\n") == good) + 1
    config_yaml.write_text(config_yaml.read_text().replace(good, bad, 1))
    console = failed_run_keeping_earlier_outputs(tmp_path / "run", (TINY_CONFIG,), snakefile=snakefile)
    found = re.search(rf"invalid config: {re.escape(str(config_yaml))}, line (\d+), (.*)", console)
    assert found, tail(console)
    assert problem in found[0]
    # The line named is the bad one (a tab), or where YAML noticed the unclosed bracket (the next key).
    assert int(found[1]) == line if case == "tab" else int(found[1]) > line


@pytest.mark.slow
def test_broken_yaml_in_an_override_file_is_named_by_tinyllm_config(tmp_path, capsys):
    """Snakemake reads --configfile files itself, before the workflow can say anything: its message names
    no file and no line. `tinyllm config FILE` reads them as the pipeline does and names both."""
    from tinyllm import cli

    mine = tmp_path / "mine.yaml"
    mine.write_text("train:\n  max_iters: 40\n\tseed: 3\n")
    out = run_snakemake(tmp_path, "--dry-run", configfiles=(mine,), check=False)
    assert out.returncode != 0 and not (tmp_path / "results").exists()
    assert cli.main(["config", str(mine)]) == 2
    assert capsys.readouterr().err == (
        f"tinyllm config: {mine}, line 3, column 1: a tab, which YAML does not allow for indenting: "
        "indent with spaces\n"
    )
    mine.write_text("train:\n  max_iters: 40\n  seed: 3\n")
    assert cli.main(["config", str(mine)]) == 0
    assert capsys.readouterr().out.endswith(f" + {mine}: valid\n")


# --- the repository's config.yaml is the base wherever Snakemake runs (issue 18, 1) -------------------------


@pytest.mark.slow  # Snakemake runs the report_config job: about 3 s
def test_config_yaml_is_the_base_under_another_directory_and_configfile(tmp_path):
    """`snakemake -d OTHER --configfile mine.yaml` used to drop config.yaml without a word."""
    snakefile = copy_workflow(tmp_path / "repo")
    config_yaml = tmp_path / "repo/config.yaml"
    config_yaml.write_text(config_yaml.read_text().replace("max_iters: 100000", "max_iters: 777"))
    mine = write_yaml(tmp_path / "mine.yaml", {"train": {"seed": 7}})
    other = tmp_path / "other"
    other.mkdir()
    run_snakemake(
        other, "--cores", "1", "results/report/config.yaml", configfiles=(mine,), snakefile=snakefile
    )
    used = yaml.safe_load((other / "results/report/config.yaml").read_text())
    assert used["train"]["max_iters"] == 777  # from the repository's config.yaml
    assert used["train"]["seed"] == 7  # from mine.yaml, on top



# --- data sources -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sources,data,message",
    [
        ([{"path": "x.txt", "url": "http://h/x"}], {}, r"data.sources\[0\]: give either path"),
        ([{"url": "http://127.0.0.1:/x.jsonl"}], {}, r"data.sources\[0\].url: .* no port after ':'"),
        ([{"url": "ftp://host/x.jsonl"}], {}, "unsupported URL scheme 'ftp'"),
        ([{"path": "x.txt", "sha256": "a" * 64}], {}, "only a url is checked"),
        ([{"path": "x.txt", "format": "text", "text": "body"}], {}, "plain text has no records"),
        ([{"path": "x.txt"}], {"validation": {"fraction": 1.5}}, "data.validation.fraction: 1.5 is greater"),
        ([{"path": "x.txt", "format": "csv"}], {}, r"data.sources.0.format: 'csv' is not one of"),
    ],
)
def test_bad_sources_are_refused_at_validation_naming_the_key(sources, data, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate_config({"data": {"sources": sources, **data}})
    assert "\n" not in str(err.value)


def test_names_must_be_unique_and_validation_sources_must_exist(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(ConfigError, match="two sources are named 'a'"):
        plan_for([{"path": str(tmp_path / "a.txt")}, {"path": str(tmp_path / "a.txt")}])
    with pytest.raises(ConfigError, match=r"validation.sources: no source is named 'held-out' \(the sou"):
        plan_for([{"path": str(tmp_path / "a.txt")}], validation={"sources": ["held-out"]})
    with pytest.raises(ConfigError, match="data.validation: applies to data.sources"):
        validate_config({"data": {"validation": {"fraction": 0.1}}})


def test_malformed_data_url_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^data.url: 'http://127.0.0.1:/x' has no port after ':'"):
        validate_config({"data": {"url": "http://127.0.0.1:/x"}})


@pytest.mark.parametrize(
    "text,message",
    [
        ("{title", "is not a valid template"),
        ("{}", "placeholder {} in '{}': name a field"),
        ("{title:>10}", r"placeholder {title:>10}"),
        ("{title!r}", r"placeholder {title!r}"),
        ("{0}", "placeholder {0}"),
        ("{lines[0]}", r"placeholder {lines\[0\]}"),
        ("   ", "empty; name a field"),
    ],
)
def test_malformed_template_is_refused_at_validation_naming_the_key(text, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate_config({"data": {"sources": [{"path": "x.jsonl"}, {"path": "y.jsonl", "text": text}]}})
    assert str(err.value).startswith("data.sources[1].text: ") and "\n" not in str(err.value)


