"""The Transformer: shapes, size, causality, grouped-query attention, rotary, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_MODEL as TINY
from conftest import make_random_model as tiny_model
from tinyllm.model import ModelArgs, Transformer, apply_rotary, load_model, rotary_tables


def random_tokens(batch: int, length: int, vocab: int = TINY["vocab_size"], seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_shapes_and_loss():
    model = tiny_model()
    tokens = random_tokens(3, 10)
    logits, loss = model(tokens)
    assert logits.shape == (3, 10, TINY["vocab_size"]) and loss is None
    logits, loss = model(tokens, targets=random_tokens(3, 10, seed=2))
    assert loss.shape == () and torch.isfinite(loss)
    # Freshly initialised, the model is close to uniform over the vocabulary.
    assert abs(loss.item() - math.log(TINY["vocab_size"])) < 0.5


def test_ignore_index_targets_are_skipped():
    model = tiny_model()
    tokens, targets = random_tokens(2, 8), random_tokens(2, 8, seed=2)
    _, full = model(tokens, targets)
    masked = targets.clone()
    masked[:, 4:] = -1
    _, partial = model(tokens, masked)
    logits, _ = model(tokens)
    expected = torch.nn.functional.cross_entropy(logits[:, :4].reshape(-1, logits.shape[-1]),
                                                 targets[:, :4].reshape(-1))  # fmt: skip
    torch.testing.assert_close(partial, expected)
    assert partial.item() != full.item()


def test_default_parameter_count():
    assert Transformer(ModelArgs()).num_params() == 8_483_616


def test_state_dict_names_match_the_exporters():
    names = set(tiny_model(n_layers=1).state_dict())
    layer = {f"layers.0.attention.{w}.weight" for w in ("wq", "wk", "wv", "wo")}
    layer |= {f"layers.0.feed_forward.{w}.weight" for w in ("w1", "w2", "w3")}
    layer |= {"layers.0.attention_norm.weight", "layers.0.ffn_norm.weight"}
    assert names == layer | {"tok_embeddings.weight", "norm.weight", "output.weight"}
    model = tiny_model()
    assert model.output.weight is model.tok_embeddings.weight  # tied


@pytest.mark.parametrize("training", [False, True])
def test_causal_masking(training):
    """Changing a future token never changes an earlier position's logits."""
    model = tiny_model().train(training)
    tokens = random_tokens(2, 16)
    changed = tokens.clone()
    changed[:, 9] = (changed[:, 9] + 1) % TINY["vocab_size"]
    before, _ = model(tokens)
    after, _ = model(changed)
    assert torch.equal(before[:, :9], after[:, :9])
    assert not torch.allclose(before[:, 9:], after[:, 9:])


def test_grouped_query_attention_equals_mha_with_repeated_heads():
    gqa = tiny_model(n_heads=4, n_kv_heads=2)
    mha = tiny_model(seed=5, n_heads=4, n_kv_heads=4)
    head_dim, group = gqa.args.head_dim, gqa.args.n_heads // gqa.args.n_kv_heads
    state = gqa.state_dict()
    for name, weight in list(state.items()):
        if name.endswith(("attention.wk.weight", "attention.wv.weight")):
            # Key/value head j serves query heads j*group .. j*group+group-1: repeat each head's rows.
            per_head = weight.view(gqa.args.n_kv_heads, head_dim, gqa.args.dim)
            state[name] = per_head.repeat_interleave(group, dim=0).reshape(-1, gqa.args.dim)
    mha.load_state_dict(state)
    tokens = random_tokens(2, 20)
    torch.testing.assert_close(mha(tokens)[0], gqa(tokens)[0], atol=1e-5, rtol=1e-5)


def test_rotary_rotates_interleaved_pairs():
    head_dim, length = 8, 6
    cos, sin = rotary_tables(head_dim, length)
    x = torch.randn(2, length, 3, head_dim, generator=torch.Generator().manual_seed(0))
    out = apply_rotary(x, cos, sin)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    torch.testing.assert_close(out[..., 0::2], x0 * c - x1 * s)
    torch.testing.assert_close(out[..., 1::2], x0 * s + x1 * c)
    torch.testing.assert_close(out[:, 0], x[:, 0])  # position 0 is not rotated
    # Under bf16 the rotation is computed in float32 and rounded once.
    reference = apply_rotary(x.bfloat16().float(), cos, sin).bfloat16()
    assert torch.equal(apply_rotary(x.bfloat16(), cos, sin), reference)


def test_positions_past_max_seq_len_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(random_tokens(1, TINY["max_seq_len"] + 1))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN for CPU bf16")
def test_bf16_autocast_tracks_float32():
    model = tiny_model()
    tokens, targets = random_tokens(4, 24), random_tokens(4, 24, seed=2)
    _, loss32 = model(tokens, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits16, loss16 = model(tokens, targets)
    assert logits16.dtype == torch.bfloat16 and loss16.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) < 0.02
    loss16.backward()  # gradients reach every parameter, in float32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_dropout_only_in_training():
    model = tiny_model(dropout=0.5)
    tokens = random_tokens(2, 12)
    assert torch.equal(model(tokens)[0], model(tokens)[0])
    model.train()
    assert not torch.equal(model(tokens)[0], model(tokens)[0])


def test_load_model_reads_a_training_checkpoint(tmp_path):
    model = tiny_model()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model.args.to_dict(), "iter_num": 3}, path)
    loaded = load_model(path)
    assert not loaded.training and loaded.args == model.args
    tokens = random_tokens(1, 9)
    assert torch.equal(loaded(tokens)[0], model(tokens)[0])
