"""Export a trained model for other runtimes: llama2.c's run.c and Hugging Face transformers.

run.c (`export_runc`) reads llama2.c's legacy format: a header of seven int32 (dim, hidden_dim, n_layers,
n_heads, n_kv_heads, vocab_size, max_seq_len; vocab_size is negated when the classifier is not the
embedding), then float32 weights, each matrix row-major in PyTorch's (out, in) layout, grouped by kind
across layers: token embedding, attention norms, wq, wk, wv, wo, ffn norms, w1, w2, w3, final norm, the
rotary cos and sin tables (max_seq_len x head_size/2 each, which run.c skips), and the classifier only when
it is not shared. run.c rotates interleaved pairs (x[2i], x[2i+1]) like our model, so weights go as they are.

Hugging Face (`export_hf`) writes config.json, model.safetensors and the SentencePiece tokenizer.model for
`LlamaForCausalLM.from_pretrained`. Its rotary rotates the first half of each head against the second half
(rotate_half), so the rows of wq and wk are permuted per head: pair i's two rows (2i, 2i+1) move to rows
i and i + head_size/2. q.k products are unchanged by permuting q and k alike, so the model is the same.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from operator import attrgetter
from pathlib import Path

import torch

from tinyllm.files import atomic_output
from tinyllm.model import ModelArgs, Transformer, load_model, rotary_tables

RUNC_NORM_EPS = 1e-5  # run.c's rmsnorm hardcodes this epsilon
ROPE_THETA = 10000.0  # model.rotary_tables' default


def _as_model(model_or_checkpoint: Transformer | str | os.PathLike) -> Transformer:
    if isinstance(model_or_checkpoint, Transformer):
        return model_or_checkpoint
    return load_model(model_or_checkpoint, "cpu")


def _fp32_bytes(tensor: torch.Tensor) -> bytes:
    """Little-endian float32, as run.c mmaps it."""
    return tensor.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()


def runc_header(args: ModelArgs, shared_classifier: bool) -> bytes:
    vocab_size = args.vocab_size if shared_classifier else -args.vocab_size
    fields = (args.dim, args.hidden_dim, args.n_layers, args.n_heads, args.n_kv_heads, vocab_size)
    return struct.pack("<7i", *fields, args.max_seq_len)


def export_runc(model_or_checkpoint: Transformer | str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the model in llama2.c run.c's legacy format (see the module docstring), atomically."""
    model = _as_model(model_or_checkpoint)
    args = model.args
    if abs(args.norm_eps - RUNC_NORM_EPS) > 1e-12:
        raise ValueError(f"run.c hardcodes RMSNorm eps {RUNC_NORM_EPS}; this model uses {args.norm_eps}")
    shared = model.output.weight.data_ptr() == model.tok_embeddings.weight.data_ptr() or torch.equal(
        model.output.weight, model.tok_embeddings.weight
    )
    layers = list(model.layers)
    per_layer = [
        attrgetter(name + ".weight")
        for name in (
            "attention_norm",
            "attention.wq",
            "attention.wk",
            "attention.wv",
            "attention.wo",
            "ffn_norm",
            "feed_forward.w1",
            "feed_forward.w2",
            "feed_forward.w3",
        )
    ]
    cos, sin = rotary_tables(args.head_dim, args.max_seq_len, ROPE_THETA)
    header = runc_header(args, shared)
    path = Path(path)
    with atomic_output(path) as f:
        f.write(header)
        f.write(_fp32_bytes(model.tok_embeddings.weight))
        for weight_of in per_layer:
            for block in layers:
                f.write(_fp32_bytes(weight_of(block)))
        f.write(_fp32_bytes(model.norm.weight))
        f.write(_fp32_bytes(cos))
        f.write(_fp32_bytes(sin))
        if not shared:
            f.write(_fp32_bytes(model.output.weight))
        expected = runc_file_size(read_runc_header(header))
        if f.tell() != expected:  # a layout slip here would make run.c read garbage, not fail
            raise AssertionError(f"run.c export wrote {f.tell()} bytes, the header implies {expected}")
    return path


