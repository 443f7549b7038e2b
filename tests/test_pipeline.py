"""End to end: the tiny config through the whole DAG, run as a user runs it, then what a change reruns.

One complete run per test session (the `tiny_run` fixture); every other test reads its results or asks
Snakemake, with dry runs in the same working directory, which jobs a change would schedule. Tests that
must write (the killed run) work on a copy of that directory.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_tar_gz

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
TINY_CONFIG = REPO / "tests" / "configs" / "tiny.yaml"
# The snakemake of the interpreter running the tests (the project's venv), as a user's shell would find it.
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
EXTRA_SHARD_STORIES = 300  # data02.json: the first stories of data01, so data.shards can grow to 3

pytestmark = pytest.mark.slow

# What a change of the trained model reruns: training and everything that reads its outputs.
TRAIN_ONWARD = Counter(train=1, sample=1, export_runc=1, export_hf=1, report_summary=1)
# Every config edit also rewrites the report's record of the config, and `all` depends on whatever ran.
CONFIG_RECORD = Counter(report_config=1, all=1)


@dataclass
class Run:
    workdir: Path
    config: Path  # the tiny config, data.url pointing at the test archive
    root: Path  # the temporary folder holding workdir, config and the archive
    seconds: float


def run_snakemake(
    workdir: Path,
    *args: str,
    configfiles: tuple[Path, ...] = (),
    snakefile: Path = SNAKEFILE,
    timeout: float = 300,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """snakemake --snakefile ... --directory workdir [--configfile ...] args, run from workdir.

    stdout and stderr are kept apart (--dag writes the graph to stdout). On a timeout the whole process group
    gets SIGINT, the signal Snakemake cleans up on, then SIGKILL.
    """
    cmd = [SNAKEMAKE, "--snakefile", str(snakefile), "--directory", str(workdir), *args]
    if configfiles:
        cmd += ["--configfile", *map(str, configfiles)]
    proc = subprocess.Popen(
        cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        stdout, stderr = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n{tail(stdout + stderr)}")
    result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if check and result.returncode != 0:
        pytest.fail(f"exit {result.returncode}: {' '.join(cmd)}\n{tail(stdout + stderr)}")
    return result


def stop_group(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGINT to the process group started for proc (start_new_session), SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=grace)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def tail(text: str, chars: int = 6000) -> str:
    return text[-chars:]


def scheduled_jobs(output: str) -> Counter:
    """Jobs per rule from the 'Job stats' table a dry run prints; empty when there is nothing to be done."""
    lines = [line.strip() for line in output.splitlines()]
    # A locked directory, say, prints an error and then "Nothing to be done": that is no answer.
    error = re.search(r"(?m)^\s*(Error|\w+(Exception|Error))\b.*", output)
    assert not error, f"the dry run failed: {error.group(0)}\n{tail(output)}"
    if "Job stats:" not in lines:
        assert "Nothing to be done" in output, f"no job table and not 'nothing to be done':\n{tail(output)}"
        return Counter()
    jobs = Counter()
    for line in lines[lines.index("Job stats:") + 1 :]:
        fields = line.split()
        if not fields or fields == ["job", "count"] or set(line) <= {"-", " "}:
            continue
        if fields[0] == "total":
            break
        jobs[fields[0]] = int(fields[1])
    return jobs


def job_reasons(output: str) -> dict[str, str]:
    """rule name -> the 'reason:' line of its job in a dry run's job listing (last job of a rule wins)."""
    reasons, rule = {}, None
    for line in output.splitlines():
        if m := re.match(r"\s*(?:local)?rule (\w+):\s*$", line):
            rule = m.group(1)
        elif rule and (m := re.match(r"\s*reason: (.*)$", line)):
            reasons[rule] = m.group(1)
    return reasons


def dry_run(
    workdir: Path, *configfiles: Path, snakefile: Path = SNAKEFILE, extra: tuple[str, ...] = ()
) -> tuple[Counter, str]:
    out = run_snakemake(workdir, "--dry-run", *extra, configfiles=configfiles, snakefile=snakefile)
    return scheduled_jobs(out.stdout), out.stdout


