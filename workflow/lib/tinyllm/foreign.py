"""Read a model saved by us or by another Llama-2 tool into our layout: `tinyllm import`, `train.init_from`.

`load_foreign_checkpoint(path)` reads, by what path holds:

- a checkpoint of ours (ckpt.pt, best.pt; tinyllm.checkpoint);
- a llama2.c train.py checkpoint (its released stories15M.pt and friends): {"model": state_dict,
  "model_args": {dim, n_layers, n_heads, n_kv_heads, vocab_size, multiple_of, max_seq_len, dropout}, ...}.
  llama2.c's model names its parameters as ours does; torch.compile may have prefixed them "_orig_mod.";
- a llama2.c run.c model.bin in the legacy (version 0) format that run.c reads and export_runc writes;
- a Hugging Face Llama folder (config.json and model.safetensors or pytorch_model.bin), with transformers'
  rotate_half permutation of wq and wk undone.

It returns the model's ModelArgs and a state_dict that `Transformer(model_args).load_state_dict` takes, or
raises CheckpointError with one line naming the file and what does not fit. tinyllm's Transformer
ties the output layer to the embedding, so a model with its own output layer is refused.
`check_matches` compares a checkpoint's ModelArgs with a config's model section.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from tinyllm.checkpoint import read_checkpoint, save_checkpoint, strip_wrapper_prefixes, weights_checkpoint
from tinyllm.errors import CheckpointError, OutputError, one_line
from tinyllm.export_hf import HF_LAYER_NAMES, HF_TOP_NAMES, half_to_interleaved_rotary
from tinyllm.export_runc import (
    RUNC_HEADER_FIELDS,
    RUNC_LAYER_WEIGHTS,
    RUNC_NORM_EPS,
    read_runc_header,
    runc_file_size,
)
from tinyllm.files import check_writable
from tinyllm.model import ROPE_THETA, ModelArgs, Transformer

LLAMA2C_EXPORT_MAGIC = 0x616B3432  # "ak42": llama2.c export.py's version 1 and 2 files start with it
HF_CONFIG_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
    "intermediate_size",
    "rms_norm_eps",
    "max_position_embeddings",
)


class ForeignCheckpoint(NamedTuple):
    model_args: ModelArgs
    state_dict: dict[str, torch.Tensor]  # float32, named as Transformer names its parameters
    format: str  # what the file was, in words


def load_foreign_checkpoint(path: str | os.PathLike) -> ForeignCheckpoint:
    """The model in path (see the module docstring for the formats), checked to load into Transformer."""
    path = Path(path)
    if path.is_dir():
        checkpoint = read_hf_folder(path)
    elif not path.is_file():
        raise CheckpointError(f"{path} not found")
    elif zipfile.is_zipfile(path):  # torch.save's format
        checkpoint = read_torch_checkpoint(path)
    else:
        checkpoint = read_runc_model(path)
    _check_loadable(checkpoint, path)
    return checkpoint


def foreign_format(path: str | os.PathLike) -> str | None:
    """What foreign model that `tinyllm import` converts path holds, in words ("a llama2.c run.c model.bin",
    "a Hugging Face model folder"), from its header or its files alone; None for anything else (ours and
    llama2.c's train.py checkpoints, read as they are, or no model)."""
    path = Path(path)
    if path.is_dir():
        config = path / "config.json"
        weights = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
        if config.is_file() and any((path / name).is_file() for name in weights):
            return "a Hugging Face model folder"
        return None
    if not path.is_file() or zipfile.is_zipfile(path) or path.stat().st_size < 4 * len(RUNC_HEADER_FIELDS):
        return None
    header = read_runc_header(path)
    if all(header[k] > 0 for k in RUNC_HEADER_FIELDS if k != "vocab_size") and header["vocab_size"]:
        if header["dim"] % header["n_heads"] == 0 and path.stat().st_size == runc_file_size(header):
            return "a llama2.c run.c model.bin"
    return None


def import_checkpoint(source: str | os.PathLike, dest: str | os.PathLike) -> ForeignCheckpoint:
    """`tinyllm import`: source's model as a checkpoint of ours at dest (no config, iteration 0).

    dest is checked first, so that a folder or an unwritable place is one line before any conversion.
    """
    dest = Path(dest)
    if dest.is_dir():
        raise OutputError(
            f"{dest} is a folder: name the checkpoint file to write (e.g. {dest / 'model.pt'})"
        )
    check_writable(dest)
    checkpoint = load_foreign_checkpoint(source)
    model = Transformer(checkpoint.model_args)
    model.load_state_dict(checkpoint.state_dict)
    save_checkpoint(weights_checkpoint(model, config=None, iter_num=0, val_loss=None), dest)
    return checkpoint


def check_matches(model_args: ModelArgs, model_config: dict, vocab_size: int, source: str) -> None:
    """Raise CheckpointError naming the first field where the checkpoint's model differs from the one
    the config's model section (and tokenizer.vocab_size) describes, e.g.
    "train.init_from x.pt has model.dim 288, the config says 64" for source "train.init_from x.pt"."""
    wanted = ModelArgs.from_dict({**model_config, "vocab_size": vocab_size})
    fields = {
        "dim": "model.dim",
        "n_layers": "model.n_layers",
        "n_heads": "model.n_heads",
        "n_kv_heads": "model.n_kv_heads",
        "hidden_dim": "feed-forward hidden_dim",
        "max_seq_len": "model.max_seq_len",
        "vocab_size": "tokenizer.vocab_size",
        "norm_eps": "RMSNorm eps",
    }
    for field, label in fields.items():
        theirs, ours = getattr(model_args, field), getattr(wanted, field)
        if theirs == ours:
            continue
        if field == "hidden_dim":
            says = f"model.dim {wanted.dim} and model.multiple_of {wanted.multiple_of} give {ours}"
        elif field == "norm_eps":
            says = f"tinyllm's model uses {ours}"
        else:
            says = f"the config says {ours}"
        raise CheckpointError(f"{source} has {label} {theirs}, {says}")


# --- the formats -------------------------------------------------------------------------------------------


def read_torch_checkpoint(path: Path) -> ForeignCheckpoint:
    """Ours (ckpt.pt) or llama2.c train.py's: both hold "model" and "model_args" and name weights alike."""
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict) or not {"model", "model_args"} <= checkpoint.keys():
        raise CheckpointError(
            f"{path} is a PyTorch file without 'model' and 'model_args': not a tinyllm or llama2.c checkpoint"
        )
    raw_args = dict(checkpoint["model_args"])
    # llama2.c's train.py saves its model_args without hidden_dim and norm_eps; ModelArgs derives hidden_dim
    # from multiple_of with llama2.c's formula, and both use eps 1e-5.
    ours = {"hidden_dim", "norm_eps"} <= raw_args.keys()
    state_dict = {}
    for name, tensor in checkpoint["model"].items():
        state_dict[strip_wrapper_prefixes(name)] = tensor.float()
    model_args = _model_args(
        path, **{k: v for k, v in raw_args.items() if k in ModelArgs.__dataclass_fields__}
    )
    return ForeignCheckpoint(model_args, state_dict, "tinyllm checkpoint" if ours else "llama2.c checkpoint")


