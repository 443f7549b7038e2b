"""Export a trained model for llama2.c's run.c, and read run.c's format back (tinyllm.foreign).

run.c reads llama2.c's legacy format: a header of seven int32 (dim, hidden_dim, n_layers,
n_heads, n_kv_heads, vocab_size, max_seq_len; vocab_size is negated when the classifier is not the
embedding), then float32 weights, each matrix row-major in PyTorch's (out, in) layout, grouped by kind
across layers: token embedding, attention norms, wq, wk, wv, wo, ffn norms, w1, w2, w3, final norm, the
rotary cos and sin tables (max_seq_len x head_size/2 each, which run.c skips), and the classifier only when
it is not shared. run.c rotates interleaved pairs (x[2i], x[2i+1]) like our model, so weights go as they are.
"""

from __future__ import annotations

import os
import struct
from operator import attrgetter
from pathlib import Path

import torch

from tinyllm.errors import CheckpointError
from tinyllm.files import atomic_output
from tinyllm.model import ModelArgs, Transformer, load_model, rotary_tables

RUNC_NORM_EPS = 1e-5  # run.c's rmsnorm hardcodes this epsilon
RUNC_HEADER_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len")
RUNC_LAYER_WEIGHTS = (  # per-layer weights in file order, each stacked across layers
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


def _fp32_bytes(tensor: torch.Tensor) -> bytes:
    """Little-endian float32, as run.c mmaps it."""
    return tensor.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()


def classifier_is_embedding(model: Transformer) -> bool:
    """Whether the output layer is the token embedding (tied, as Transformer makes it) or equal to it."""
    output, embedding = model.output.weight, model.tok_embeddings.weight
    return output.data_ptr() == embedding.data_ptr() or torch.equal(output, embedding)


def runc_header(args: ModelArgs, shared_classifier: bool) -> bytes:
    vocab_size = args.vocab_size if shared_classifier else -args.vocab_size
    fields = (args.dim, args.hidden_dim, args.n_layers, args.n_heads, args.n_kv_heads, vocab_size)
    return struct.pack("<7i", *fields, args.max_seq_len)


def export_runc(model_or_checkpoint: Transformer | str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the model in llama2.c run.c's legacy format (see the module docstring), atomically."""
    model = model_or_checkpoint
    if not isinstance(model, Transformer):
        model = load_model(model, "cpu")
    args = model.args
    if abs(args.norm_eps - RUNC_NORM_EPS) > 1e-12:
        raise CheckpointError(f"run.c hardcodes RMSNorm eps {RUNC_NORM_EPS}; this model uses {args.norm_eps}")
    shared = classifier_is_embedding(model)
    layers = list(model.layers)
    per_layer = [attrgetter(name + ".weight") for name in RUNC_LAYER_WEIGHTS]
    cos, sin = rotary_tables(args.head_dim, args.max_seq_len)
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
            raise RuntimeError(f"run.c export wrote {f.tell()} bytes, the header implies {expected}")
    return path


def read_runc_header(source: bytes | str | os.PathLike) -> dict:
    """The seven header fields of a run.c legacy model file, or of its first 28 bytes.

    vocab_size is as stored: negative when the classifier is not shared with the embedding.
    """
    if not isinstance(source, bytes):
        with open(source, "rb") as f:
            source = f.read(28)
    values = struct.unpack("<7i", source[:28])
    return dict(zip(RUNC_HEADER_FIELDS, values, strict=True))


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
