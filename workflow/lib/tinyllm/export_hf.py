"""Export a trained model as a Hugging Face Llama folder that transformers loads with nothing else installed.

The folder holds paths.HF_EXPORT_FILES:

- config.json and model.safetensors for `LlamaForCausalLM.from_pretrained`. transformers' rotary rotates
  the first half of each head against the second half (rotate_half), ours rotates interleaved pairs, so the
  rows of wq and wk are permuted per head: pair i's rows (2i, 2i+1) move to rows i and i + head_size/2.
  q.k products are unchanged by permuting q and k alike, so the model is the same.
- tokenizer.json: our SentencePiece BPE model rebuilt with the `tokenizers` library (as LlamaTokenizerFast
  builds it), so AutoTokenizer needs neither sentencepiece nor protobuf; tokenizer_config.json,
  special_tokens_map.json. It adds BOS and no EOS, as training saw every story. tokenizer.model (the
  SentencePiece file) stays beside it for tools that read that.
- generation_config.json: generation stops at BOS, the story separator, where our sampler stops.

The rebuilt tokenizer gives SentencePiece's ids for every text that does not start with a space: there,
LlamaTokenizerFast's Metaspace pre-tokenizer adds no second "▁" where SentencePiece's dummy prefix does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from tinyllm.checkpoint import load_model_and_tokenizer
from tinyllm.files import atomic_output
from tinyllm.model import ROPE_THETA, ModelArgs, Transformer
from tinyllm.tokenizer import WORD_BOUNDARY, Tokenizer


def interleaved_to_half_rotary(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a (n_heads * head_size, in) projection reordered from interleaved-pair to rotate_half rotary.

    Within each head, row 2i goes to row i and row 2i+1 to row i + head_size/2.
    """
    rows, cols = weight.shape
    head_size = rows // n_heads
    return weight.view(n_heads, head_size // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def half_to_interleaved_rotary(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of interleaved_to_half_rotary: rows i and i + head_size/2 go back to rows 2i and 2i+1."""
    rows, cols = weight.shape
    head_size = rows // n_heads
    return weight.view(n_heads, 2, head_size // 2, cols).transpose(1, 2).reshape(rows, cols)


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


# Our parameter names -> transformers' (per layer, under model.layers.{i}.), wq/wk permuted on the way.
HF_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
HF_TOP_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our weights under transformers' Llama names, fp32 and contiguous.

    lm_head.weight is left out: it is the embedding (tie_word_embeddings), safetensors refuses to store one
    tensor twice, and transformers re-ties it on load.
    """
    args = model.args
    tensors = {hf: model.get_parameter(ours) for ours, hf in HF_TOP_NAMES.items()}
    for i, block in enumerate(model.layers):
        for ours, hf in HF_LAYER_NAMES.items():
            weight = block.get_parameter(ours)
            if ours == "attention.wq.weight":
                weight = interleaved_to_half_rotary(weight, args.n_heads)
            elif ours == "attention.wk.weight":
                weight = interleaved_to_half_rotary(weight, args.n_kv_heads)
            tensors[f"model.layers.{i}.{hf}"] = weight
    return {name: t.detach().to("cpu", torch.float32).contiguous().clone() for name, t in tensors.items()}


# --- the tokenizer ------------------------------------------------------------------------------------------


def bpe_merges(tokenizer: Tokenizer) -> list[tuple[str, str]]:
    """The BPE merges that reproduce SentencePiece's encoding, highest-priority first.

    SentencePiece's BPE repeatedly joins the adjacent pair whose union is the highest-scoring piece; a merge
    list in the order of the pieces' scores does the same. Each piece gets a merge for every way it splits
    into two pieces of the vocabulary (which split applies depends on what the text merged before).
    """
    sp = tokenizer.sp
    ids = {sp.id_to_piece(i): i for i in range(tokenizer.n_words) if _is_normal(sp, i)}
    merges = []
    for piece in sorted(ids, key=lambda p: -sp.get_score(ids[p])):
        halves = ((piece[:k], piece[k:]) for k in range(1, len(piece)))
        splits = [(left, right) for left, right in halves if left in ids and right in ids]
        merges += sorted(splits, key=lambda pair: (ids[pair[0]], ids[pair[1]]))
    return merges


def _is_normal(sp, i: int) -> bool:
    return not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))


def hf_tokenizer(tokenizer: Tokenizer):
    """A `tokenizers.Tokenizer` equal to our SentencePiece model, laid out as LlamaTokenizerFast's.

    BPE over the whole text with byte fallback (unknown characters become <0xNN> pieces), "▁" for spaces
    and in front of the text (Metaspace, prepend_scheme "first", no splitting), BOS put in front by the
    post-processor. transformers 5 rebuilds exactly this pipeline around the vocabulary and merges when it
    loads a LlamaTokenizerFast; transformers 4 and `tokenizers` take it from the file as it is.
    """
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as FastTokenizer

    sp = tokenizer.sp
    vocab = {sp.id_to_piece(i): i for i in range(tokenizer.n_words)}
    unk = sp.id_to_piece(sp.unk_id())
    bos = sp.id_to_piece(tokenizer.bos_id)
    fast = FastTokenizer(
        models.BPE(
            vocab=vocab, merges=bpe_merges(tokenizer), unk_token=unk, fuse_unk=True, byte_fallback=True
        )
    )
    fast.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=WORD_BOUNDARY, prepend_scheme="first", split=False
    )
    fast.decoder = decoders.Sequence(
        [
            decoders.Replace(WORD_BOUNDARY, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),  # the "▁" put in front of the text
        ]
    )
    fast.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_id)]
    )
    specials = [i for i in range(tokenizer.n_words) if sp.is_control(i) or sp.is_unknown(i)]
    fast.add_special_tokens([AddedToken(sp.id_to_piece(i), special=True, normalized=False) for i in specials])
    return fast


def special_tokens_map(tokenizer: Tokenizer) -> dict:
    sp = tokenizer.sp
    return {
        "bos_token": sp.id_to_piece(tokenizer.bos_id),
        "eos_token": sp.id_to_piece(tokenizer.eos_id),
        "unk_token": sp.id_to_piece(sp.unk_id()),
    }


def tokenizer_config(tokenizer: Tokenizer, max_seq_len: int) -> dict:
    return {
        "tokenizer_class": "LlamaTokenizerFast",
        **special_tokens_map(tokenizer),
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": max_seq_len,
        "clean_up_tokenization_spaces": False,
        "legacy": False,  # silences transformers 4's notice; 5 builds the tokenizer above for legacy=False
    }


def generation_config(tokenizer: Tokenizer, max_seq_len: int) -> dict:
    """Generation ends where the model starts the next story: the shards put BOS before every story and
    no EOS after it, so a trained model ends a story by predicting BOS (and never predicts EOS)."""
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.bos_id, "max_length": max_seq_len}


# --- the folder --------------------------------------------------------------------------------------------


def export_hf(
    model_or_checkpoint: Transformer | str | os.PathLike,
    tokenizer_model: str | os.PathLike,
    folder: str | os.PathLike,
) -> Path:
    """Write the folder's files (paths.HF_EXPORT_FILES), each atomically."""
    from safetensors.torch import save as safetensors_bytes

    model, tokenizer = load_model_and_tokenizer(model_or_checkpoint, tokenizer_model)
    max_seq_len = model.args.max_seq_len
    contents = {
        "config.json": _json(hf_config(model.args, tokenizer.bos_id, tokenizer.eos_id)),
        "generation_config.json": _json(generation_config(tokenizer, max_seq_len)),
        "model.safetensors": safetensors_bytes(hf_state_dict(model), metadata={"format": "pt"}),
        "special_tokens_map.json": _json(special_tokens_map(tokenizer)),
        "tokenizer.json": hf_tokenizer(tokenizer).to_str(pretty=True).encode("utf-8"),
        "tokenizer.model": Path(tokenizer_model).read_bytes(),
        "tokenizer_config.json": _json(tokenizer_config(tokenizer, max_seq_len)),
    }
    folder = Path(folder)
    for name, content in contents.items():
        with atomic_output(folder / name) as f:
            f.write(content)
    return folder


def _json(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
