"""The README's promises: its two set-up commands, and a config reference that covers every knob."""

from __future__ import annotations

import re

from conftest import REPO
from tinyllm.config import load_schema

README = (REPO / "README.md").read_text()


def quickstart_commands() -> list[str]:
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:sh|bash)\n(.+?)\n```", section, flags=re.S)


def test_quickstart_has_exactly_an_install_and_run_command_and_a_test_command():
    commands = quickstart_commands()
    assert len(commands) == 2, commands
    pipeline, tests = commands
    assert "snakemake --cores all --resources gpu=1" in pipeline
    assert "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    test_command = quickstart_commands()[1].strip()
    assert any(line.startswith(test_command) for line in ci_lines), test_command


def test_config_reference_documents_every_key():
    reference = README.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    schema = load_schema()
    missing = [
        f"{section}.{key}"
        for section, spec in schema["properties"].items()
        for key in spec.get("properties", {})
        if f"`{section}.{key}`" not in reference
    ]
    # A section of named entries rather than fixed keys (experiments) is documented as a whole.
    missing += [
        section
        for section, spec in schema["properties"].items()
        if "properties" not in spec and not re.search(rf"`{section}(\.[^`]*)?`", reference)
    ]
    assert not missing, f"README's configuration reference lacks {missing}"
