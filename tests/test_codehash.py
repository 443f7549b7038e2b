"""tinyllm.codehash: each rule's code hash covers exactly the code it runs."""

from __future__ import annotations

import shutil
from pathlib import Path

from tinyllm import codehash
from tinyllm.codehash import code_hash, module_closure

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"


def names(script: str) -> set[str]:
    return {p.relative_to(REPO / "workflow").as_posix() for p in module_closure(SCRIPTS / script)}


def test_the_train_rule_runs_everything_train_imports_transitively():
    closure = names("train.py")
    modules = ("train", "model", "batches", "tokenizer", "files", "checkpoint", "optim", "devices", "logs")
    for module in modules:
        assert f"lib/tinyllm/{module}.py" in closure
    assert {"scripts/train.py", "scripts/_rule.py"} <= closure
    assert "lib/tinyllm/cli.py" not in closure and "lib/tinyllm/bench.py" not in closure


def test_the_report_rules_do_not_run_the_model_or_sentencepiece():
    closure = names("report_config.py")
    assert not {"lib/tinyllm/model.py", "lib/tinyllm/tokenizer.py", "lib/tinyllm/train.py"} & closure


def test_editing_a_module_changes_the_hash_of_rules_that_run_it_only(tmp_path, monkeypatch):
    workflow = tmp_path / "workflow"
    shutil.copytree(REPO / "workflow" / "scripts", workflow / "scripts")
    shutil.copytree(REPO / "workflow" / "lib" / "tinyllm", workflow / "lib" / "tinyllm")
    monkeypatch.setattr(codehash, "LIBRARY", workflow / "lib" / "tinyllm")
    scripts = ("train.py", "sample.py", "tokenizer.py", "report_config.py")
    before = {s: code_hash(workflow / "scripts" / s) for s in scripts}

    with open(workflow / "lib" / "tinyllm" / "model.py", "a") as f:
        f.write("\n# an edit\n")
    after = {s: code_hash(workflow / "scripts" / s) for s in scripts}
    assert [s for s in scripts if after[s] != before[s]] == ["train.py", "sample.py"]

    with open(workflow / "lib" / "tinyllm" / "cli.py", "a") as f:
        f.write("\n# an edit no rule runs\n")
    assert {s: code_hash(workflow / "scripts" / s) for s in scripts} == after
