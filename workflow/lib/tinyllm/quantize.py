"""Weight-only int8 for decoding: each matrix row stored as int8 with one float scale, as llama2.c's runq.c.

A row's scale is its largest magnitude / 127, so every weight is within half a step (scale / 2) of its
float32 value. At batch 1 a decode step is bound by reading the weights (34 MB per token in float32 at the
reference size, 8.5 MB in int8), so the product reads int8 and converts on the fly: torch's
_weight_int8pack_mm, which takes its activations in bfloat16 (its float32 path is several times slower on
x86) and accumulates in float32. The residual stream, norms, attention and the cache stay float32.
"""

from __future__ import annotations

import torch

from tinyllm.errors import ConfigError


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 scale per row) with weight ~= int8 * scale[:, None]."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127
    return torch.round(weight / scale[:, None]).to(torch.int8), scale


class Int8Matmul:
    """x @ W.T with W (out, in) stored as int8 rows and scales; the same interface as generate.DenseMatmul."""

    def __init__(self, weight: torch.Tensor):
        if weight.device.type != "cpu":
            raise ConfigError(
                f"int8 decoding runs on the CPU only, not on {weight.device}: drop --int8 there"
            )
        self.weight, scale = quantize_rows(weight)
        self.scale = scale.to(torch.bfloat16)
        self.out_features = weight.shape[0]

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None, alpha: float = 1.0) -> torch.Tensor:
        product = torch._weight_int8pack_mm(x.to(torch.bfloat16), self.weight, self.scale)
        return (product.float() if out is None else out.copy_(product)).mul_(alpha)

    def add_to(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x.add_(torch._weight_int8pack_mm(y.to(torch.bfloat16), self.weight, self.scale))


def bits_per_byte(
    model, val_ids, tokens_per_byte: float, int8: bool, windows: int = 64, rows: int = 8
) -> float:
    """Validation bits per byte of the decoder (float32 or int8 weights): the mean next-token loss over
    `windows` evenly spaced windows of max_seq_len + 1 tokens of val_ids, in bits, times tokens per byte."""
    import math

    import torch.nn.functional as F

    from tinyllm.generate import Decoder

    ids = torch.as_tensor(val_ids, dtype=torch.long).flatten()
    span = model.args.max_seq_len + 1
    if len(ids) < span:
        raise ValueError(f"{len(ids)} validation tokens; a window needs {span}")
    starts = torch.linspace(0, len(ids) - span, windows).long()
    decoder, total = Decoder(model, rows, int8), 0.0
    for first in range(0, windows, rows):
        block = torch.stack([ids[s : s + span] for s in starts[first : first + rows].tolist()])
        logits = decoder.prefill(block[:, :-1], all_positions=True)
        total += F.cross_entropy(logits.flatten(0, 1), block[:, 1:].flatten(), reduction="sum").item()
    return total / (windows * (span - 1)) / math.log(2) * tokens_per_byte


def int8_quality(checkpoint, val_shard, tokenizer=None, windows: int = 256) -> dict[str, float]:
    """Val bits/byte of a checkpoint with float32 and with int8 weights, on the same windows of val_shard."""
    import numpy as np

    from tinyllm.batches import tokens_per_byte
    from tinyllm.checkpoint import load_model_and_tokenizer

    model, loaded = load_model_and_tokenizer(checkpoint, tokenizer)
    ids = np.fromfile(val_shard, dtype="<u2").astype(np.int64)
    per_byte = tokens_per_byte(val_shard, loaded)
    figures = {
        f"{kind}_bpb": bits_per_byte(model, ids, per_byte, kind == "int8", windows)
        for kind in ("float32", "int8")
    }
    figures["int8_bpb_change"] = figures["int8_bpb"] / figures["float32_bpb"] - 1
    return figures
