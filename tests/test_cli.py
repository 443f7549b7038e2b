"""The `tinyllm` command: `tinyllm sample` (defaults, flags, one-line errors); `bench` stays wired."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from conftest import make_random_model
from tinyllm import cli
from tinyllm.generate import generate
from tinyllm.model import Transformer
from tinyllm.tokenizer import Tokenizer

# Small tensors: a second thread gains nothing and stalls badly when the other cores are busy.
pytestmark = pytest.mark.usefixtures("one_torch_thread")



def tiny_model(vocab_size: int = 512) -> Transformer:
    return make_random_model(scale=3.0, vocab_size=vocab_size)  # spread logits: greedy text varies


@pytest.fixture
def results(tmp_path, small_tokenizer):
    """A results/ folder as the pipeline leaves it: train/ckpt.pt and tok512/tok512.model."""
    folder = tmp_path / "results"
    (folder / "train").mkdir(parents=True)
    (folder / "tok512").mkdir()
    model = tiny_model()
    torch.save(
        {"model": model.state_dict(), "model_args": model.args.to_dict(), "iter_num": 5, "config": {}},
        folder / "train" / "ckpt.pt",
    )
    shutil.copyfile(small_tokenizer, folder / "tok512" / "tok512.model")
    return folder


def test_sample_greedy_prints_what_generate_decodes(results, capsys):
    argv = ["sample", "--prompt", "Once upon a time", "--checkpoint", str(results / "train" / "ckpt.pt")]
    assert cli.main([*argv, "--temperature", "0", "--max-new-tokens", "12"]) == 0
    tokenizer = Tokenizer(results / "tok512" / "tok512.model")  # found from the checkpoint's vocab size
    prompt = tokenizer.encode("Once upon a time", bos=True, eos=False)
    new = generate(tiny_model(), prompt, 12, temperature=0.0, eos_id=tokenizer.bos_id)[0]
    assert capsys.readouterr().out == tokenizer.decode(prompt + new) + "\n"


def test_sample_defaults_point_at_results_and_flags_apply(results, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompt.txt").write_text("One day, Lily met a Shoggoth\n")
    argv = ["sample", "--prompt", "FILE:prompt.txt", "--num-samples", "3", "--max-new-tokens", "6"]
    assert cli.main([*argv, "--seed", "4", "--top-k", "20", "--top-p", "0.9", "--device", "cpu"]) == 0
    first = capsys.readouterr().out
    samples = first.rstrip("\n").split("\n---\n")
    assert len(samples) == 3 and all(s.startswith("One day, Lily met a Shoggoth") for s in samples)
    assert cli.main([*argv, "--seed", "4", "--top-k", "20", "--top-p", "0.9"]) == 0
    assert capsys.readouterr().out == first  # the seed makes the draws reproducible


@pytest.mark.parametrize(
    "flag, value",
    [("--temperature", "-1"), ("--temperature", "inf"), ("--top-p", "0"), ("--top-p", "1.5"),
     ("--num-samples", "0"), ("--max-new-tokens", "x"), ("--top-k", "-3"), ("--top-k", "2.5"),
     ("--top-k", "0"), ("--seed", "-1")],
)  # fmt: skip
def test_sample_rejects_bad_knobs(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sample", flag, value])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith(f"tinyllm sample: error: argument {flag}:") and value in line
    key = flag.removeprefix("--").replace("-", "_")
    assert f"(sample.{key}: " in line  # what the config's key means, the same rule as config.yaml


def test_sample_defaults_and_values_are_the_config_schemas():
    from tinyllm.config import load_schema

    schema = load_schema()["properties"]["sample"]["properties"]
    args = cli.build_parser().parse_args(["sample"])
    for key in ("max_new_tokens", "temperature", "top_k", "top_p", "seed"):
        assert getattr(args, key) == schema[key]["default"], key
    assert args.num_samples == 1  # one story at the terminal; the rule writes sample.num_samples
    args = cli.build_parser().parse_args(["sample", "--top-k", "null", "--temperature", "0", "--seed", "7"])
    assert (args.top_k, args.temperature, args.seed) == (None, 0, 7)  # null keeps every token, as in YAML


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "tpu", "bogus"])
def test_an_unavailable_device_is_one_line(device, results, capsys):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that CUDA device")
    checkpoint = results / "train" / "ckpt.pt"
    assert cli.main(["sample", "--checkpoint", str(checkpoint), "--device", device]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("tinyllm sample: ") and repr(device) in line
    expected = ("no CUDA device", "CUDA device(s)") if device.startswith("cuda") else ("use auto, cpu",)
    assert any(words in line for words in expected)


def test_missing_checkpoint_is_a_one_line_error_without_traceback(tmp_path):
    command = [sys.executable, "-m", "tinyllm.cli", "sample", "--prompt", "hi"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "results/train/ckpt.pt" in lines[0] and "snakemake --cores all" in lines[0]


def test_mismatched_or_missing_tokenizer_is_named(results, tmp_path, capsys):
    checkpoint = results / "train" / "ckpt.pt"
    model = tiny_model(vocab_size=600)
    torch.save({"model": model.state_dict(), "model_args": model.args.to_dict(), "iter_num": 1}, checkpoint)
    tokenizer = results / "tok512" / "tok512.model"
    argv = ["sample", "--checkpoint", str(checkpoint)]
    assert cli.main([*argv, "--tokenizer", str(tokenizer)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"tokenizer {tokenizer} has 512 tokens but checkpoint {checkpoint}" in err
    assert "results/tok600/tok600.model" in err
    assert cli.main(argv) == 2  # the default for vocab 600 does not exist
    assert "no tokenizer at results/tok600/tok600.model" in capsys.readouterr().err


def test_missing_prompt_file_is_an_error(results, capsys):
    argv = [
        "sample",
        "--checkpoint",
        str(results / "train" / "ckpt.pt"),
        "--prompt",
        "FILE:/nonexistent/p.txt",
    ]
    assert cli.main(argv) == 2
    assert "prompt file /nonexistent/p.txt not found" in capsys.readouterr().err


def test_bench_refuses_a_thread_count_below_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "train", "--threads", "0"])
    assert exit_info.value.code == 2
    assert "argument --threads: must be at least 1, got 0" in capsys.readouterr().err


def test_bench_without_its_data_is_one_line(monkeypatch, tmp_path, capsys):
    from tinyllm import bench

    monkeypatch.setattr(bench, "DEFAULT_BENCH_DATA", tmp_path)
    assert cli.main(["bench", "pretokenize"]) == 2
    assert capsys.readouterr().err == (
        f"tinyllm bench: no {tmp_path / 'data01.json'}: set TINYLLM_TEST_DATA to a folder of the shards\n"
    )


def test_bench_still_parses_and_knows_the_sample_group(capsys):
    from tinyllm.bench import GROUPS

    assert "sample" in GROUPS
    args = cli.build_parser().parse_args(["bench", "sample", "--threads", "1", "--json"])
    assert (args.command, args.groups, args.threads, args.json) == ("bench", ["sample"], 1, True)
    assert cli.main(["bench", "no-such-group"]) == 2
    assert "unknown bench group 'no-such-group'" in capsys.readouterr().err


def test_sample_int8_prints_what_the_int8_decoder_writes(results, capsys):
    argv = ["sample", "--prompt", "Once upon a time", "--checkpoint", str(results / "train" / "ckpt.pt")]
    assert cli.main([*argv, "--temperature", "0", "--max-new-tokens", "12", "--int8"]) == 0
    tokenizer = Tokenizer(results / "tok512" / "tok512.model")
    prompt = tokenizer.encode("Once upon a time", bos=True, eos=False)
    new = generate(tiny_model(), prompt, 12, temperature=0.0, eos_id=tokenizer.bos_id, int8=True)[0]
    assert capsys.readouterr().out == tokenizer.decode(prompt + new) + "\n"


def test_a_foreign_checkpoint_is_one_line_pointing_at_import(tmp_path, capsys):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "other.pt")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{tmp_path / 'other.pt'} is not a tinyllm checkpoint" in line and "tinyllm import" in line
