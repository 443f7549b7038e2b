"""tinyllm.export_gguf: the file read back with gguf's own reader, and run by llama.cpp itself (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, make_random_model
from tinyllm.export_gguf import export_gguf
from tinyllm.generate import generate
from tinyllm.model import Transformer, load_model
from tinyllm.shards import load_stories
from tinyllm.tokenizer import Tokenizer

gguf = pytest.importorskip("gguf")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYER_TENSORS = {  # llama.cpp's name (under blk.N.) -> our parameter (under layers.N.)
    "attn_norm": "attention_norm",
    "attn_q": "attention.wq",
    "attn_k": "attention.wk",
    "attn_v": "attention.wv",
    "attn_output": "attention.wo",
    "ffn_norm": "ffn_norm",
    "ffn_gate": "feed_forward.w1",
    "ffn_down": "feed_forward.w2",
    "ffn_up": "feed_forward.w3",
}


def fields(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def tensors(path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


@pytest.fixture(scope="module")
def model() -> Transformer:
    return make_random_model(seed=5, scale=3.0)


@pytest.fixture(scope="module")
def gguf_file(model, small_tokenizer, tmp_path_factory):
    return export_gguf(model, small_tokenizer, tmp_path_factory.mktemp("export") / "model.gguf")


def test_metadata_describes_a_llama_model(gguf_file, model):
    meta = fields(gguf_file)
    args = model.args
    assert meta["general.architecture"] == "llama"
    assert meta["general.file_type"] == gguf.LlamaFileType.ALL_F32
    assert meta["llama.context_length"] == args.max_seq_len == TINY_MODEL["max_seq_len"]
    assert meta["llama.embedding_length"] == args.dim
    assert meta["llama.block_count"] == args.n_layers
    assert meta["llama.feed_forward_length"] == args.hidden_dim
    heads = (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"])
    assert heads == (args.n_heads, args.n_kv_heads) == (TINY_MODEL["n_heads"], TINY_MODEL["n_kv_heads"])
    assert meta["llama.rope.dimension_count"] == args.head_dim
    assert meta["llama.rope.freq_base"] == 10000.0
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert meta["llama.vocab_size"] == args.vocab_size == TINY_MODEL["vocab_size"]


def test_the_tokenizer_is_embedded(gguf_file, small_tokenizer):
    meta = fields(gguf_file)
    sp = Tokenizer(small_tokenizer).sp
    assert meta["tokenizer.ggml.model"] == "llama"  # SentencePiece
    assert meta["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(512)]
    assert meta["tokenizer.ggml.scores"] == pytest.approx([sp.get_score(i) for i in range(512)])
    types = meta["tokenizer.ggml.token_type"]
    assert types[:3] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    assert types[3:259] == [gguf.TokenType.BYTE] * 256  # <0x00> ... <0xFF>
    assert set(types[259:]) == {gguf.TokenType.NORMAL}
    assert meta["tokenizer.ggml.tokens"][3 + 10] == "<0x0A>"
    # Generation stops at BOS, the story separator (see export_gguf's docstring).
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 1)
    assert meta["tokenizer.ggml.unknown_token_id"] == 0
    assert (meta["tokenizer.ggml.add_bos_token"], meta["tokenizer.ggml.add_eos_token"]) == (True, False)
    assert meta["tokenizer.ggml.add_space_prefix"] is True


def test_tensors_are_our_weights_in_llama_cpp_names_and_shapes(gguf_file, model):
    found = tensors(gguf_file)
    ours = {name: p.detach().numpy() for name, p in model.named_parameters()}
    expected = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight"}
    for layer in range(TINY_MODEL["n_layers"]):
        expected.update(
            {f"blk.{layer}.{k}.weight": f"layers.{layer}.{v}.weight" for k, v in LAYER_TENSORS.items()}
        )
    assert sorted(found) == sorted(expected)  # no output.weight: tied, llama.cpp reuses token_embd
    for name, our_name in expected.items():
        tensor = found[name]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(tensor.shape) == list(reversed(ours[our_name].shape))  # ggml lists dimensions inner first
        # q and k rows stay in our interleaved rotary order, the order llama.cpp's llama architecture uses.
        np.testing.assert_array_equal(tensor.data, ours[our_name], err_msg=name)


def test_an_untied_output_layer_is_written(small_tokenizer, tmp_path):
    model = make_random_model(seed=6, tied=False)
    found = tensors(export_gguf(model, small_tokenizer, tmp_path / "model.gguf"))
    np.testing.assert_array_equal(found["output.weight"].data, model.output.weight.detach().numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]  # no temporary file left


def test_export_reads_a_checkpoint(story_model, small_tokenizer, tmp_path):
    """(A tokenizer of another size: tests/faults/test_outputs.py.)"""
    path = export_gguf(story_model, small_tokenizer, tmp_path / "a.gguf")
    embedding = tensors(path)["token_embd.weight"].data
    np.testing.assert_array_equal(embedding, load_model(story_model).tok_embeddings.weight.detach().numpy())


# --- llama.cpp itself ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip(
        "llama_cpp",
        reason="llama-cpp-python is not installed: `pip install -e '.[llamacpp]'` builds llama.cpp from "
        "source (needs a C++ compiler and cmake; 27 minutes on 2 busy cores)",
    )


def load_in_llama_cpp(llama_cpp, path, **options):
    # A float32 key/value cache: llama.cpp's default float16 one moves the logits by ~5e-4.
    f32 = llama_cpp.GGML_TYPE_F32
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=64, n_threads=1, verbose=False, seed=0, type_k=f32, type_v=f32, **options
    )


@pytest.mark.slow
def test_llama_cpp_tokenizes_like_sentencepiece(llama_cpp, gguf_file, shards_dir, small_tokenizer):
    llm = load_in_llama_cpp(llama_cpp, gguf_file, vocab_only=True)
    ours = Tokenizer(small_tokenizer)
    for story in load_stories(shards_dir / "data00.json"):
        assert llm.tokenize(story.encode("utf-8"), add_bos=True) == ours.encode(story, bos=True, eos=False)


@pytest.mark.slow
def test_llama_cpp_logits_equal_ours(llama_cpp, gguf_file, model):
    llm = load_in_llama_cpp(llama_cpp, gguf_file, logits_all=True)
    tokens = [1, 37, 400, 12, 99, 255, 3, 511, 64, 200, 7, 42]
    llm.eval(tokens)
    theirs = np.array(llm.scores[: len(tokens)])
    with torch.no_grad():
        ours = model(torch.tensor([tokens]))[0][0].numpy()
    assert np.abs(ours).max() > 1.0  # spread-out logits, not a near-zero comparison
    # (q and k rows in rotate_half order instead would be off by ~0.3.)
    assert np.abs(theirs - ours).max() < 1e-4


@pytest.mark.slow
def test_llama_cpp_greedy_continuation_equals_ours_and_ends_with_the_story(
    llama_cpp, story_model, small_tokenizer, tmp_path
):
    path = export_gguf(story_model, small_tokenizer, tmp_path / "story.gguf")
    tokenizer = Tokenizer(small_tokenizer)
    prompt, max_new_tokens = "Once upon a time", 50
    prompt_ids = tokenizer.encode(prompt, bos=True, eos=False)
    ours = generate(load_model(story_model), prompt_ids, max_new_tokens, temperature=0.0, eos_id=1)[0]
    assert 10 < len(ours) < max_new_tokens - 1  # the model ends its story well before the limit

    llm = load_in_llama_cpp(llama_cpp, path)
    theirs = []
    for token in llm.generate(prompt_ids, temp=0.0, repeat_penalty=1.0):
        if token == tokenizer.bos_id or len(theirs) == max_new_tokens:
            break
        theirs.append(token)
    assert theirs == ours
    # llama.cpp itself ends generation there: BOS is an end-of-generation token of this file.
    completion = llm.create_completion(prompt, max_tokens=max_new_tokens, temperature=0.0, repeat_penalty=1.0)
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert prompt + completion["choices"][0]["text"] == tokenizer.decode(prompt_ids + ours)
