"""tinyllm.export_runc and export_hf's weights: run.c's file checked by a run.c-style forward pass, the
Hugging Face folder by transformers' logits. The Hugging Face tokenizer and generation are in test_hf.py."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, make_random_model
from tinyllm import paths
from tinyllm.export_hf import export_hf, half_to_interleaved_rotary, hf_state_dict, interleaved_to_half_rotary
from tinyllm.export_runc import export_runc, read_runc_header, runc_file_size
from tinyllm.model import Transformer, rotary_tables

# Small tensors: a second thread gains nothing and stalls badly when the other cores are busy.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = TINY_MODEL
# The models are make_random_model(scale=3.0): spread-out logits, norm gains off 1 so their placement matters.


def our_logits(model: Transformer, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokens]))
    return logits[0].numpy()


TOKENS = [1, 37, 400, 12, 99, 255, 3, 511, 64, 200, 7, 42]


# --- run.c --------------------------------------------------------------------------------------------------


def runc_forward(path, tokens: list[int]) -> np.ndarray:
    """Logits (T, vocab) from a run.c legacy file, computed the way run.c's forward() does, token by token.

    Written from run.c's memory_map_weights and forward: weights are read in file order, the rotary tables
    are skipped (run.c recomputes the angles), and the classifier is the embedding when vocab_size > 0.
    """
    header = read_runc_header(path)
    dim, hidden, n_layers = header["dim"], header["hidden_dim"], header["n_layers"]
    n_heads, n_kv_heads, seq_len = header["n_heads"], header["n_kv_heads"], header["max_seq_len"]
    shared, vocab = header["vocab_size"] > 0, abs(header["vocab_size"])
    head_size = dim // n_heads
    kv_dim = n_kv_heads * head_size
    data = np.fromfile(path, dtype="<f4", offset=28)
    offset = 0

    def take(*shape):
        nonlocal offset
        size = math.prod(shape)
        out = data[offset : offset + size].reshape(shape)
        offset += size
        return out

    embedding = take(vocab, dim)
    rms_att = take(n_layers, dim)
    wq, wk, wv = take(n_layers, dim, dim), take(n_layers, kv_dim, dim), take(n_layers, kv_dim, dim)
    wo = take(n_layers, dim, dim)
    rms_ffn = take(n_layers, dim)
    w1, w2, w3 = take(n_layers, hidden, dim), take(n_layers, dim, hidden), take(n_layers, hidden, dim)
    rms_final = take(dim)
    take(seq_len, head_size // 2)  # freq_cis_real: skipped by run.c
    take(seq_len, head_size // 2)  # freq_cis_imag
    classifier = embedding if shared else take(vocab, dim)
    assert offset == len(data), "bytes left over after the classifier"

    def rmsnorm(x, weight):
        return weight * (x / np.sqrt(np.mean(x * x) + np.float32(1e-5)))

    def rotate(vec, pos, width):
        i = np.arange(0, width, 2)
        freq = 1.0 / np.power(np.float32(10000.0), (i % head_size) / np.float32(head_size))
        fcr, fci = np.cos(pos * freq).astype(np.float32), np.sin(pos * freq).astype(np.float32)
        v0, v1 = vec[0:width:2].copy(), vec[1:width:2].copy()
        vec[0:width:2], vec[1:width:2] = v0 * fcr - v1 * fci, v0 * fci + v1 * fcr

    key_cache = np.zeros((n_layers, seq_len, kv_dim), np.float32)
    value_cache = np.zeros((n_layers, seq_len, kv_dim), np.float32)
    all_logits = []
    for pos, token in enumerate(tokens):
        x = embedding[token].copy()
        for layer in range(n_layers):
            xb = rmsnorm(x, rms_att[layer])
            q, k, v = wq[layer] @ xb, wk[layer] @ xb, wv[layer] @ xb
            rotate(q, pos, dim)
            rotate(k, pos, kv_dim)
            key_cache[layer, pos], value_cache[layer, pos] = k, v
            heads = []
            for h in range(n_heads):
                kv = (h // (n_heads // n_kv_heads)) * head_size
                keys = key_cache[layer, : pos + 1, kv : kv + head_size]
                scores = keys @ q[h * head_size : (h + 1) * head_size] / np.sqrt(np.float32(head_size))
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                heads.append(weights @ value_cache[layer, : pos + 1, kv : kv + head_size])
            x = x + wo[layer] @ np.concatenate(heads)
            xb = rmsnorm(x, rms_ffn[layer])
            gate = w1[layer] @ xb
            x = x + w2[layer] @ ((gate / (1.0 + np.exp(-gate))) * (w3[layer] @ xb))
        all_logits.append(classifier @ rmsnorm(x, rms_final))
    return np.stack(all_logits)


def test_runc_header_and_size(tmp_path):
    model = make_random_model(scale=3.0)
    path = export_runc(model, tmp_path / "export" / "model.bin")
    args = model.args
    header = read_runc_header(path)
    shape = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len")
    assert header == {"hidden_dim": args.hidden_dim, **{key: TINY[key] for key in shape}}
    assert path.stat().st_size == runc_file_size(header)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.bin"]  # no temporary file left


def test_runc_weights_are_in_run_c_order(tmp_path):
    model = make_random_model(scale=3.0)
    path = export_runc(model, tmp_path / "model.bin")
    data = np.fromfile(path, dtype="<f4", offset=28)
    dim, head_size = TINY["dim"], TINY["dim"] // TINY["n_heads"]
    vocab, layers, seq = TINY["vocab_size"], TINY["n_layers"], TINY["max_seq_len"]
    np.testing.assert_array_equal(data[: vocab * dim], model.tok_embeddings.weight.detach().numpy().ravel())
    start = vocab * dim + layers * dim  # after the embedding and the attention norms
    wq0 = data[start : start + dim * dim]
    np.testing.assert_array_equal(wq0, model.layers[0].attention.wq.weight.detach().numpy().ravel())
    # The legacy rotary tables sit right before the end (no classifier: shared).
    cos, sin = rotary_tables(head_size, seq)
    tables = data[len(data) - 2 * seq * head_size // 2 :]
    np.testing.assert_allclose(tables, np.concatenate([cos.numpy().ravel(), sin.numpy().ravel()]))
    final_norm = data[len(data) - len(tables) - dim : len(data) - len(tables)]
    np.testing.assert_array_equal(final_norm, model.norm.weight.detach().numpy())


@pytest.mark.parametrize("tied", [True, False])
def test_a_run_c_forward_pass_over_the_export_reproduces_our_logits(tmp_path, tied):
    model = make_random_model(seed=1, scale=3.0, tied=tied)
    path = export_runc(model, tmp_path / "model.bin")
    assert (read_runc_header(path)["vocab_size"] > 0) == tied  # negated when the classifier is separate
    ours = our_logits(model, TOKENS)
    theirs = runc_forward(path, TOKENS)
    assert np.abs(ours).max() > 1.0  # logits with some spread, not a near-zero comparison
    assert np.abs(theirs - ours).max() < 1e-4


def test_export_runc_reads_a_checkpoint(tmp_path):
    model = make_random_model(seed=2, scale=3.0)
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model.args.to_dict(), "iter_num": 3}, checkpoint)
    path = export_runc(checkpoint, tmp_path / "model.bin")
    assert np.abs(runc_forward(path, TOKENS[:5]) - our_logits(model, TOKENS[:5])).max() < 1e-4


# --- Hugging Face ------------------------------------------------------------------------------------------


def test_rotary_permutation_moves_pair_members_to_the_two_halves():
    weight = torch.arange(2 * 8, dtype=torch.float32)[:, None]  # 2 heads of size 8, one input column
    rows = interleaved_to_half_rotary(weight, n_heads=2)[:, 0].tolist()
    assert rows == [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]


def test_rotary_permutations_are_inverse():
    weight = torch.randn(4 * 16, 8)
    back = half_to_interleaved_rotary(interleaved_to_half_rotary(weight, n_heads=4), n_heads=4)
    assert torch.equal(back, weight)


def test_transformers_loads_the_export_and_matches_our_logits(tmp_path, small_tokenizer):
    transformers = pytest.importorskip("transformers")
    model = make_random_model(seed=3, scale=3.0)
    folder = export_hf(model, small_tokenizer, tmp_path / "export" / "hf")
    assert sorted(p.name for p in folder.iterdir()) == sorted(paths.HF_EXPORT_FILES)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["hf"]  # no temporary file left
    assert (folder / "tokenizer.model").read_bytes() == small_tokenizer.read_bytes()
    config = json.loads((folder / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["num_key_value_heads"] == 2
    assert config["intermediate_size"] == model.args.hidden_dim and config["torch_dtype"] == "float32"
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)

    hf = transformers.LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager").float().eval()
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()  # re-tied on load
    with torch.no_grad():
        theirs = hf(torch.tensor([TOKENS])).logits[0].numpy()
    ours = our_logits(model, TOKENS)
    assert np.abs(ours).max() > 1.0
    assert np.abs(theirs - ours).max() < 1e-4


def test_hf_state_dict_stores_each_tensor_once():
    model = make_random_model(scale=3.0)
    tensors = hf_state_dict(model)
    assert "lm_head.weight" not in tensors
    assert len(tensors) == 2 + 9 * TINY["n_layers"]
    assert len({t.data_ptr() for t in tensors.values()}) == len(tensors)  # safetensors refuses shared storage


def test_read_runc_header_takes_bytes_too():
    raw = struct.pack("<7i", 8, 32, 1, 2, 1, -10, 16)
    header = read_runc_header(raw)
    assert header["vocab_size"] == -10
    # 8x8 attention matrices, two 4x8 k/v, three 32x8 ffn; two embeddings (unshared); tables 16 x 4 / 2 x 2.
    floats = 10 * 8 * 2 + (2 * 8 + 2 * 64 + 2 * 32 + 3 * 256) + 8 + 16 * 4
    assert runc_file_size(header) == 28 + 4 * floats
