"""Model faults: a file that is no model, a run.c file cut short, a Hugging Face folder tinyllm's model cannot
hold, weights that do not fit their shape; `tinyllm sample` given a foreign format or a damaged tokenizer;
`tinyllm import` of a bad file or into a folder. Each is one line naming the file and what to do; nothing is
written, and what was there stays.
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import make_random_model
from tinyllm import cli
from tinyllm.checkpoint import save_checkpoint, weights_checkpoint
from tinyllm.errors import CheckpointError
from tinyllm.export_hf import export_hf
from tinyllm.export_runc import export_runc
from tinyllm.foreign import load_foreign_checkpoint

from .conftest import tree_digest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# --- reading a model: tinyllm.foreign --------------------------------------------------------------------


def test_a_model_with_its_own_output_layer_is_refused(tmp_path):
    runc = export_runc(make_random_model(seed=6, tied=False), tmp_path / "model.bin")
    with pytest.raises(CheckpointError, match="output layer of its own"):
        load_foreign_checkpoint(runc)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00" * 10, "neither a PyTorch checkpoint nor a run.c model"),
        (b"\x32\x34\x6b\x61" + b"\x00" * 200, "version 1 or 2"),
    ],
)
def test_files_that_are_no_model_are_named(tmp_path, content, message):
    (tmp_path / "x.bin").write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        load_foreign_checkpoint(tmp_path / "x.bin")
    assert "\n" not in str(err.value) and str(tmp_path / "x.bin") in str(err.value)


def test_a_truncated_run_c_file_is_refused(tmp_path):
    runc = export_runc(make_random_model(), tmp_path / "model.bin")
    runc.write_bytes(runc.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match="does not fit the run.c header"):
        load_foreign_checkpoint(runc)


def test_hugging_face_folders_it_cannot_hold_are_named(tmp_path, small_tokenizer):
    folder = export_hf(make_random_model(), small_tokenizer, tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rope_theta": 500000.0}))
    with pytest.raises(CheckpointError, match="rope_theta 500000.0; tinyllm's model has 10000.0"):
        load_foreign_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="neither model.safetensors nor pytorch_model.bin"):
        load_foreign_checkpoint(folder)
    shutil.rmtree(folder)
    folder.mkdir()
    with pytest.raises(CheckpointError, match="without config.json"):
        load_foreign_checkpoint(folder)


def test_weights_that_do_not_fit_the_model_args_are_named(tmp_path):
    model = make_random_model()
    checkpoint = weights_checkpoint(model, config=None)
    checkpoint["model_args"]["dim"] = 32
    save_checkpoint(checkpoint, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"tok_embeddings.weight of shape \(512, 64\)"):
        load_foreign_checkpoint(tmp_path / "c.pt")


# --- the commands: tinyllm sample and tinyllm import (issue 18, 11 and 12) --------------------------------


@pytest.mark.parametrize("kind", ["run.c model.bin", "Hugging Face folder"])
def test_sample_given_a_foreign_model_says_tinyllm_import_converts_it(
    kind, small_tokenizer, tmp_path, capsys
):
    """Used to be a torch mmap error (model.bin) or "run snakemake first" (a folder)."""
    from tinyllm import cli
    from tinyllm.export_hf import export_hf
    from tinyllm.export_runc import export_runc

    model = make_random_model()
    if kind == "run.c model.bin":
        source, words = export_runc(model, tmp_path / "model.bin"), "a llama2.c run.c model.bin"
    else:
        source, words = export_hf(model, small_tokenizer, tmp_path / "hf"), "a Hugging Face model folder"
    before = tree_digest(tmp_path)
    assert cli.main(["sample", "--checkpoint", str(source), "--tokenizer", str(small_tokenizer)]) == 2
    assert capsys.readouterr().err == (
        f"tinyllm sample: {source} is {words}, a foreign format: convert it with "
        f"`tinyllm import {source} model.pt`, then pass model.pt\n"
    )
    assert tree_digest(tmp_path) == before


def test_sample_with_a_damaged_tokenizer_is_one_line(small_tokenizer, tmp_path, capsys):
    """Used to be SentencePiece's 25-line traceback."""
    from tinyllm import cli
    from tinyllm.checkpoint import save_checkpoint, weights_checkpoint

    checkpoint = tmp_path / "ckpt.pt"
    save_checkpoint(weights_checkpoint(make_random_model(), config=None), checkpoint)
    damaged = tmp_path / "tok512.model"
    damaged.write_bytes(small_tokenizer.read_bytes()[:1000])  # cut short, as by a full disk or a bad copy
    assert cli.main(["sample", "--checkpoint", str(checkpoint), "--tokenizer", str(damaged)]) == 2
    assert capsys.readouterr().err == (
        f"tinyllm sample: tokenizer {damaged} is not a readable SentencePiece model (damaged, or another "
        "format): pass the model's own tokenizer; delete a damaged one of the pipeline's and rerun "
        "snakemake\n"
    )


def test_import_into_an_existing_folder_is_one_line(tmp_path, capsys):
    from tinyllm import cli
    from tinyllm.export_runc import export_runc

    source = tmp_path / "model.bin"
    export_runc(make_random_model(), source)
    dest = tmp_path / "imported"
    dest.mkdir()
    (dest / "kept.txt").write_text("already here")
    assert cli.main(["import", str(source), str(dest)]) == 2
    err = capsys.readouterr().err
    example = dest / "model.pt"
    assert err == f"tinyllm import: {dest} is a folder: name the checkpoint file to write (e.g. {example})\n"
    assert [p.name for p in dest.iterdir()] == ["kept.txt"]


def test_tinyllm_import_of_a_bad_file_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    assert cli.main(["import", str(tmp_path / "notes.txt"), str(tmp_path / "ckpt.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinyllm import: ") and err.count("\n") == 1 and "notes.txt" in err
    assert not (tmp_path / "ckpt.pt").exists()
