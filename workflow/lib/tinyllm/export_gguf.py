"""Export a trained model as GGUF for llama.cpp (llama-cli, llama-server), llama-cpp-python and ollama.

One file, written with the `gguf` package (llama.cpp's own writer): the "llama" architecture's metadata,
float32 weights under llama.cpp's tensor names, and the SentencePiece tokenizer (tokenizer.ggml.model
"llama": pieces, scores and token types), so nothing else is needed beside it.

llama.cpp's llama architecture rotates interleaved pairs (x[2i], x[2i+1]) of q and k, as Meta's original
weights and ours do (its converter from Hugging Face undoes transformers' rotate_half permutation to get
there), so wq and wk go as they are.

Generation in those tools ends at an end-of-generation token, which llama.cpp takes from eos_token_id. That
is BOS here, the story separator: the shards put BOS before every story and no EOS, so a trained model
ends a story by predicting BOS, where our sampler and run.c stop too. ("</s>" stays an end-of-generation
token as well: llama.cpp recognises it by its text.)
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch

from tinyllm.checkpoint import load_model_and_tokenizer
from tinyllm.export_runc import classifier_is_embedding
from tinyllm.files import atomic_path
from tinyllm.model import ROPE_THETA, Transformer
from tinyllm.tokenizer import Tokenizer

# Our parameter names -> gguf's MODEL_TENSOR names (per layer for the block's parameters).
GGUF_TOP_TENSORS = {"tok_embeddings.weight": "TOKEN_EMBD", "norm.weight": "OUTPUT_NORM"}
GGUF_LAYER_TENSORS = {
    "attention_norm.weight": "ATTN_NORM",
    "attention.wq.weight": "ATTN_Q",
    "attention.wk.weight": "ATTN_K",
    "attention.wv.weight": "ATTN_V",
    "attention.wo.weight": "ATTN_OUT",
    "ffn_norm.weight": "FFN_NORM",
    "feed_forward.w1.weight": "FFN_GATE",
    "feed_forward.w2.weight": "FFN_DOWN",
    "feed_forward.w3.weight": "FFN_UP",
}


def gguf_tensors(model: Transformer) -> dict[str, np.ndarray]:
    """Our weights under llama.cpp's names, float32 in PyTorch's (out, in) shape (the writer reverses it
    into ggml's order). output.weight only when the classifier is not the embedding: llama.cpp falls back
    to token_embd.weight when it is missing."""
    import gguf

    def name(kind: str, layer: int | None = None) -> str:
        return gguf.TENSOR_NAMES[gguf.MODEL_TENSOR[kind]].format(bid=layer) + ".weight"

    tensors = {name(kind): model.get_parameter(ours) for ours, kind in GGUF_TOP_TENSORS.items()}
    for i, block in enumerate(model.layers):
        tensors.update(
            {name(kind, i): block.get_parameter(ours) for ours, kind in GGUF_LAYER_TENSORS.items()}
        )
    if not classifier_is_embedding(model):
        tensors[name("OUTPUT")] = model.output.weight
    return {k: v.detach().to("cpu", torch.float32).numpy() for k, v in tensors.items()}


def token_types(tokenizer: Tokenizer) -> list[int]:
    """gguf.TokenType of every piece: control (BOS, EOS), unknown, byte (<0xNN>), unused or normal."""
    import gguf

    sp = tokenizer.sp
    kinds = []
    for i in range(tokenizer.n_words):
        if sp.is_control(i):
            kinds.append(gguf.TokenType.CONTROL)
        elif sp.is_unknown(i):
            kinds.append(gguf.TokenType.UNKNOWN)
        elif sp.is_byte(i):
            kinds.append(gguf.TokenType.BYTE)
        elif sp.is_unused(i):
            kinds.append(gguf.TokenType.UNUSED)
        else:
            kinds.append(gguf.TokenType.NORMAL)
    return [int(kind) for kind in kinds]


def export_gguf(
    model_or_checkpoint: Transformer | str | os.PathLike,
    tokenizer_model: str | os.PathLike,
    path: str | os.PathLike,
) -> Path:
    """Write the model and its tokenizer as one float32 GGUF file, atomically."""
    import gguf

    model, tokenizer = load_model_and_tokenizer(model_or_checkpoint, tokenizer_model)
    args = model.args
    sp = tokenizer.sp

    writer = gguf.GGUFWriter(path=None, arch="llama")  # the file is named when written: atomic_path's
    writer.add_name("tinyllm")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(args.vocab_size)
    writer.add_context_length(args.max_seq_len)
    writer.add_embedding_length(args.dim)
    writer.add_block_count(args.n_layers)
    writer.add_feed_forward_length(args.hidden_dim)
    writer.add_head_count(args.n_heads)
    writer.add_head_count_kv(args.n_kv_heads)
    writer.add_rope_dimension_count(args.head_dim)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(args.norm_eps)

    writer.add_tokenizer_model("llama")  # SentencePiece: merges by piece score, byte fallback
    writer.add_tokenizer_pre("default")
    writer.add_token_list([sp.id_to_piece(i) for i in range(tokenizer.n_words)])
    writer.add_token_scores([sp.get_score(i) for i in range(tokenizer.n_words)])
    writer.add_token_types(token_types(tokenizer))
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.bos_id)  # see the module docstring
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)  # SentencePiece's dummy "▁" in front of the text
    writer.add_remove_extra_whitespaces(False)  # our tokenizer keeps runs of spaces

    for name, array in gguf_tensors(model).items():
        writer.add_tensor(name, array)
    with atomic_path(path) as tmp:
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
        except BaseException:
            with contextlib.suppress(OSError):  # closed all the same; its buffer cannot reach a full disk
                writer.close()
            raise
    return Path(path)