def interleaved_to_half_rotary(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a (n_heads * head_size, in) projection reordered from interleaved-pair to rotate_half rotary.

    Within each head, row 2i goes to row i and row 2i+1 to row i + head_size/2.
    """
    rows, cols = weight.shape
    head_size = rows // n_heads
    return weight.view(n_heads, head_size // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_config(args: ModelArgs, bos_id: int = 1, eos_id: int = 2) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": args.vocab_size,
        "hidden_size": args.dim,
        "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        # transformers < 5 reads rope_theta; 5 reads rope_parameters (and still converts rope_theta).
        "rope_theta": ROPE_THETA,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our weights under transformers' Llama names, fp32 and contiguous.

    lm_head.weight is left out: it is the embedding (tie_word_embeddings), safetensors refuses to store one
    tensor twice, and transformers re-ties it on load.
    """
    args = model.args
    tensors = {
        "model.embed_tokens.weight": model.tok_embeddings.weight,
        "model.norm.weight": model.norm.weight,
    }
    for i, block in enumerate(model.layers):
        attn, ffn, prefix = block.attention, block.feed_forward, f"model.layers.{i}."
        tensors.update(
            {
                prefix + "self_attn.q_proj.weight": interleaved_to_half_rotary(attn.wq.weight, args.n_heads),
                prefix + "self_attn.k_proj.weight": interleaved_to_half_rotary(
                    attn.wk.weight, args.n_kv_heads
                ),
                prefix + "self_attn.v_proj.weight": attn.wv.weight,
                prefix + "self_attn.o_proj.weight": attn.wo.weight,
                prefix + "mlp.gate_proj.weight": ffn.w1.weight,
                prefix + "mlp.up_proj.weight": ffn.w3.weight,
                prefix + "mlp.down_proj.weight": ffn.w2.weight,
                prefix + "input_layernorm.weight": block.attention_norm.weight,
                prefix + "post_attention_layernorm.weight": block.ffn_norm.weight,
            }
        )
    return {name: t.detach().to("cpu", torch.float32).contiguous().clone() for name, t in tensors.items()}


def export_hf(
    model_or_checkpoint: Transformer | str | os.PathLike,
    tokenizer_model: str | os.PathLike,
    folder: str | os.PathLike,
) -> Path:
    """Write config.json, model.safetensors and tokenizer.model into folder.

    Everything is written into a temporary folder beside it first and then renamed into place file by file,
    so each file appears complete or not at all.
    """
    from safetensors.torch import save_file

    from tinyllm.tokenizer import Tokenizer

    model = _as_model(model_or_checkpoint)
    tokenizer = Tokenizer(tokenizer_model)
    if tokenizer.n_words != model.args.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer_model} has {tokenizer.n_words} tokens, the model {model.args.vocab_size}"
        )
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        config = hf_config(model.args, tokenizer.bos_id, tokenizer.eos_id)
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(hf_state_dict(model), str(staging / "model.safetensors"), metadata={"format": "pt"})
        shutil.copyfile(tokenizer_model, staging / "tokenizer.model")
        folder.mkdir(exist_ok=True)
        for name in ("tokenizer.model", "model.safetensors", "config.json"):
            os.chmod(staging / name, 0o644)
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_runc_header(source: bytes | str | os.PathLike) -> dict:
    """The seven header fields of a run.c legacy model file, or of its first 28 bytes.

    vocab_size is as stored: negative when the classifier is not shared with the embedding.
    """
    if not isinstance(source, bytes):
        with open(source, "rb") as f:
            source = f.read(28)
    values = struct.unpack("<7i", source[:28])
    names = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len")
    return dict(zip(names, values, strict=True))


def runc_file_size(header: dict) -> int:
    """Bytes a legacy run.c file with this header holds (header included)."""
    dim, hidden, layers = header["dim"], header["hidden_dim"], header["n_layers"]
    head_size = dim // header["n_heads"]
    kv_dim = header["n_kv_heads"] * head_size
    vocab = abs(header["vocab_size"])
    floats = vocab * dim + layers * (2 * dim + 2 * dim * dim + 2 * dim * kv_dim + 3 * dim * hidden)
    floats += dim + header["max_seq_len"] * head_size  # final norm, cos and sin tables
    if header["vocab_size"] < 0:
        floats += vocab * dim
    return 28 + 4 * floats
