"""The optimizer and the learning-rate schedule of a training run (the train section of the config)."""

from __future__ import annotations

import math

import torch


def get_lr(it: int, train_cfg: dict) -> float:
    """Learning rate of optimizer step `it` (0-based): linear warmup, cosine decay to min_lr at max_iters.

    With decay_lr false the rate is constant. Warmup reaches the peak at step warmup_iters, and step 0 already
    moves the weights (llama2.c's warmup spends it at lr 0).
    """
    peak, min_lr = train_cfg["learning_rate"], train_cfg["min_lr"]
    warmup, total = train_cfg["warmup_iters"], train_cfg["max_iters"]
    if not train_cfg["decay_lr"]:
        return peak
    if it < warmup:
        return peak * (it + 1) / (warmup + 1)
    if it >= total:
        return min_lr
    progress = (it - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - min_lr)


def configure_optimizer(model: torch.nn.Module, train_cfg: dict, device: torch.device) -> torch.optim.AdamW:
    """AdamW that decays matrices and embeddings (2+ dimensions) but not norm gains or other vectors."""
    params = [p for p in model.parameters() if p.requires_grad]  # a tied weight appears once
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": train_cfg["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel (one per step, not one per tensor) exists for CUDA and CPU; on CPU it is also faster.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        groups, lr=train_cfg["learning_rate"], betas=(train_cfg["beta1"], train_cfg["beta2"]), fused=fused
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
