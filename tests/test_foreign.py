"""tinyllm.foreign and `tinyllm import`: our model through run.c, Hugging Face and llama2.c layouts, and back.
The files it refuses: tests/faults/test_models.py."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODEL, TINY_MODEL_SECTION, make_random_model
from tinyllm import cli
from tinyllm.checkpoint import save_checkpoint, weights_checkpoint
from tinyllm.errors import CheckpointError
from tinyllm.export_hf import export_hf
from tinyllm.export_runc import export_runc
from tinyllm.foreign import (
    check_matches,
    import_checkpoint,
    load_foreign_checkpoint,
)
from tinyllm.model import ModelArgs, load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOKENS = torch.tensor([[1, 37, 400, 12, 99, 255, 3, 511, 64, 200, 7, 42]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS)[0]


def assert_imports_identically(source, model, dest, expected_format: str) -> None:
    """source converts into a checkpoint at dest whose model gives bit-identical logits to model's."""
    imported = import_checkpoint(source, dest)
    assert imported.format == expected_format
    assert imported.model_args == model.args
    loaded = load_model(dest)
    assert torch.equal(logits(loaded), logits(model))
    checkpoint = torch.load(dest, weights_only=True)
    assert (checkpoint["config"], checkpoint["iter_num"], checkpoint["val_loss"]) == (None, 0, None)


def test_ours_to_run_c_and_back_gives_identical_logits(tmp_path):
    model = make_random_model(seed=1, scale=3.0)
    runc = export_runc(model, tmp_path / "model.bin")
    assert_imports_identically(runc, model, tmp_path / "imported.pt", "llama2.c run.c model")


def test_ours_to_hugging_face_and_back_gives_identical_logits(tmp_path, small_tokenizer):
    model = make_random_model(seed=2, scale=3.0)
    folder = export_hf(model, small_tokenizer, tmp_path / "hf")
    assert_imports_identically(folder, model, tmp_path / "imported.pt", "Hugging Face Llama folder")


def test_a_folder_saved_by_transformers_imports(tmp_path, small_tokenizer):
    transformers = pytest.importorskip("transformers")
    model = make_random_model(seed=3, scale=3.0)
    hf = transformers.LlamaForCausalLM.from_pretrained(export_hf(model, small_tokenizer, tmp_path / "hf"))
    hf.save_pretrained(tmp_path / "saved")  # transformers' own files, lm_head and all
    assert_imports_identically(
        tmp_path / "saved", model, tmp_path / "imported.pt", "Hugging Face Llama folder"
    )


def test_a_llama2c_train_py_checkpoint_imports(tmp_path):
    """The layout of llama2.c's released stories15M.pt: its names under torch.compile's prefix, model_args
    without hidden_dim and norm_eps, the optimizer and training config beside them."""
    model = make_random_model(seed=4, scale=3.0)
    checkpoint = {
        "model": {f"_orig_mod.{name}": t.clone() for name, t in model.state_dict().items()},
        "optimizer": {"state": {}, "param_groups": []},
        "model_args": {**TINY_MODEL, "dropout": 0.0},
        "iter_num": 298000,
        "best_val_loss": 1.07,
        "config": {"batch_size": 128, "dtype": "bfloat16", "compile": True},
    }
    torch.save(checkpoint, tmp_path / "stories.pt")
    assert_imports_identically(
        tmp_path / "stories.pt", model, tmp_path / "imported.pt", "llama2.c checkpoint"
    )


def test_our_checkpoint_reads_as_itself(tmp_path):
    model = make_random_model(seed=5, scale=3.0)
    save_checkpoint(
        weights_checkpoint(model, config={"model": {}, "train": {}}, iter_num=7), tmp_path / "c.pt"
    )
    found = load_foreign_checkpoint(tmp_path / "c.pt")
    assert found.format == "tinyllm checkpoint" and found.model_args == model.args
    assert all(torch.equal(found.state_dict[k], v) for k, v in model.state_dict().items())


# --- check_matches ------------------------------------------------------------------------------------------

CONFIG_MODEL = TINY_MODEL_SECTION


def test_check_matches_accepts_the_same_model():
    check_matches(ModelArgs(**TINY_MODEL), {**CONFIG_MODEL, "dropout": 0.1}, 512, "train.init_from x.pt")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("dim", 288, "train.init_from x.pt has model.dim 288, the config says 64"),
        ("n_kv_heads", 4, "train.init_from x.pt has model.n_kv_heads 4, the config says 2"),
        ("vocab_size", 32000, "train.init_from x.pt has tokenizer.vocab_size 32000, the config says 512"),
        ("max_seq_len", 256, "train.init_from x.pt has model.max_seq_len 256, the config says 64"),
        (
            "hidden_dim",
            256,
            "has feed-forward hidden_dim 256, model.dim 64 and model.multiple_of 32 give 192",
        ),
    ],
)
def test_check_matches_names_the_first_mismatch(field, value, message):
    args = ModelArgs(**{**TINY_MODEL, field: value})
    with pytest.raises(CheckpointError) as err:
        check_matches(args, CONFIG_MODEL, 512, "train.init_from x.pt")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_check_matches_reports_the_first_of_several():
    args = ModelArgs(**{**TINY_MODEL, "n_layers": 6, "vocab_size": 32000})
    with pytest.raises(CheckpointError, match="model.n_layers 6, the config says 2$"):
        check_matches(args, CONFIG_MODEL, 512, "train.init_from x.pt")


# --- the command --------------------------------------------------------------------------------------------


def test_tinyllm_import_writes_a_checkpoint_that_tinyllm_sample_reads(tmp_path, small_tokenizer, capsys):
    model = make_random_model(seed=7, scale=3.0)
    runc = export_runc(model, tmp_path / "model.bin")
    assert cli.main(["import", str(runc), str(tmp_path / "ckpt.pt")]) == 0
    out = capsys.readouterr().out
    assert "llama2.c run.c model: dim 64, 2 layers, 4/2 heads, vocab 512" in out
    argv = ["sample", "--checkpoint", str(tmp_path / "ckpt.pt"), "--tokenizer", str(small_tokenizer)]
    assert cli.main([*argv, "--temperature", "0", "--max-new-tokens", "5", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip()