def build_archive(shards_dir: Path, dest: Path) -> Path:
    """A TinyStories-style tar.gz: data00.json, data01.json at its root, and a small data02.json."""
    stories = json.loads((shards_dir / "data01.json").read_text())[:EXTRA_SHARD_STORIES]
    members = {name: (shards_dir / name).read_bytes() for name in ("data00.json", "data01.json")}
    members["data02.json"] = json.dumps(stories, ensure_ascii=False).encode()
    return make_tar_gz(dest, members)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_tiny_config(shards_dir: Path, folder: Path) -> Path:
    """tests/configs/tiny.yaml with data.url pointing at an archive built from shards_dir, in folder."""
    archive = build_archive(shards_dir, folder / "TinyStories_test.tar.gz")
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["data"]["url"] = str(archive)
    return write_yaml(folder / "tiny.yaml", config)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, shards_dir) -> Run:
    """The tiny config run once through the whole DAG: `snakemake --cores 2 --resources gpu=1`."""
    root = tmp_path_factory.mktemp("pipeline")
    config_path = write_tiny_config(shards_dir, root)
    workdir = root / "run"
    workdir.mkdir()
    start = time.monotonic()
    run_snakemake(workdir, "--cores", "2", "--resources", "gpu=1", configfiles=(config_path,), timeout=900)
    return Run(workdir=workdir, config=config_path, root=root, seconds=time.monotonic() - start)


def override(run: Run, name: str, changes: dict) -> Path:
    """A second --configfile holding only the changed keys (Snakemake merges it over the tiny config)."""
    return write_yaml(run.root / f"override-{name}.yaml", changes)


def config_args(changes: dict) -> tuple[str, ...]:
    """The same changes as `--config section={key: value}`: Snakemake takes no dotted keys (train.lr=...)."""
    entries = [
        f"{section}={yaml.safe_dump(keys, default_flow_style=True).strip()}"
        for section, keys in changes.items()
    ]
    return ("--config", *entries)


# --- the complete run ----------------------------------------------------------------


def test_run_writes_every_output(tiny_run):
    wd = tiny_run.workdir
    expected = [
        "results/train/ckpt.pt",
        "results/train/best.pt",
        "results/train/metrics.csv",
        "results/train/loss.png",
        "results/samples.txt",
        "results/export/model.bin",
        "results/export/hf/config.json",
        "results/export/hf/model.safetensors",
        "results/export/hf/tokenizer.model",
        "results/report/summary.html",
        "results/report/config.yaml",
        "results/tok512/tok512.model",
        "results/tok512/tok512.bin",
    ]
    missing = [p for p in expected if not (wd / p).is_file() or (wd / p).stat().st_size == 0]
    assert not missing, f"missing or empty after a complete run: {missing}"
    samples = (wd / "results/samples.txt").read_text()
    assert "Once upon a time" in samples, samples[:2000]
    print(f"tiny pipeline: {tiny_run.seconds:.0f} s")


def test_every_job_wrote_its_log_and_benchmark(tiny_run):
    wd = tiny_run.workdir
    for kind in ("logs", "benchmarks"):
        rules = {
            p.parts[0] for p in (f.relative_to(wd / kind) for f in (wd / kind).rglob("*") if f.is_file())
        }
        # Folders are named by stage: export holds export_runc and export_hf, report both report rules.
        expected = {"download", "extract", "tiny_txt", "tokenizer", "pretokenize", "train", "sample"}
        expected |= {"export", "report"}
        assert expected <= rules, f"{kind}/ lacks {sorted(expected - rules)}"
    train_log = (wd / "logs/train/train.log").read_text()
    assert train_log.strip(), "the train rule's log is empty: its script must send stderr there"


def test_second_run_has_nothing_to_do(tiny_run):
    jobs, out = dry_run(tiny_run.workdir, tiny_run.config)
    assert jobs == Counter(), f"a repeated run would redo {dict(jobs)}:\n{tail(out)}"


def test_validation_stories_round_trip(tiny_run):
    from tinyllm.tokenizer import Tokenizer

    wd = tiny_run.workdir
    tok = Tokenizer(wd / "results/tok512/tok512.model")
    stories = [
        s["story"] for s in json.loads((wd / "results/data/TinyStories_all_data/data00.json").read_text())
    ]
    assert stories
    bad = [s for s in stories if tok.decode(tok.encode(s, bos=False, eos=False)) != s]
    assert not bad, (
        f"{len(bad)} of {len(stories)} validation stories do not survive encode/decode: {bad[0]!r}"
    )


def test_shard_bins_hold_the_tokenizers_ids(tiny_run):
    from tinyllm.tokenizer import Tokenizer

    wd = tiny_run.workdir
    tok = Tokenizer(wd / "results/tok512/tok512.model")
    bins = sorted((wd / "results/tok512").glob("data*.bin"))
    assert [b.name for b in bins] == ["data00.bin", "data01.bin"]
    for bin_path in bins:
        shard = wd / "results/data/TinyStories_all_data" / f"{bin_path.stem}.json"
        stories = [s["story"] for s in json.loads(shard.read_text())]
        expected = [i for s in stories for i in tok.encode(s.strip(), bos=True, eos=False)]
        got = np.fromfile(bin_path, dtype="<u2")
        assert len(got) == len(expected), (
            f"{bin_path.name}: {len(got)} tokens, the tokenizer gives {len(expected)}"
        )
        assert np.array_equal(got, np.asarray(expected, dtype=np.uint16)), f"{bin_path.name}: ids differ"


