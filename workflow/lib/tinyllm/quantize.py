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

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        product = torch._weight_int8pack_mm(x.to(torch.bfloat16), self.weight, self.scale)
        return product.float() if out is None else out.copy_(product)

    def add_to(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x.add_(torch._weight_int8pack_mm(y.to(torch.bfloat16), self.weight, self.scale))
