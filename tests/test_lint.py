"""Static checks of the workflow: Snakemake's linter, snakefmt, ruff, rule conventions, the size of the
library's functions and classes, the DAG pictures."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's tools, as `.venv/bin/...` or an activated venv finds them
RULEGRAPH_SVG = REPO / "docs" / "rulegraph.svg"
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]


def tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def run(cmd: list[str], cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def snakemake(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """snakemake on the default config.yaml, in an empty working directory."""
    cmd = [tool("snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path)]
    return run([*cmd, "--configfile", str(REPO / "config.yaml"), *args], cwd=tmp_path)


@pytest.mark.slow  # Snakemake parses the workflow and builds the DAG: about 2 s
def test_snakemake_lint_has_no_findings(tmp_path):
    out = snakemake(tmp_path, "--lint")
    assert out.returncode == 0, f"snakemake --lint:\n{out.stdout}\n{out.stderr}"


def test_snakefmt_check():
    out = run([tool("snakefmt"), "--check", "."])
    assert out.returncode == 0, f"snakefmt --check . (fix with `snakefmt .`):\n{out.stdout}\n{out.stderr}"


def test_ruff_check():
    out = run([tool("ruff"), "check", "."])
    assert out.returncode == 0, f"ruff check .:\n{out.stdout}\n{out.stderr}"


def rule_blocks(text: str) -> dict[str, str]:
    """rule name -> the text of its block (up to the next top-level statement)."""
    blocks = {}
    for m in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", text, flags=re.M):
        blocks[m.group(1)] = m.group(2)
    return blocks


def test_every_rule_has_log_benchmark_and_a_conda_env():
    rules = {name: body for f in RULE_FILES for name, body in rule_blocks(f.read_text()).items()}
    assert {"download", "train", "sample", "report_summary"} <= set(rules), sorted(rules)
    envs = {p.name for p in (REPO / "envs").glob("*.yaml")}
    for name, body in rules.items():
        if name == "all":  # the target rule runs nothing
            continue
        for directive in ("log", "benchmark", "conda"):
            assert re.search(rf"^\s+{directive}:", body, flags=re.M), f"rule {name} has no {directive}:"
        env = re.search(r"^\s+conda:\s*\n\s+\"(?:\.\./)*envs/([^\"]+)\"", body, flags=re.M)
        assert env and env.group(1) in envs, f"rule {name}: conda env is not one of envs/ {sorted(envs)}"


def test_every_script_sends_its_stderr_to_the_rule_log():
    scripts = sorted((REPO / "workflow" / "scripts").glob("*.py"))
    assert scripts
    # _rule.py routes stderr (Python's and native code's) into the rule's log; every script imports it first.
    rule_preamble = REPO / "workflow" / "scripts" / "_rule.py"
    assert re.search(r"^log_stderr_to\(smk\.log\[0\]\)$", rule_preamble.read_text(), flags=re.M)
    for script in scripts:
        if script != rule_preamble:
            assert re.search(r"^from _rule import smk$", script.read_text(), flags=re.M), (
                f"{script.name} does not start with `from _rule import smk`, which routes stderr into the log"
            )


# --- the library's size: no function and no class over 80 lines (issue 15) ----------------------------------

MAX_DEFINITION_LINES = 80
LIBRARY = REPO / "workflow" / "lib" / "tinyllm"


def long_definitions(folder: Path, limit: int = MAX_DEFINITION_LINES) -> list[str]:
    """'module:line name (N lines)' for every function, method and class (nested ones too) in folder's modules
    that spans more than limit lines, from its first decorator (or def/class line) to its last line."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = node.end_lineno - first + 1
                if lines > limit:
                    found.append(f"{path.relative_to(folder)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_a_definitions_lines_run_from_its_decorator_to_its_last_line(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(78))
    (tmp_path / "m.py").write_text(
        f"@staticmethod\ndef eighty():\n{body}\n\ndef seventy_nine():\n{body}\n\nclass Big:\n"
        f"    def inner():\n{body.replace('    ', '        ')}        return 1\n"
    )
    assert long_definitions(tmp_path, limit=79) == [
        "m.py:2 eighty (80 lines)", "m.py:164 Big (81 lines)", "m.py:165 inner (80 lines)"
    ]


def test_no_function_and_no_class_in_the_library_is_over_80_lines():
    too_long = long_definitions(LIBRARY)
    assert not too_long, (
        f"over {MAX_DEFINITION_LINES} lines (issue 15: split them by concern): " + "; ".join(too_long)
    )


# --- the DAG pictures ---------------------------------------------------------------------------------------


def dot_graph(dot: str) -> tuple[set[str], set[tuple[str, str]]]:
    """Rules and edges of `snakemake --rulegraph` output (nodes are numbered, labelled by rule)."""
    labels = dict(re.findall(r"^\s*(\d+)\s*\[\s*label\s*=\s*\"([^\"]+)\"", dot, flags=re.M))
    edges = {(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+)\s*->\s*(\d+)", dot, flags=re.M)}
    return set(labels.values()), edges


def svg_graph(svg: str) -> tuple[set[str], set[tuple[str, str]]]:
    """Rules and edges of a graphviz SVG: each node's <title> is its id and its <text> the label."""
    ns = {"svg": "http://www.w3.org/2000/svg"}
    root = ET.fromstring(svg)
    labels, edge_titles = {}, []
    for g in root.iter("{http://www.w3.org/2000/svg}g"):
        title = g.find("svg:title", ns)
        if title is None:
            continue
        if g.get("class") == "node":
            labels[title.text.strip()] = " ".join(t.text.strip() for t in g.findall("svg:text", ns) if t.text)
        elif g.get("class") == "edge":
            edge_titles.append(title.text.strip())
    edges = set()
    for title in edge_titles:
        a, b = re.split(r"\s*->\s*", title)
        edges.add((labels[a], labels[b]))
    return set(labels.values()), edges


@pytest.mark.slow  # Snakemake builds the DAG: about 2 s
def test_rulegraph_is_plain_dot(tmp_path):
    out = snakemake(tmp_path, "--rulegraph")
    assert out.returncode == 0, out.stderr
    # Piped into `dot`: anything printed on stdout while the Snakefile is parsed would break the graph.
    assert out.stdout.lstrip().startswith("digraph"), out.stdout[:500]
    rules, edges = dot_graph(out.stdout)
    assert {"download", "prepare", "tiny_txt", "tokenizer", "pretokenize", "train", "sample"} <= rules
    # The chain download -> prepare -> tiny.txt -> tokenizer -> .bin -> ckpt.pt -> samples.txt, drawn
    # before anything ran: the prepare checkpoint's first shards stand for the ones it will find.
    chain = ["download", "prepare", "tiny_txt", "tokenizer", "pretokenize", "train", "sample"]
    assert set(zip(chain[:-1], chain[1:], strict=True)) <= edges, edges


@pytest.mark.slow  # Snakemake builds the DAG: about 2 s
def test_committed_rulegraph_is_current(tmp_path):
    """docs/rulegraph.svg shows the rules and edges of the workflow as it is (redraw: .ci/rulegraph.sh)."""
    out = snakemake(tmp_path, "--rulegraph")
    assert out.returncode == 0, out.stderr
    now = dot_graph(out.stdout)
    committed = svg_graph(RULEGRAPH_SVG.read_text())
    assert committed == now, (
        "docs/rulegraph.svg is stale; redraw it with .ci/rulegraph.sh\n"
        f"rules only in the picture: {committed[0] - now[0]}, only in the workflow: {now[0] - committed[0]}\n"
        f"edges only in the picture: {committed[1] - now[1]}, only in the workflow: {now[1] - committed[1]}"
    )


@pytest.mark.slow  # Snakemake builds the DAG: about 2 s each
@pytest.mark.parametrize("graph", ["--dag", "--rulegraph"])
def test_graphs_render_with_graphviz(tmp_path, graph):
    if shutil.which("dot") is None:
        pytest.skip("graphviz's dot is not installed (apt-get install graphviz)")
    out = snakemake(tmp_path, graph)
    assert out.returncode == 0, out.stderr
    svg = subprocess.run(["dot", "-Tsvg"], input=out.stdout, capture_output=True, text=True, timeout=120)
    assert svg.returncode == 0, svg.stderr
    rules, _ = svg_graph(svg.stdout)
    assert "train" in " ".join(rules), rules