def test_summary_holds_the_final_losses(tiny_run):
    from tinyllm.report import final_losses, read_metrics

    wd = tiny_run.workdir
    summary = final_losses(read_metrics(wd / "results/train/metrics.csv"))
    assert summary["evaluated"], "metrics.csv has no evaluated row (val_loss) after training"
    page = (wd / "results/report/summary.html").read_text()
    for split in ("train", "val"):
        loss = summary[split]["nats_per_token"]
        assert loss is not None and 0 < loss < 10, f"{split} loss {loss}"
        assert f"{loss:.4f}" in page
        assert summary[split]["bits_per_byte"] is not None, f"metrics.csv has no {split} bits-per-byte column"
    config = yaml.safe_load((wd / "results/report/config.yaml").read_text())
    assert config["model"]["dim"] == 64 and config["train"]["beta2"] == 0.95  # a tiny value and a default


# --- what a change reruns ------------------------------------------------------------


# case -> (changed config keys, the jobs that must rerun besides CONFIG_RECORD, how the change is given)
RERUN_CASES = {
    "sample.temperature": ({"sample": {"temperature": 0.5}}, Counter(sample=1), "--config"),
    "train.learning_rate": ({"train": {"learning_rate": 2.0e-3}}, TRAIN_ONWARD, "--config"),
    "model.n_layers": ({"model": {"n_layers": 3}}, TRAIN_ONWARD, "--configfile"),
    "tokenizer.vocab_size": (
        {"tokenizer": {"vocab_size": 520}},
        Counter(tokenizer=1, pretokenize=2) + TRAIN_ONWARD,
        "--configfile",
    ),
    "data.shards": (
        {"data": {"shards": 3}},
        Counter(extract=1, pretokenize=1) + TRAIN_ONWARD,
        "--configfile",
    ),
    "data.shards+tokenizer.num_shards": (
        {"data": {"shards": 3}, "tokenizer": {"num_shards": 3}},
        Counter(extract=1, tiny_txt=1, tokenizer=1, pretokenize=3) + TRAIN_ONWARD,
        "--configfile",
    ),
}


@pytest.mark.parametrize("case", list(RERUN_CASES))
def test_config_change_reruns_exactly_what_it_touches(tiny_run, case):
    changes, expected, how = RERUN_CASES[case]
    if how == "--config":
        jobs, out = dry_run(tiny_run.workdir, tiny_run.config, extra=config_args(changes))
    else:
        jobs, out = dry_run(tiny_run.workdir, tiny_run.config, override(tiny_run, case, changes))
    assert jobs == expected + CONFIG_RECORD, f"{case} ({how}): scheduled {dict(jobs)}\n{tail(out)}"


