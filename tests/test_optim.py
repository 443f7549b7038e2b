"""tinyllm.optim: the cosine and warmup-stable-decay schedules, AdamW and Muon, and exact resume of both."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import TINY_MODEL
from conftest import make_random_model as tiny_model
from tinyllm.config import validate_config
from tinyllm.optim import (
    NS_COEFFICIENTS,
    NS_STEPS,
    MuonWithAdamW,
    configure_optimizer,
    get_lr,
    orthogonalize,
    set_lr,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


def train_config(**overrides) -> dict:
    return validate_config({"train": overrides})["train"]


# --- schedules ---------------------------------------------------------------------------------------------


def test_cosine_is_the_default_warmup_peak_cosine_min():
    cfg = train_config(learning_rate=1e-3, min_lr=1e-4, warmup_iters=9, max_iters=109)
    assert cfg["lr_schedule"] == "cosine"
    lrs = [get_lr(it, cfg) for it in range(cfg["max_iters"] + 5)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[4] == pytest.approx(5e-4)  # linear: (it + 1) / 10 of peak
    assert lrs[9] == pytest.approx(1e-3) and max(lrs) == pytest.approx(1e-3)
    assert lrs[59] == pytest.approx((1e-3 + 1e-4) / 2)  # half way through the decay: the mean of peak and min
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[108] == pytest.approx(1e-4, rel=1e-2) and lrs[109:] == [pytest.approx(1e-4)] * 5
    assert {get_lr(it, {**cfg, "decay_lr": False}) for it in (0, 9, 50, 200)} == {1e-3}


def test_wsd_warms_up_holds_the_peak_then_decays_linearly_over_the_last_fraction():
    peak, low = 1e-3, 1e-4
    cfg = train_config(
        lr_schedule="wsd", learning_rate=peak, min_lr=low, warmup_iters=10, max_iters=100, decay_fraction=0.2
    )
    lrs = [get_lr(it, cfg) for it in range(105)]
    assert lrs[0] == pytest.approx(peak / 11) and lrs[9] == pytest.approx(peak * 10 / 11)  # same warmup
    assert lrs[10:81] == [peak] * 71  # stable: exactly the peak through the first step of the decay
    assert lrs[81] == pytest.approx(peak - (peak - low) / 20)
    assert lrs[90] == pytest.approx((peak + low) / 2)  # linear: half way through the last 20 steps
    assert lrs[99] == pytest.approx(low + (peak - low) / 20)
    assert lrs[100:] == [low] * 5
    assert all(a > b for a, b in zip(lrs[80:101], lrs[81:101], strict=False))


@pytest.mark.parametrize("fraction, decay_start", [(0.0, 100), (1.0, 10), (0.95, 10)])
def test_wsd_decay_never_starts_inside_the_warmup(fraction, decay_start):
    cfg = train_config(lr_schedule="wsd", warmup_iters=10, max_iters=100, decay_fraction=fraction)
    lrs = [get_lr(it, cfg) for it in range(101)]
    peak = cfg["learning_rate"]
    assert lrs[10:decay_start] == [peak] * (decay_start - 10)
    assert all(lr < peak for lr in lrs[decay_start + 1 :]) and lrs[100] == cfg["min_lr"]


def test_wsd_decays_over_the_last_fraction_of_the_budget():
    budget = {"max_iters": 10**6, "max_minutes": 10, "min_lr": 0.0}
    cfg = train_config(lr_schedule="wsd", decay_fraction=0.2, learning_rate=3e-3, warmup_iters=4, **budget)
    peak = cfg["learning_rate"]
    assert get_lr(100, cfg, spent_s=0.79 * 600) == peak
    assert get_lr(100, cfg, spent_s=0.9 * 600) == pytest.approx(peak / 2)
    assert get_lr(100, cfg, spent_s=600) == 0.0


# --- optimizers --------------------------------------------------------------------------------------------


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, TINY_MODEL["vocab_size"], (4, 33), generator=generator)
    return tokens[:, :-1], tokens[:, 1:]


def train_steps(model, optimizer, cfg: dict, steps: range, scaler=None) -> None:
    for it in steps:
        set_lr(optimizer, get_lr(it, cfg))
        _, loss = model(*batch(it))
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)


def test_adamw_is_the_default_and_decays_matrices_only():
    model = tiny_model()
    optimizer = configure_optimizer(model, train_config(), CPU)
    assert type(optimizer) is torch.optim.AdamW
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert any(p is model.tok_embeddings.weight for p in decay["params"])  # tied: listed once
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    norms = 2 * TINY_MODEL["n_layers"] + 1  # attention_norm and ffn_norm per layer, and the final norm
    assert len(no_decay["params"]) == norms


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = tiny_model()
    optimizer = configure_optimizer(model, train_config(optimizer="muon"), CPU)
    assert isinstance(optimizer, MuonWithAdamW)
    muon_params = {id(p) for group in optimizer.muon.param_groups for p in group["params"]}
    adamw_params = {id(p) for group in optimizer.adamw.param_groups for p in group["params"]}
    block_matrices = {
        id(p) for name, p in model.named_parameters() if name.startswith("layers.") and p.dim() == 2
    }
    assert muon_params == block_matrices and len(block_matrices) == 7 * TINY_MODEL["n_layers"]
    assert adamw_params == {id(p) for p in model.parameters()} - block_matrices
    assert id(model.tok_embeddings.weight) in adamw_params  # the tied embedding/output matrix


def test_muon_steps_orthogonalised_matrices_and_adamw_steps_the_rest():
    """One step from rest: AdamW moves a weight with a gradient by lr, Muon a matrix by an orthogonal one."""
    cfg = train_config(optimizer="muon", learning_rate=1e-3, muon_learning_rate=0.02, weight_decay=0.0)
    model = tiny_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = configure_optimizer(model, cfg, CPU)
    set_lr(optimizer, cfg["learning_rate"])
    _, loss = model(*batch(0))
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    optimizer.step()
    for name, p in model.named_parameters():
        step = (p.detach() - before[name]).double()
        if name.startswith("layers.") and p.dim() == 2:
            rows, cols = step.shape
            scale = 0.02 * max(1, rows / cols) ** 0.5  # Keller Jordan's shape adjustment
            # Newton-Schulz approximates U V^T of the gradient U S V^T (5 steps in bf16: roughly). The step
            # is far nearer to it than the gradient (an SGD step) or its sign (Adam's first step) is.
            u, _, vh = torch.linalg.svd(grads[name].double(), full_matrices=False)
            orthogonal = -(u @ vh).flatten()
            cosine = torch.nn.functional.cosine_similarity(step.flatten(), orthogonal, dim=0)
            sgd = torch.nn.functional.cosine_similarity(-grads[name].double().flatten(), orthogonal, dim=0)
            assert cosine > 0.85 and cosine > sgd + 0.1, (
                f"{name}: cosine {cosine:.3f}, of the gradient {sgd:.3f}"
            )
            assert torch.linalg.matrix_norm(step / scale, ord=2) < 1.6, name
        else:
            moved = grads[name].abs() > 1e-4  # far above eps, where Adam's first step is lr * sign
            assert torch.allclose(step[moved].abs(), torch.full_like(step[moved], 1e-3), rtol=1e-3), name
            assert torch.equal(step.sign()[moved], -grads[name].sign()[moved].double()), name


def test_orthogonalize_is_torch_muons_newton_schulz():
    from torch.optim._muon import _zeropower_via_newtonschulz

    generator = torch.Generator().manual_seed(0)
    for shape in [(48, 32), (32, 48), (32, 32)]:
        matrix = torch.randn(shape, generator=generator)
        expected = _zeropower_via_newtonschulz(matrix, NS_COEFFICIENTS, NS_STEPS, 1e-7)
        assert torch.equal(orthogonalize(matrix, torch.bfloat16), expected), (
            shape
        )  # torch's dtype: bit for bit
        in_float32 = orthogonalize(matrix, torch.float32)
        assert torch.allclose(in_float32, expected.float(), atol=0.05), shape


@pytest.mark.parametrize("ns_dtype", [torch.bfloat16, None])
def test_muon_steps_as_torch_muon_does(ns_dtype):
    """torch.optim.Muon's algorithm: bit for bit in its bf16, within bf16's precision in our float32 (CPU)."""
    cfg = train_config(optimizer="muon", muon_learning_rate=0.02, weight_decay=0.1)
    ours, theirs = tiny_model(), tiny_model()
    optimizer = configure_optimizer(ours, cfg, CPU)
    optimizer.muon.ns_dtype = ns_dtype
    matrices = [p for name, p in theirs.named_parameters() if name.startswith("layers.") and p.dim() == 2]
    reference = torch.optim.Muon(matrices, lr=0.02, weight_decay=0.1, adjust_lr_fn="original")
    for it in range(3):
        for model in (ours, theirs):
            _, loss = model(*batch(it))
            loss.backward()
        optimizer.muon.step()
        reference.step()
        optimizer.zero_grad()
        theirs.zero_grad()
    start = tiny_model()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        if name.startswith("layers.") and a.dim() == 2:
            if ns_dtype == torch.bfloat16:
                assert torch.equal(a, b), name
            else:
                moved = (a - start.get_parameter(name)).abs().max()
                assert (a - b).abs().max() < 0.2 * moved, f"{name}: {(a - b).abs().max()} against {moved}"


def test_set_lr_scales_muon_by_its_own_peak():
    cfg = train_config(optimizer="muon", learning_rate=2e-3, muon_learning_rate=0.02)
    optimizer = configure_optimizer(tiny_model(), cfg, CPU)
    set_lr(optimizer, 1e-3)  # half the peak, as in a decay
    assert [g["lr"] for g in optimizer.muon.param_groups] == [pytest.approx(0.01)]
    assert [g["lr"] for g in optimizer.adamw.param_groups] == [1e-3, 1e-3]


@pytest.mark.parametrize("optimizer_name", ["adamw", "muon"])
@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_resuming_from_the_optimizer_state_gives_identical_steps(optimizer_name, schedule):
    cfg = train_config(
        optimizer=optimizer_name, lr_schedule=schedule, learning_rate=3e-3, warmup_iters=2, max_iters=8
    )
    straight = tiny_model()
    optimizer = configure_optimizer(straight, cfg, CPU)
    train_steps(straight, optimizer, cfg, range(4))
    buffer = io.BytesIO()
    torch.save({"model": straight.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    train_steps(straight, optimizer, cfg, range(4, 8))

    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = tiny_model(seed=1)  # other initial weights: everything must come from the state
    resumed.load_state_dict(state["model"])
    resumed_optimizer = configure_optimizer(resumed, cfg, CPU)
    resumed_optimizer.load_state_dict(state["optimizer"])
    train_steps(resumed, resumed_optimizer, cfg, range(4, 8))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{optimizer_name}/{schedule}: {name} differs after resuming"


@pytest.mark.parametrize("optimizer_name", ["adamw", "muon"])
def test_grad_scaler_steps_the_optimizer_as_an_unscaled_step_would(optimizer_name):
    """float16 training's GradScaler scales by a power of two, so its steps equal plain ones bit for bit."""
    cfg = train_config(optimizer=optimizer_name, learning_rate=3e-3, warmup_iters=0, max_iters=3)
    plain, scaled = tiny_model(), tiny_model()
    plain_optimizer = configure_optimizer(plain, cfg, CPU)
    scaled_optimizer = configure_optimizer(scaled, cfg, CPU)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    train_steps(plain, plain_optimizer, cfg, range(3))
    train_steps(scaled, scaled_optimizer, cfg, range(3), scaler=scaler)
    assert scaler.get_scale() == 2.0**12  # no step was skipped for an overflow
    for (name, a), b in zip(plain.state_dict().items(), scaled.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{optimizer_name}: {name} differs under the GradScaler"