def read_runc_model(path: Path) -> ForeignCheckpoint:
    """llama2.c's legacy run.c file: header, then float32 weights in export_runc's order."""
    size = path.stat().st_size
    if size < 4 * len(RUNC_HEADER_FIELDS):
        raise CheckpointError(
            f"{path} is neither a PyTorch checkpoint nor a run.c model ({size} bytes)"
        )
    header = read_runc_header(path)
    if header["dim"] == LLAMA2C_EXPORT_MAGIC:
        raise CheckpointError(
            f"{path} is a llama2.c export of version 1 or 2; tinyllm reads the legacy version 0 that run.c "
            "reads (llama2.c export.py --version 0)"
        )
    dim, n_heads, vocab = header["dim"], header["n_heads"], abs(header["vocab_size"])
    positive = all(header[k] > 0 for k in RUNC_HEADER_FIELDS if k != "vocab_size") and vocab > 0
    if not positive or dim % n_heads or size != runc_file_size(header):
        raise CheckpointError(
            f"{path} is neither a PyTorch checkpoint nor a run.c model: its size does not fit the run.c "
            f"header it would have ({', '.join(f'{k} {v}' for k, v in header.items())})"
        )
    model_args = _model_args(
        path,
        dim=dim,
        n_layers=header["n_layers"],
        n_heads=n_heads,
        n_kv_heads=header["n_kv_heads"],
        vocab_size=vocab,
        hidden_dim=header["hidden_dim"],
        norm_eps=RUNC_NORM_EPS,
        max_seq_len=header["max_seq_len"],
    )
    data = torch.from_numpy(np.fromfile(path, dtype="<f4", offset=4 * len(RUNC_HEADER_FIELDS)))
    offset = 0

    def take(*shape: int) -> torch.Tensor:
        nonlocal offset
        count = int(np.prod(shape))
        offset += count
        return data[offset - count : offset].view(shape)

    n_layers, hidden = model_args.n_layers, model_args.hidden_dim
    kv_dim = model_args.n_kv_heads * model_args.head_dim
    shapes = {
        "attention_norm": (dim,),
        "attention.wq": (dim, dim),
        "attention.wk": (kv_dim, dim),
        "attention.wv": (kv_dim, dim),
        "attention.wo": (dim, dim),
        "ffn_norm": (dim,),
        "feed_forward.w1": (hidden, dim),
        "feed_forward.w2": (dim, hidden),
        "feed_forward.w3": (hidden, dim),
    }
    state_dict = {"tok_embeddings.weight": take(vocab, dim)}
    for name in RUNC_LAYER_WEIGHTS:
        stacked = take(n_layers, *shapes[name])
        state_dict.update({f"layers.{i}.{name}.weight": stacked[i] for i in range(n_layers)})
    state_dict["norm.weight"] = take(dim)
    take(2, model_args.max_seq_len, model_args.head_dim // 2)  # rotary cos and sin tables: recomputed
    shared = header["vocab_size"] > 0
    state_dict["output.weight"] = state_dict["tok_embeddings.weight"] if shared else take(vocab, dim)
    return ForeignCheckpoint(model_args, state_dict, "llama2.c run.c model")


def read_hf_folder(folder: Path) -> ForeignCheckpoint:
    """A Hugging Face Llama folder: config.json and one weights file."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder} is a folder without config.json: not a Hugging Face model")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise CheckpointError(f"{config_path} is not JSON: {one_line(err, 200)}") from None
    missing = [key for key in HF_CONFIG_KEYS if key not in config]
    if missing:
        raise CheckpointError(f"{config_path} lacks {missing[0]}: not a Hugging Face Llama config")
    rope = config.get("rope_parameters") or {}
    unsupported = {
        "model_type": (config["model_type"], "llama"),
        "hidden_act": (config.get("hidden_act", "silu"), "silu"),
        "rope_theta": (config.get("rope_theta", rope.get("rope_theta", ROPE_THETA)), ROPE_THETA),
        "rope_scaling": (config.get("rope_scaling") or rope.get("rope_type", "default"), "default"),
        "attention_bias": (config.get("attention_bias", False), False),
        "mlp_bias": (config.get("mlp_bias", False), False),
    }
    for key, (value, supported) in unsupported.items():
        if value != supported:
            raise CheckpointError(
                f"{config_path} has {key} {value!r}; tinyllm's model has {supported!r}"
            )
    dim, n_heads = config["hidden_size"], config["num_attention_heads"]
    if config.get("head_dim", dim // n_heads) != dim // n_heads:
        raise CheckpointError(
            f"{config_path} has head_dim {config['head_dim']}, not hidden_size/heads"
        )
    model_args = _model_args(
        config_path,
        dim=dim,
        n_layers=config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads") or n_heads,
        vocab_size=config["vocab_size"],
        hidden_dim=config["intermediate_size"],
        norm_eps=config["rms_norm_eps"],
        max_seq_len=config["max_position_embeddings"],
    )
    hf = _read_hf_weights(folder)
    ours_of = {hf_name: ours for ours, hf_name in HF_TOP_NAMES.items()}
    for i in range(model_args.n_layers):
        ours_of.update(
            {f"model.layers.{i}.{hf_name}": f"layers.{i}.{ours}" for ours, hf_name in HF_LAYER_NAMES.items()}
        )
    state_dict = {}
    for name, tensor in hf.items():
        if name.endswith("rotary_emb.inv_freq"):  # older transformers saved the rotary buffer
            continue
        if name == "lm_head.weight":
            state_dict["output.weight"] = tensor.float()
            continue
        if name not in ours_of:
            raise CheckpointError(f"{folder} holds {name}, which a Llama model of tinyllm's has not")
        ours = ours_of[name]
        tensor = tensor.float()
        if ours.endswith("attention.wq.weight"):
            tensor = half_to_interleaved_rotary(tensor, model_args.n_heads)
        elif ours.endswith("attention.wk.weight"):
            tensor = half_to_interleaved_rotary(tensor, model_args.n_kv_heads)
        state_dict[ours] = tensor
    state_dict.setdefault("output.weight", state_dict.get("tok_embeddings.weight"))  # tied: no lm_head saved
    return ForeignCheckpoint(model_args, state_dict, "Hugging Face Llama folder")


def _read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    safetensors, pickled = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(safetensors)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"cannot read the weights in {safetensors}: {one_line(err, 200)}") from None
    if pickled.is_file():
        return read_checkpoint(pickled)
    raise CheckpointError(
        f"{folder} holds neither model.safetensors nor pytorch_model.bin (sharded weights are not read)"
    )


# --- checks ------------------------------------------------------------------------------------------------


def _check_loadable(checkpoint: ForeignCheckpoint, path: Path) -> None:
    """Every parameter present with its shape, nothing else, and the output layer equal to the embedding."""
    with torch.device("meta"):  # shapes only: no memory, no random init
        expected = Transformer(checkpoint.model_args).state_dict()
    found = checkpoint.state_dict
    for name, tensor in expected.items():
        if name not in found or found[name] is None:
            raise CheckpointError(f"{path} ({checkpoint.format}) lacks {name}")
        if found[name].shape != tensor.shape:
            raise CheckpointError(
                f"{path} ({checkpoint.format}) has {name} of shape {tuple(found[name].shape)}, its model "
                f"args imply {tuple(tensor.shape)}"
            )
    extra = sorted(found.keys() - expected.keys())
    if extra:
        raise CheckpointError(
            f"{path} ({checkpoint.format}) holds {extra[0]}, which tinyllm's model has not"
        )
    if not torch.equal(found["output.weight"], found["tok_embeddings.weight"]):
        raise CheckpointError(
            f"{path} ({checkpoint.format}) has an output layer of its own; tinyllm's model ties it to the "
            "token embedding, so it cannot hold this model"
        )


def _model_args(path: Path, **fields) -> ModelArgs:
    try:
        return ModelArgs(**fields)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} describes no model tinyllm can build: {err}") from None


