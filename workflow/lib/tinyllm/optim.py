"""The optimizer and the learning-rate schedule of a training run (the train section of the config).

Optimizers (train.optimizer):
- adamw: llama2.c's AdamW; matrices and the embedding decay, norm gains do not.
- muon: Muon (orthogonalised momentum, Keller Jordan 2024) for the 2-D weight matrices of the transformer
  blocks, AdamW for the rest (the tied embedding/output matrix and the norm gains), as is standard: Muon's
  update suits hidden matrices, not lookup tables or vectors. Muon's rate is train.muon_learning_rate.
  The algorithm is torch.optim.Muon's; ours orthogonalises in float32 on CPU (see Muon).

Schedules (train.lr_schedule), both after a linear warmup of warmup_iters steps:
- cosine: cosine decay from the peak to min_lr at max_iters.
- wsd: warmup-stable-decay: the peak until the last decay_fraction of the steps, then linear decay to min_lr.
With train.max_minutes the decay follows the fraction of the time budget used, where that is further along.
"""

from __future__ import annotations

import math

import torch

from tinyllm.model import TransformerBlock


def get_lr(it: int, train_cfg: dict, spent_s: float = 0.0) -> float:
    """Learning rate of optimizer step `it` (0-based), spent_s seconds of training time into the run.

    Linear warmup over warmup_iters steps (step 0 already moves the weights; llama2.c's warmup spends it at
    lr 0), then cosine or wsd decay to min_lr; constant with decay_lr false. The decay follows how far the run
    is: through its steps, or through train.max_minutes when that is set and further along. This is AdamW's
    rate; set_lr scales Muon's groups by the same factor.
    """
    peak, min_lr = train_cfg["learning_rate"], train_cfg["min_lr"]
    warmup, total = train_cfg["warmup_iters"], train_cfg["max_iters"]
    if not train_cfg["decay_lr"]:
        return peak
    if it < warmup:
        return peak * (it + 1) / (warmup + 1)
    budget_used = spent_s / (60 * train_cfg["max_minutes"]) if train_cfg["max_minutes"] else 0.0
    if train_cfg["lr_schedule"] == "wsd":  # the peak, then linear decay over the last decay_fraction
        decay_steps = round(train_cfg["decay_fraction"] * total)
        if not decay_steps:
            return peak if it < total else min_lr
        # The share of the decay still ahead: of the steps, or of the budget where that is further along.
        ahead = min((total - it) / decay_steps, (1 - budget_used) / train_cfg["decay_fraction"])
        return peak if ahead >= 1 else min_lr + (peak - min_lr) * max(0.0, ahead)
    done = min(1.0, max((it - warmup) / max(1, total - warmup), budget_used))  # of the steps after warmup
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * done)) * (peak - min_lr)


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic Newton-Schulz, as torch.optim.Muon's
NS_STEPS = 5


def orthogonalize(matrix: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Newton-Schulz approximation of U V^T for matrix = U S V^T, computed in dtype.

    The quintic iteration does not converge to U V^T but to U S' V^T with S' roughly in 0.5..1.5, which
    trains as well (Keller Jordan). Same steps as torch.optim.Muon's _zeropower_via_newtonschulz.
    """
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=1e-7)  # spectral norm at most 1
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weight matrices: momentum SGD whose update is orthogonalised by Newton-Schulz.

    torch.optim.Muon's algorithm (EMA momentum 0.95 with Nesterov, 5 Newton-Schulz steps, Keller Jordan's
    update scale sqrt(max(1, rows/cols)), decoupled weight decay lr * weight_decay), orthogonalising in
    bf16 on GPUs, as it does, but in float32 elsewhere: on CPU torch's bf16 Newton-Schulz took 50x as long
    as float32 for the CPU preset's matrices (17 s against 0.33 s per step, 2 cores), longer than the
    training step itself.
    """

    def __init__(self, params, lr: float, weight_decay: float, momentum: float = 0.95, ns_dtype=None):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum})
        self.ns_dtype = ns_dtype  # None: bf16 on CUDA, float32 elsewhere

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                buffer.lerp_(p.grad, 1 - momentum)
                nesterov = p.grad.lerp(buffer, momentum)
                dtype = self.ns_dtype or (torch.bfloat16 if p.is_cuda else torch.float32)
                update = orthogonalize(nesterov, dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-lr * max(1, p.size(0) / p.size(1)) ** 0.5)


class MuonWithAdamW:
    """Muon and AdamW over disjoint parameters, driven as one optimizer.

    The training loop, torch.amp.GradScaler (scaler.unscale_/scaler.step read param_groups and call step())
    and checkpoints see one object: param_groups lists both optimizers' groups, state_dict holds both.
    """

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW):
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
    if train_cfg["optimizer"] == "muon":
        in_blocks = {
            id(p) for m in model.modules() if isinstance(m, TransformerBlock) for p in m.parameters()
        }
        matrices = [p for p in params if p.dim() == 2 and id(p) in in_blocks]
        taken = {id(p) for p in matrices}
        params = [p for p in params if id(p) not in taken]
        muon = Muon(matrices, lr=train_cfg["muon_learning_rate"], weight_decay=train_cfg["weight_decay"])
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
