"""Sampling text from a trained model: a fast key/value-cached decoder and the no-cache reference.

`generate` prefills the prompt once and then decodes one token per step with a key/value cache, through
`Decoder`: an inference-only copy of the model's weights laid out for small steps (q/k/v and w1/w3 fused
into one matrix each, rotary as one complex multiply, preallocated caches and views, no masks), built once
per model and batch size and reused while the weights stay the same. At batch 1 a step streams the weights
once and otherwise pays per-operation overhead, so fewer, larger operations are what makes it fast.
`generate(..., use_cache=False)` is the reference: it runs the whole (cropped) sequence through
`Transformer.forward` for every new token, as llama2.c's sample.py does; tests and benchmarks compare
against it.

Past max_seq_len both paths keep going with a sliding window. The reference crops the context to the last
max_seq_len tokens at every step. The cached path cannot do that cheaply (every cached key depends on the
tokens before it), so when its cache is full it re-prefills the last `max_seq_len // 2` tokens from
position 0 and decodes on from there: one prefill per max_seq_len // 2 new tokens, and every token still
sees at least half a window of context. The two paths therefore agree exactly up to max_seq_len tokens and
differ (by design) after that.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from tinyllm import paths
from tinyllm.checkpoint import read_checkpoint
from tinyllm.devices import resolve_device
from tinyllm.errors import CheckpointError
from tinyllm.model import Transformer, load_model, rotary_tables


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, vocab).

    temperature 0 is greedy (argmax). Otherwise the logits are divided by the temperature, restricted to
    the top_k most likely tokens (None = all) and then to the smallest set whose probability reaches top_p
    (1.0 = off; the most likely token always stays), and one token is drawn from what is left.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    vocab = logits.shape[-1]
    if top_k is not None and top_k < vocab:
        # topk returns the candidates sorted, which the nucleus cut below needs anyway.
        values, candidates = torch.topk(logits, top_k, dim=-1)
    elif top_p < 1.0:
        values, candidates = torch.sort(logits, dim=-1, descending=True)
    else:
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    probs = torch.softmax(values, dim=-1)
    if top_p < 1.0:
        # Drop a candidate when the ones more likely than it already hold top_p of the mass.
        mass_before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(mass_before >= top_p, 0.0)
    choice = torch.multinomial(probs, 1, generator=generator)
    return candidates.gather(-1, choice).squeeze(-1)


class Decoder:
    """The model's weights rearranged for fast inference, with a preallocated key/value cache.

    `prefill(tokens)` runs a (B, T) block from position 0 and fills the cache; `step(tokens, pos)` runs one
    token per sequence at position pos. Both return the logits of the last position, (B, vocab), float32.

    At batch 1 a step streams every weight once (memory-bound matrix-vector products) and otherwise pays
    per-operation overhead, so the layout cuts operations: q/k/v and w1/w3 are fused into one matrix each,
    every matrix is stored transposed for mm/addmm (the residual add rides along in addmm), the RMSNorm gains
    are folded into the matrix that follows the norm, rotary is one complex multiply over q and k together
    (same interleaved pairs as the model), and keys/values go into preallocated caches with no masks built.
    Built from the model's parameters at construction; later edits to the model are not seen.
    """

    def __init__(self, model: Transformer, batch_size: int):
        args = model.args
        self.batch_size = batch_size
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.max_len = args.max_seq_len
        self.eps = args.norm_eps
        self.qk_width = (args.n_heads + args.n_kv_heads) * args.head_dim

        def transposed(weight: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
            weight = weight.detach().float()
            if gain is not None:  # norm(x) * gain @ W.T == norm(x) @ (W * gain).T
                weight = weight * gain.detach().float()
            return weight.t().contiguous()

        with torch.no_grad():
            self.embedding = model.tok_embeddings.weight.detach().float()
            device = self.embedding.device
            self.layers = []
            for block in model.layers:
                attn, ffn = block.attention, block.feed_forward
                self.layers.append(
                    (
                        transposed(
                            torch.cat([attn.wq.weight, attn.wk.weight, attn.wv.weight]),
                            block.attention_norm.weight,
                        ),
                        transposed(attn.wo.weight),
                        transposed(torch.cat([ffn.w1.weight, ffn.w3.weight]), block.ffn_norm.weight),
                        transposed(ffn.w2.weight),
                    )
                )
            self.output = transposed(model.output.weight, model.norm.weight)
            cos, sin = rotary_tables(args.head_dim, args.max_seq_len)
            self.rotation = torch.complex(cos, sin).to(device)  # (max_len, head_dim // 2)

        cache_shape = (batch_size, args.n_kv_heads, args.max_seq_len, args.head_dim)
        self.k_cache = [torch.zeros(cache_shape, device=device) for _ in model.layers]
        self.v_cache = [torch.zeros(cache_shape, device=device) for _ in model.layers]
        self._make_step_views()

    def _make_step_views(self) -> None:
        """Buffers for one-token steps and every view of them a step needs, made once.

        A step is ~10 tensor operations per layer; building slices and views on the fly would double the
        calls into torch, each costing microseconds. Matrix products write into fixed buffers (out=), whose
        views (q, k, v; gate, up) are therefore always current, and each cache position has a ready view.
        """
        B, H, KV, hd, L = self.batch_size, self.n_heads, self.n_kv_heads, self.head_dim, self.max_len
        device = self.embedding.device
        hidden = self.layers[0][2].shape[1] // 2
        self._qkv = torch.zeros(B, self.layers[0][0].shape[1], device=device)
        qk = torch.view_as_complex(self._qkv[:, : self.qk_width].unflatten(-1, (H + KV, hd // 2, 2)))
        self._q_in, self._k_in = qk[:, :H], qk[:, H:]  # (B, heads, hd/2) complex pairs
        self._v_in = self._qkv[:, self.qk_width :].unflatten(-1, (KV, hd))
        self._q = torch.empty(B, H, 1, hd, device=device)  # rotated queries, as attention takes them
        self._q_out = torch.view_as_complex(self._q.view(B, H, hd // 2, 2))
        self._gate_up = torch.zeros(B, 2 * hidden, device=device)
        self._gate, self._up = self._gate_up[:, :hidden], self._gate_up[:, hidden:]
        self._scalar_norm = B == 1 and device.type == "cpu"
        self._zero_logits = torch.zeros(B, self.output.shape[1], device=device)
        # select/narrow in a loop: unbind() and tuple indexing make these views several times slower.
        self._rotation_at = [self.rotation.select(0, pos) for pos in range(L)]
        self._k_at, self._v_at, self._k_upto, self._v_upto = [], [], [], []
        for k_cache, v_cache in zip(self.k_cache, self.v_cache, strict=True):
            k_pairs = torch.view_as_complex(k_cache.unflatten(-1, (hd // 2, 2)))
            self._k_at.append([k_pairs.select(2, pos) for pos in range(L)])  # rotated keys go straight in
            self._v_at.append([v_cache.select(2, pos) for pos in range(L)])
            self._k_upto.append([k_cache.narrow(2, 0, end) for end in range(L + 1)])
            self._v_upto.append([v_cache.narrow(2, 0, end) for end in range(L + 1)])

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"prefill of {tokens.shape[1]} tokens exceeds max_seq_len={self.max_len}")
        return self._prefill(tokens)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        if pos >= self.max_len:
            raise ValueError(f"position {pos} is past max_seq_len={self.max_len}; re-prefill a window")
        return self._step(tokens, pos)

    def _step(self, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        """One token per sequence at position pos, through the prepared buffers and views."""
        if tokens.shape[0] != self.batch_size:
            raise ValueError(f"batch of {tokens.shape[0]} sequences; this decoder holds {self.batch_size}")
        end, gqa = pos + 1, self.n_heads != self.n_kv_heads
        rotation = self._rotation_at[pos]
        x = F.embedding(tokens, self.embedding)  # (B, dim), a fresh tensor: updated in place below
        for layer, (wqkv, wo, w13, w2) in enumerate(self.layers):
            self._normed_mm(x, wqkv, self._qkv)
            torch.mul(self._q_in, rotation, out=self._q_out)
            torch.mul(self._k_in, rotation, out=self._k_at[layer][pos])
            self._v_at[layer][pos].copy_(self._v_in)
            y = F.scaled_dot_product_attention(
                self._q, self._k_upto[layer][end], self._v_upto[layer][end], enable_gqa=gqa
            )
            x.addmm_(y.view(x.shape[0], -1), wo)
            self._normed_mm(x, w13, self._gate_up)
            x.addmm_(F.silu(self._gate, inplace=True).mul_(self._up), w2)
        return self._normed_mm(x, self.output, None)

    def _normed_mm(self, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """RMSNorm(x) @ weight (the gain is folded into weight), into out or a new tensor."""
        if self._scalar_norm:
            # One sequence on CPU: 1/rms is one number (reading it costs no device sync), handed to the GEMM
            # as alpha, which saves the norm's passes over x. beta=0 ignores the input argument.
            inv_rms = 1.0 / math.sqrt(torch.linalg.vector_norm(x).item() ** 2 / x.shape[1] + self.eps)
            base = self._zero_logits if out is None else out
            return torch.addmm(base, x, weight, beta=0, alpha=inv_rms, out=out)
        normed = F.rms_norm(x, (x.shape[1],), None, self.eps)
        return torch.mm(normed, weight) if out is None else torch.mm(normed, weight, out=out)

    def _inv_rms(self, x: torch.Tensor) -> torch.Tensor:
        return x.square().mean(-1, keepdim=True).add_(self.eps).rsqrt_()

    def _prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Forward of a (B, T) block at positions 0..T-1, keys and values into the cache; last logits."""
        B, T = tokens.shape
        if B != self.batch_size:
            raise ValueError(f"batch of {B} sequences; this decoder's cache holds {self.batch_size}")
        H, KV, hd = self.n_heads, self.n_kv_heads, self.head_dim
        rotation = self.rotation[:T, None, :]  # broadcasts over batch and heads
        x = F.embedding(tokens.reshape(-1), self.embedding)  # (B*T, dim): 2-D keeps addmm usable
        for layer, (wqkv, wo, w13, w2) in enumerate(self.layers):
            qkv = torch.mm(x * self._inv_rms(x), wqkv).view(B, T, -1)
            qk = torch.view_as_complex(qkv[..., : self.qk_width].unflatten(-1, (H + KV, hd // 2, 2)))
            qk = torch.view_as_real(qk * rotation).flatten(-2)  # (B, T, H + KV, hd)
            k_cache, v_cache = self.k_cache[layer], self.v_cache[layer]
            k_cache[:, :, :T] = qk[:, :, H:].transpose(1, 2)
            v_cache[:, :, :T] = qkv[..., self.qk_width :].unflatten(-1, (KV, hd)).transpose(1, 2)
            # The block starts at position 0, so plain causal attention over its own keys is exact.
            y = F.scaled_dot_product_attention(
                qk[:, :, :H].transpose(1, 2),
                k_cache[:, :, :T],
                v_cache[:, :, :T],
                is_causal=T > 1,
                enable_gqa=H != KV,
            )
            x = torch.addmm(x, y.transpose(1, 2).reshape(B * T, -1), wo)
            gate, up = torch.mm(x * self._inv_rms(x), w13).chunk(2, dim=-1)
            x = torch.addmm(x, F.silu(gate).mul_(up), w2)
        last = x.view(B, T, -1)[:, -1]
        return torch.mm(last * self._inv_rms(last), self.output)


_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def decoder_for(model: Transformer, batch_size: int) -> Decoder:
    """A Decoder for model and batch size, reused across calls while the model's parameters are unchanged.

    Building one copies every weight into its layout and makes its views (~50 ms at the reference size, a
    tenth of decoding 256 tokens), so repeated generate calls share it. A parameter that moved, was
    replaced or was changed in place (its version counter) triggers a rebuild. A reused cache is safe:
    every step writes a position before attention reads it.
    """
    signature = tuple((p.data_ptr(), p._version, p.device) for p in model.parameters())
    per_model = _DECODERS.setdefault(model, {})
    cached = per_model.get(batch_size)
    if cached is None or cached[0] != signature:
        cached = per_model[batch_size] = (signature, Decoder(model, batch_size))
    return cached[1]


def generate(
    model: Transformer,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    seed: int | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """num_samples continuations of the token ids in prompt, decoded together as one batch.

    Returns the new tokens of each sample. With eos_id, a sample ends at its first eos_id (which is not
    returned) and decoding stops once every sample has ended. seed makes the draws reproducible; the cached
    and the reference path draw identically from the same seed. See the module docstring for what happens
    past max_seq_len.
    """
    if not prompt:
        raise ValueError("the prompt needs at least one token (for example BOS)")
    if max_new_tokens < 1:
        return [[] for _ in range(num_samples)]
    device = model.tok_embeddings.weight.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)

    max_len = model.args.max_seq_len
    tokens = torch.tensor(prompt, dtype=torch.long, device=device).expand(num_samples, -1)
    seq = torch.empty((num_samples, len(prompt) + max_new_tokens), dtype=torch.long, device=device)
    seq[:, : len(prompt)] = tokens
    length = len(prompt)

    def reference_logits() -> torch.Tensor:
        logits, _ = model(seq[:, max(0, length - max_len) : length])
        return logits[:, -1]

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if use_cache:
                decoder = decoder_for(model, num_samples)
                window = max(1, max_len // 2)
                pos = min(length, max_len)
                logits = decoder.prefill(seq[:, length - pos : length])
            else:
                logits = reference_logits()
            finished = torch.zeros(num_samples, dtype=torch.bool, device=device)
            for i in range(max_new_tokens):
                next_token = sample_next_token(logits, temperature, top_k, top_p, generator)
                seq[:, length] = next_token
                length += 1
                if eos_id is not None:
                    finished |= next_token == eos_id
                    # One sync per step; only paid when stopping at EOS was asked for.
                    if bool(finished.all()):
                        break
                if i == max_new_tokens - 1:
                    break
                if not use_cache:
                    logits = reference_logits()
                elif pos < max_len:
                    logits = decoder.step(next_token, pos)
                    pos += 1
                else:  # cache full: slide the window by re-prefilling its newest half
                    pos = window
                    logits = decoder.prefill(seq[:, length - window : length])
    finally:
        model.train(was_training)

    samples = []
    for row in seq[:, len(prompt) : length].tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id)]
        samples.append(row)
    return samples


# --- samples from a checkpoint (rule sample and `tinyllm sample`) ------------------------------------------

TRAIN_HINT = "run `snakemake --cores all --resources gpu=1` first"


def checkpoint_info(path: str | os.PathLike) -> dict:
    """The checkpoint's model_args, iter_num and config, without reading its tensors into memory."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: {TRAIN_HINT} (or pass --checkpoint)")
    checkpoint = read_checkpoint(path, mmap=True)  # only the small metadata is read
    if not isinstance(checkpoint, dict) or "model_args" not in checkpoint or "model" not in checkpoint:
        raise CheckpointError(f"{path} is not a tinyllm checkpoint (no model/model_args): {TRAIN_HINT}")
    return {
        "model_args": dict(checkpoint["model_args"]),
        "iter_num": checkpoint.get("iter_num"),
        "config": checkpoint.get("config"),
    }


def default_tokenizer_path(checkpoint: str | os.PathLike, vocab_size: int) -> Path:
    """The pipeline's tokenizer for this vocabulary size, in the results folder that holds the checkpoint.

    A checkpoint at <results>/train/ckpt.pt or <results>/experiments/NAME/ckpt.pt finds
    <results>/tok{V}/tok{V}.model; any other checkpoint falls back to ./results.
    """
    relative = Path(paths.tokenizer_model(vocab_size)).relative_to(paths.RESULTS)
    for results in Path(checkpoint).resolve().parents:
        if (results / relative).is_file():
            return results / relative
    return Path(paths.tokenizer_model(vocab_size))


def load_tokenizer(path: str | os.PathLike, vocab_size: int, checkpoint: str | os.PathLike):
    """The tokenizer at path, checked against the checkpoint's vocabulary size."""
    from tinyllm.tokenizer import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no tokenizer at {path}: {TRAIN_HINT} (or pass --tokenizer)")
    tokenizer = Tokenizer(path)
    if tokenizer.n_words != vocab_size:
        raise CheckpointError(
            f"tokenizer {path} has {tokenizer.n_words} tokens but checkpoint {checkpoint} was trained with "
            f"vocab_size {vocab_size}: pass --tokenizer {paths.tokenizer_model(vocab_size)}"
        )
    return tokenizer


def sample_texts(
    model: Transformer, tokenizer, prompt: str, settings: dict, stop_at_story_end: bool = True
) -> list[str]:
    """settings["num_samples"] continuations of prompt (text including the prompt), decoded as one batch.

    settings holds the sample section's knobs: num_samples, max_new_tokens, temperature, top_k, top_p, seed.
    A sample ends where the model starts the next story: the pretokenized shards put BOS before every story
    and no EOS after it (llama2.c's layout), so a trained model ends a story by predicting BOS, and run.c
    stops there too.
    """
    prompt_ids = tokenizer.encode(prompt, bos=True, eos=False)
    samples = generate(
        model,
        prompt_ids,
        settings["max_new_tokens"],
        num_samples=settings["num_samples"],
        temperature=settings["temperature"],
        top_k=settings.get("top_k"),
        top_p=settings.get("top_p", 1.0),
        seed=settings.get("seed"),
        eos_id=tokenizer.bos_id if stop_at_story_end else None,
    )
    return [tokenizer.decode(prompt_ids + new_ids) for new_ids in samples]


def settings_header(checkpoint: str | os.PathLike, info: dict, settings: dict) -> str:
    knobs = ("temperature", "top_k", "top_p", "seed", "max_new_tokens", "num_samples")
    return (
        f"# checkpoint: {checkpoint} (iteration {info['iter_num']})\n"
        + "# "
        + "  ".join(f"{k}: {settings.get(k)}" for k in knobs)
        + "\n"
    )


def write_samples(
    checkpoint: str | os.PathLike,
    tokenizer_path: str | os.PathLike,
    output: str | os.PathLike,
    settings: dict,
    device: str = "auto",
) -> Path:
    """Rule sample: for each of settings["prompts"], num_samples continuations, into output (atomically).

    The file opens with a header of the settings, then per prompt and sample a "## prompt i, sample j"
    line followed by the text.
    """
    from tinyllm.files import atomic_output

    info = checkpoint_info(checkpoint)
    vocab_size = info["model_args"]["vocab_size"]
    tokenizer = load_tokenizer(tokenizer_path, vocab_size, checkpoint)
    model = load_model(checkpoint, resolve_device(device))
    parts = [settings_header(checkpoint, info, settings)]
    for p, prompt in enumerate(settings["prompts"], start=1):
        for s, text in enumerate(sample_texts(model, tokenizer, prompt, settings), start=1):
            parts.append(f"\n## prompt {p}, sample {s}\n{text}\n")
    output = Path(output)
    with atomic_output(output, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(parts))
    return output
