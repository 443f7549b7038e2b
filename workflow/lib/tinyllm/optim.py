"""The optimizer and the learning-rate schedule of a training run (the train section of the config).

Optimizers (train.optimizer):
- adamw: llama2.c's AdamW; matrices and the embedding decay, norm gains do not.
- muon: Muon (orthogonalised momentum, Keller Jordan 2024) for the 2-D weight matrices of the transformer
  blocks, AdamW for the rest (the tied embedding/output matrix and the norm gains), as is standard: Muon's
  update suits hidden matrices, not lookup tables or vectors. Muon's rate is train.muon_learning_rate.

Schedules (train.lr_schedule), both after a linear warmup of warmup_iters steps:
- cosine: cosine decay from the peak to min_lr at max_iters.
- wsd: warmup-stable-decay: the peak until the last decay_fraction of the steps, then linear decay to min_lr.
"""

from __future__ import annotations

import math

import torch

from tinyllm.model import TransformerBlock


def get_lr(it: int, train_cfg: dict) -> float:
    """Learning rate of optimizer step `it` (0-based): linear warmup, then cosine or wsd decay to min_lr.

    With decay_lr false the rate is constant. Warmup reaches the peak at step warmup_iters, and step 0 already
    moves the weights (llama2.c's warmup spends it at lr 0). This is AdamW's rate; set_lr scales Muon's
    groups by the same factor.
    """
    peak, min_lr = train_cfg["learning_rate"], train_cfg["min_lr"]
    warmup, total = train_cfg["warmup_iters"], train_cfg["max_iters"]
    if not train_cfg["decay_lr"]:
        return peak
    if it < warmup:
        return peak * (it + 1) / (warmup + 1)
    if it >= total:
        return min_lr
    if train_cfg.get("lr_schedule", "cosine") == "wsd":
        decay_start = max(warmup, total - round(train_cfg["decay_fraction"] * total))
        if it < decay_start:
            return peak
        return peak + (min_lr - peak) * (it - decay_start) / (total - decay_start)
    progress = (it - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - min_lr)


class MuonWithAdamW:
    """Muon and AdamW over disjoint parameters, driven as one optimizer.

    The training loop, torch.amp.GradScaler (scaler.unscale_/scaler.step read param_groups and call step())
    and checkpoints see one object: param_groups lists both optimizers' groups, state_dict holds both.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def configure_optimizer(
    model: torch.nn.Module, train_cfg: dict, device: torch.device
) -> torch.optim.AdamW | MuonWithAdamW:
    """The optimizer of train.optimizer (default adamw) over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]  # a tied weight appears once
    if train_cfg.get("optimizer", "adamw") == "muon":
        in_blocks = {id(p) for m in model.modules() if isinstance(m, TransformerBlock) for p in m.parameters()}
        matrices = [p for p in params if p.dim() == 2 and id(p) in in_blocks]
        taken = {id(p) for p in matrices}
        params = [p for p in params if id(p) not in taken]
        muon = torch.optim.Muon(
            matrices,
            lr=train_cfg["muon_learning_rate"],
            weight_decay=train_cfg["weight_decay"],
            adjust_lr_fn="original",  # Keller Jordan's scaling, sqrt(max(1, rows/cols)), for his rates
        )
        # set_lr gives this group get_lr's rate times lr_scale: both optimizers follow one schedule.
        muon.param_groups[0]["lr_scale"] = train_cfg["muon_learning_rate"] / train_cfg["learning_rate"]
        return MuonWithAdamW(muon, _adamw(params, train_cfg, device))
    return _adamw(params, train_cfg, device)


def _adamw(params: list[torch.nn.Parameter], train_cfg: dict, device: torch.device) -> torch.optim.AdamW:
    """AdamW that decays matrices and embeddings (2+ dimensions) but not norm gains or other vectors."""
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": train_cfg["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel (one per step, not one per tensor) exists for CUDA and CPU; on CPU it is also faster.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        groups, lr=train_cfg["learning_rate"], betas=(train_cfg["beta1"], train_cfg["beta2"]), fused=fused
    )


def set_lr(optimizer: torch.optim.Optimizer | MuonWithAdamW, lr: float) -> None:
    """Set step's learning rate, get_lr's value: AdamW's groups take it, Muon's that times their lr_scale."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr
