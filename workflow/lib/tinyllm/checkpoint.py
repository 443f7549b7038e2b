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