def copy_workflow(dest: Path) -> Path:
    """The workflow (Snakefile, config, rules, scripts, library, envs, profiles) copied with its mtimes."""
    dest.mkdir(parents=True)
    for name in ("Snakefile", "config.yaml", "workflow", "envs", "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest / "Snakefile"


def test_library_edit_reruns_training_onward(tiny_run, tmp_path):
    snakefile = copy_workflow(tmp_path / "workflow-copy")
    jobs, out = dry_run(tiny_run.workdir, tiny_run.config, snakefile=snakefile)
    assert jobs == Counter(), f"an unchanged copy of the workflow must have nothing to do:\n{tail(out)}"

    model_py = tmp_path / "workflow-copy/workflow/lib/tinyllm/model.py"
    model_py.write_text(model_py.read_text() + "\n# edited by test_library_edit_reruns_training_onward\n")
    jobs, out = dry_run(tiny_run.workdir, tiny_run.config, snakefile=snakefile)
    assert jobs == TRAIN_ONWARD + Counter(all=1), f"after editing model.py: {dict(jobs)}\n{tail(out)}"


def processes_in(folder: Path, cmdline_part: str = "") -> list[int]:
    """Pids of processes working in folder (or below it) whose command line contains cmdline_part."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd"))
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (cwd == folder or folder in cwd.parents) and cmdline_part in cmdline:
            pids.append(int(proc.name))
    return pids


def test_killed_training_is_redone(tiny_run, tmp_path):
    """SIGKILL the run while the train script runs: the next run must redo train, not take its outputs."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run.workdir, workdir, symlinks=True)
    # Far more steps than the kill waits for, so the job is surely midway.
    longer = override(tiny_run, "killed", {"train": {"max_iters": 100000}})
    log = workdir / "logs/train/train.log"
    started = time.time()
    cmd = [SNAKEMAKE, "--snakefile", str(SNAKEFILE), "--directory", str(workdir), "--cores", "2"]
    cmd += ["--resources", "gpu=1", "--configfile", str(tiny_run.config), str(longer)]
    console = tmp_path / "killed-run.log"
    with open(console, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        # Midway: the rule's script process is alive and has written to the log Snakemake cleared for it.
        def train_running() -> bool:
            fresh_log = log.is_file() and log.stat().st_mtime > started and log.stat().st_size > 0
            return fresh_log and bool(processes_in(workdir, ".train.py"))

        deadline = time.monotonic() + 180
        while not train_running():
            assert proc.poll() is None, f"the run ended before train started:\n{tail(console.read_text())}"
            assert time.monotonic() < deadline, f"train did not start:\n{tail(console.read_text())}"
            time.sleep(0.2)
        time.sleep(1)
        assert processes_in(workdir, ".train.py"), "train ended before it could be killed"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        for pid in processes_in(workdir):  # anything the run started outside its process group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # A hard kill leaves Snakemake's lock behind; its message tells the user to unlock, as the test does.
    run_snakemake(workdir, "--unlock", configfiles=(tiny_run.config, longer))
    # The same command again redoes train and what follows, because its outputs are gone or incomplete ...
    jobs, out = dry_run(workdir, tiny_run.config, longer)
    assert jobs == TRAIN_ONWARD + CONFIG_RECORD, f"rerun after the kill: {dict(jobs)}\n{tail(out)}"
    reason = job_reasons(out).get("train", "")
    assert re.search(r"(?i)missing output|incomplete output", reason), f"train reason: {reason!r}"
    # ... and so does asking for its checkpoint under the first config: its params are the ones Snakemake
    # recorded, so only a missing or incomplete ckpt.pt can schedule train. (Without a target Snakemake
    # keeps that run's samples and exports, which are complete, and does not rebuild what they came from.)
    jobs, out = dry_run(workdir, tiny_run.config, extra=("results/train/ckpt.pt",))
    assert jobs == Counter(train=1), f"asking for ckpt.pt after the kill: {dict(jobs)}\n{tail(out)}"


# --- the report ----------------------------------------------------------------------


def report_variable(html: str, name: str):
    """The JSON value of `var <name> = ...;` in the report page's scripts."""
    # The bundled JavaScript libraries declare variables of the same names; the report's data is JSON.
    for m in reversed(list(re.finditer(rf"\bvar {name} = (?=[{{\[\"])", html))):
        try:
            return json.JSONDecoder().raw_decode(html, m.end())[0]
        except json.JSONDecodeError:
            continue
    pytest.fail(f"the report has no JSON variable {name}")


def report_files(html: str) -> dict[str, bytes]:
    """Result files embedded in a self-contained report, by file name, decoded from their data: URIs."""
    results = report_variable(html, "results")
    return {r["name"]: base64.b64decode(r["data_uri"].split(",", 1)[1]) for r in results.values()}


def test_report_has_losses_samples_dag_and_config(tiny_run, tmp_path):
    report = tmp_path / "report.html"
    run_snakemake(tiny_run.workdir, "--report", str(report), configfiles=(tiny_run.config,))
    assert report.is_file() and not zipfile.is_zipfile(report), "--report report.html must give one HTML page"
    html = report.read_text()
    files = report_files(html)
    for name in ("loss.png", "samples.txt", "summary.html", "config.yaml"):
        assert name in files, f"{name} is not in the report (found {sorted(files)})"
    wd = tiny_run.workdir
    assert files["summary.html"] == (wd / "results/report/summary.html").read_bytes()
    assert files["samples.txt"] == (wd / "results/samples.txt").read_bytes()
    assert yaml.safe_load(files["config.yaml"])["tokenizer"]["vocab_size"] == 512
    spec = report_variable(html, "rulegraph_spec")
    nodes = {v["rule"] for d in spec["data"] if d["name"] == "node-data" for v in d["values"]}
    assert nodes >= {"download", "extract", "tiny_txt", "tokenizer", "pretokenize", "train", "sample"}, nodes
    description = report_variable(html, "workflow_desc")
    assert "Tiny-LLM" in description and "512" in description, description[:500]
