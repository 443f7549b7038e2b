"""Checkpoint files: one layout for the weights (ckpt.pt, best.pt) and, on top of it, the training state.

A weights checkpoint is a dict that `torch.load(path, weights_only=True)` reads:

    model       the state_dict, float32 on CPU, named as tinyllm.model.Transformer names its parameters
    model_args  ModelArgs.to_dict(): with the state_dict, all that tinyllm.model.load_model needs
    config      the validated {"model": ..., "train": ...} sections that trained it (None when imported)
    iter_num    optimizer steps taken (0 for an imported model)
    val_loss    validation loss of these weights in nats/token, or None when not evaluated

The training state (results/train/state/state.pt) is a weights checkpoint plus what resuming needs:

    format        STATE_FORMAT; a state of another format starts training afresh
    world_size    data-parallel ranks that wrote it
    inputs        the fingerprint of the shards and tokenizer it trained on (tinyllm.train.inputs_fingerprint)
    optimizer, scaler, rng (one entry per rank), best_val_loss, metrics (the rows of metrics.csv so far)
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from tinyllm.errors import CheckpointError, one_line
from tinyllm.files import atomic_output

STATE_FORMAT = 2  # bump when the training state's layout changes: older states then start fresh


COMPILE_AND_DDP_PREFIXES = ("_orig_mod.", "module.")  # what torch.compile and DDP put before parameter names


def strip_wrapper_prefixes(name: str) -> str:
    """A parameter's name as Transformer names it, without torch.compile's or DDP's prefixes."""
    for prefix in COMPILE_AND_DDP_PREFIXES:
        name = name.removeprefix(prefix)
    return name


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Transformer inside a compiled and/or DistributedDataParallel model."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights in float32 on CPU, named as Transformer names them (no compile/DDP prefixes)."""
    plain = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        plain[strip_wrapper_prefixes(name)] = (tensor.float() if tensor.is_floating_point() else tensor).cpu()
    return plain


def weights_checkpoint(
    model: torch.nn.Module, config: dict | None, iter_num: int = 0, val_loss: float | None = None
) -> dict:
    """The dict ckpt.pt and best.pt hold (see the module docstring)."""
    raw = unwrap_model(model)
    return {
        "model": plain_state_dict(model),
        "model_args": raw.args.to_dict(),
        "config": config,
        "iter_num": iter_num,
        "val_loss": val_loss,
    }


# What torch.load raises for a file that is not a (safe) PyTorch checkpoint: torn, truncated, another format,
# or pickled objects that weights_only refuses.
UNREADABLE = (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile)


def read_checkpoint(path: str | os.PathLike, device="cpu", mmap: bool = False) -> dict:
    """torch.load(path, weights_only=True): tensors and plain containers only, never arbitrary objects.

    A file that cannot be read that way is a CheckpointError naming it. mmap leaves the tensors on disk
    (reading only the metadata costs next to nothing).
    """
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except UNREADABLE as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {one_line(err, 200)}") from None


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """torch.save through a temporary file beside path, then rename: a kill never leaves a torn file."""
    with atomic_output(path) as f:
        torch.save(obj, f)



# --- loading a model to run it (tinyllm sample and serve, rule sample, the exports) ------------------------

TRAIN_HINT = "run `snakemake --cores all --resources gpu=1` first"


def checkpoint_info(path: str | os.PathLike) -> dict:
    """The checkpoint's model_args, iter_num and config, without reading its tensors into memory."""
    from tinyllm.foreign import foreign_format  # foreign.py reads checkpoints through this module

    path = Path(path)
    if kind := foreign_format(path):
        raise CheckpointError(
            f"{path} is {kind}, a foreign format: convert it with `tinyllm import {path} model.pt`, then "
            "pass model.pt"
        )
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: {TRAIN_HINT} (or pass the checkpoint's path)")
    if not zipfile.is_zipfile(path):  # torch.save's format; mmap would only say it wants that
        raise CheckpointError(f"{path} is not a tinyllm checkpoint, nor a model that `tinyllm import` reads")
    checkpoint = read_checkpoint(path, mmap=True)  # only the small metadata is read
    if not isinstance(checkpoint, dict) or "model_args" not in checkpoint or "model" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a tinyllm checkpoint (no model/model_args): {TRAIN_HINT}, or convert it with "
            "`tinyllm import`"
        )
    return {
        "model_args": dict(checkpoint["model_args"]),
        "iter_num": checkpoint.get("iter_num"),
        "config": checkpoint.get("config"),
    }


def default_tokenizer_path(checkpoint: str | os.PathLike, vocab_size: int) -> Path:
    """The pipeline's tokenizer for this vocabulary size, in the results folder that holds the checkpoint.

    A checkpoint at <results>/train/ckpt.pt or <results>/experiments/NAME/ckpt.pt finds
    <results>/tok{V}/tok{V}.model; any other checkpoint falls back to ./results.
    """
    from tinyllm import paths

    relative = Path(paths.tokenizer_model(vocab_size)).relative_to(paths.RESULTS)
    for results in Path(checkpoint).resolve().parents:
        if (results / relative).is_file():
            return results / relative
    return Path(paths.tokenizer_model(vocab_size))


def load_model_and_tokenizer(
    model_or_checkpoint, tokenizer: str | os.PathLike | None = None, device: str | torch.device = "cpu"
):
    """(Transformer in eval mode on device, its Tokenizer), checked to match in vocabulary size.

    model_or_checkpoint is a Transformer or the path of a tinyllm checkpoint; tokenizer is the SentencePiece
    model, by default the pipeline's one beside the checkpoint (default_tokenizer_path).
    """
    from tinyllm import paths
    from tinyllm.model import Transformer, load_model  # model.py reads checkpoints through this module
    from tinyllm.tokenizer import Tokenizer

    if isinstance(model_or_checkpoint, Transformer):
        model, source = model_or_checkpoint.to(device), "the model"
        vocab_size = model.args.vocab_size
    else:
        vocab_size = checkpoint_info(model_or_checkpoint)["model_args"]["vocab_size"]
        model, source = None, f"checkpoint {model_or_checkpoint}"
    if tokenizer is None:
        tokenizer = default_tokenizer_path(model_or_checkpoint if model is None else ".", vocab_size)
    if not Path(tokenizer).is_file():
        raise CheckpointError(f"no tokenizer at {tokenizer}: {TRAIN_HINT} (or pass the model's tokenizer)")
    loaded = Tokenizer(tokenizer)  # a damaged file is a DataError naming it
    if loaded.n_words != vocab_size:
        raise CheckpointError(
            f"tokenizer {tokenizer} has {loaded.n_words} tokens but {source} has vocab_size {vocab_size}: "
            f"pass the model's own tokenizer ({paths.tokenizer_model(vocab_size)} in a pipeline's results)"
        )
    return (model if model is not None else load_model(model_or_checkpoint, device)), loaded
