"""Decoding: the next-token sampler, a key/value-cached `Decoder`, and `generate`.

`Decoder` holds the model's weights laid out for small steps and a key/value cache of `rows` sequences, each
at its own position, so one batch can mix sequences that started at different times (the server's continuous
batching) as well as decode num_samples continuations of one prompt together (`generate`).
`generate(..., use_cache=False)` is the reference: it runs the whole (cropped) sequence through
`Transformer.forward` for every new token, as llama2.c's sample.py does; tests and benchmarks compare
against it.

Past max_seq_len both paths keep going with a sliding window. The reference crops the context to the last
max_seq_len tokens at every step. The cached path cannot do that cheaply (every cached key depends on the
tokens before it), so when a row's cache is full it re-prefills the row's last `max_seq_len // 2` tokens from
position 0 and decodes on from there: one prefill per max_seq_len // 2 new tokens, and every token still
sees at least half a window of context. The two paths therefore agree exactly up to max_seq_len tokens and
differ (by design) after that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tinyllm.model import Transformer


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, vocab).

    temperature 0 is greedy (argmax). Otherwise the logits are divided by the temperature, restricted to
    the top_k most likely tokens (None = all) and then to the smallest set whose probability reaches top_p
    (1.0 = off; the most likely token always stays), and one token is drawn from what is left. generator:
    one for the batch, or one per row (the server's completions), each row then drawn as if alone.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    candidates = None
    if top_k is not None and top_k < logits.shape[-1]:
        # topk returns the candidates sorted, which the nucleus cut below needs anyway.
        logits, candidates = torch.topk(logits, top_k, dim=-1)
    elif top_p < 1.0:
        logits, candidates = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        # Drop a candidate when the ones more likely than it already hold top_p of the mass.
        mass_before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(mass_before >= top_p, 0.0)
    if isinstance(generator, Sequence):
        choice = torch.stack(
            [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generator, strict=True)]
        )
    else:
        choice = torch.multinomial(probs, 1, generator=generator)
    return (choice if candidates is None else candidates.gather(-1, choice)).squeeze(-1)


class DenseMatmul:
    """x @ W.T for a float32 weight W (out, in), stored transposed: at batch 1 mm reads it 1.5x faster."""

    def __init__(self, weight: torch.Tensor):
        self.weight_t = weight.float().t().contiguous()
        self.out_features = weight.shape[0]

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None, alpha: float = 1.0) -> torch.Tensor:
        """alpha * x @ W.T, into out if given (beta=0: out's old values are not read)."""
        if out is None:
            return torch.mm(x, self.weight_t).mul_(alpha)
        return torch.addmm(out, x, self.weight_t, beta=0, alpha=alpha, out=out)

    def add_to(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x.addmm_(y, self.weight_t)


def decoding_layout(model: Transformer, int8: bool = False) -> tuple[list[tuple], object]:
    """The model's matrices as the decoder multiplies them: per layer (qkv, wo, w13, w2), and the output.

    q/k/v and w1/w3 are fused into one matrix each (one product instead of three and two), and each RMSNorm
    gain is folded into the matrix that follows the norm: norm(x) * g @ W.T == norm(x) @ (W * g).T. int8
    quantizes every matrix (tinyllm.quantize); the embedding stays float32, as a lookup reads one row.
    """
    if int8:
        from tinyllm.quantize import Int8Matmul as matmul
    else:
        matmul = DenseMatmul

    def fused(linears, gain=None) -> object:
        weight = torch.cat([linear.weight.detach().float() for linear in linears])  # a copy: safe to scale
        return matmul(weight if gain is None else weight.mul_(gain.detach().float()))

    layers = []
    for block in model.layers:
        attention, ffn = block.attention, block.feed_forward
        layers.append((
            fused([attention.wq, attention.wk, attention.wv], block.attention_norm.weight),
            fused([attention.wo]),
            fused([ffn.w1, ffn.w3], block.ffn_norm.weight),
            fused([ffn.w2]),
        ))  # fmt: skip
    return layers, fused([model.output], model.norm.weight)


def normed_matmul(x: torch.Tensor, matmul, out: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm(x) @ W, the gain folded into W: each row's 1/rms scales its product (one pass fewer over x).

    One row on the CPU (batch-1 decoding) takes its 1/rms as a number, read without a device sync, which the
    product applies as it goes: four operations fewer than a tensor of one 1/rms per row, 6% of a step.
    """
    if x.shape[0] == 1 and x.device.type == "cpu":
        return matmul(x, out, alpha=(torch.linalg.vector_norm(x).item() ** 2 / x.shape[1] + eps) ** -0.5)
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return matmul(x, out).mul_(norm.square_().div_(x.shape[1]).add_(eps).rsqrt_())


class Decoder:
    """The model's weights (decoding_layout) and a key/value cache of `rows` sequences, each at its position.

    - prefill(tokens (B, T), first_row): positions 0..T-1 of rows first_row.. (a new sequence, or a slid
      window); returns each row's last logits (B, vocab), or all (B, T, vocab) with all_positions.
    - step(tokens (B,), positions): one token for each of rows 0..B-1, row b's at positions[b]; (B, vocab).
    - move(source, dest): copies a row, so a caller keeps its live rows packed at the front.
    Built from the model's parameters at construction: later edits to the model are not seen.
    """

    def __init__(self, model: Transformer, rows: int, int8: bool = False):
        args = self.args = model.args
        self.rows, self.max_len, self.eps = rows, args.max_seq_len, args.norm_eps
        H, KV, hd, L = args.n_heads, args.n_kv_heads, args.head_dim, self.max_len
        with torch.no_grad():
            self.embedding = model.tok_embeddings.weight.detach().float()
            self.layers, self.output = decoding_layout(model, int8)
        self.rotation = torch.complex(model.rope_cos, model.rope_sin).to(self.embedding.device)
        # Row r's key and value at position p lie side by side in row r * L + p of a layer's cache, as the qkv
        # product lays them out (one index_copy_ stores both, for every row); keys and values are views of it.
        self.cache = torch.zeros(args.n_layers, rows * L, 2 * KV * hd, device=self.embedding.device)
        self.by_row = self.cache.view(args.n_layers, rows, L, 2, KV, hd)
        self.layer_views = [(cache, kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2))
                            for cache, kv in zip(self.cache, self.by_row, strict=True)]  # fmt: skip
        self.qkv_width, self.q_width = (H + 2 * KV) * hd, H * hd
        self.buffers_shape = None

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, first_row: int = 0, all_positions: bool = False) -> torch.Tensor:
        B, T = tokens.shape
        if T > self.max_len or first_row + B > self.rows:
            raise ValueError(f"{B}x{T} tokens at row {first_row}: the cache holds {self.rows}x{self.max_len}")
        positions = torch.arange(T, device=tokens.device).expand(B, T)
        return self._forward(tokens, first_row, positions, T, all_positions)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
        end = max(positions) + 1
        if end > self.max_len or len(positions) > self.rows:
            raise ValueError(f"position {end - 1} is past max_seq_len={self.max_len}; re-prefill a window")
        at = torch.tensor(positions).to(tokens.device)[:, None]
        # Rows at different positions see only their own keys; rows all at one position need no mask.
        mask = None if min(positions) == end - 1 else torch.arange(end, device=at.device) <= at[:, None, None]
        return self._forward(tokens[:, None], 0, at, end, False, mask)

    def move(self, source: int, dest: int) -> None:
        self.by_row[:, dest] = self.by_row[:, source]

    def _forward(self, tokens, first_row, positions, end, all_positions, mask=None) -> torch.Tensor:
        """tokens (B, T) at positions (B, T) of rows first_row..; attention over keys [0, end)."""
        B, T = tokens.shape
        H, KV = self.args.n_heads, self.args.n_kv_heads
        rows = slice(first_row, first_row + B)
        starts = torch.arange(first_row, first_row + B, device=tokens.device)[:, None] * self.max_len
        cache_rows = (positions + starts).view(-1)  # row r's position p is row r * L + p of the cache
        rotation = self.rotation.index_select(0, positions.reshape(-1)).view(B, T, 1, -1)  # over heads
        if self.buffers_shape != (B, T):  # steps of one batch size reuse them
            self.buffers_shape, self.buffers = (B, T), product_buffers(self, B, T, tokens.device)
        qkv, hidden, pairs, q, gate, up, new_keys_values = self.buffers
        x = F.embedding(tokens.reshape(-1), self.embedding)  # (B*T, dim), updated in place below
        for (wqkv, wo, w13, w2), (cache, keys, values) in zip(self.layers, self.layer_views, strict=True):
            normed_matmul(x, wqkv, qkv, self.eps)
            pairs.mul_(rotation)
            cache.index_copy_(0, cache_rows, new_keys_values)
            keys, values = keys[rows, :, :end], values[rows, :, :end]
            y = F.scaled_dot_product_attention(
                q, keys, values, mask, is_causal=T > 1, enable_gqa=T > 1 and H != KV
            )
            wo.add_to(x, y.reshape(B, -1) if T == 1 else y.transpose(1, 2).reshape(B * T, -1))
            normed_matmul(x, w13, hidden, self.eps)
            w2.add_to(x, F.silu(gate, inplace=True).mul_(up))
        if all_positions:
            return normed_matmul(x, self.output, None, self.eps).view(B, T, -1)
        return normed_matmul(x.view(B, T, -1)[:, -1], self.output, None, self.eps)


def product_buffers(decoder: Decoder, B: int, T: int, device) -> tuple[torch.Tensor, ...]:
    """Buffers the products of a (B, T) call land in, and the views of them that every layer reads: q, the
    rotated pairs, the new keys and values, gate and up (a view costs as much as a small operation at
    batch 1, so they are made once, not per layer or per step)."""
    H, KV, hd = decoder.args.n_heads, decoder.args.n_kv_heads, decoder.args.head_dim
    qkv = torch.empty(B * T, decoder.qkv_width, device=device)
    hidden = torch.empty(B * T, decoder.layers[0][2].out_features, device=device)
    pairs = torch.view_as_complex(qkv[:, : decoder.qkv_width - KV * hd].view(B, T, H + KV, hd // 2, 2))
    # One token per row: the query heads that share a key/value head become its queries (no expansion).
    q = qkv[:, : decoder.q_width]
    q = q.view(B, KV, H // KV, hd) if T == 1 else q.view(B, T, H, hd).transpose(1, 2)
    return (qkv, hidden, pairs, q, *hidden.chunk(2, dim=-1), qkv[:, decoder.q_width :])


class _CachedLogits:
    """generate's cached path: the logits after each sequence's newest token, every row at one position.

    The first call prefills the prompt's last max_seq_len tokens; a call with the cache full re-prefills the
    newest max_seq_len // 2 (the sliding window in the module docstring); any other call is one step.
    """

    def __init__(self, decoder: Decoder):
        self.decoder, self.position = decoder, 0

    def __call__(self, seq: torch.Tensor, length: int) -> torch.Tensor:
        max_len = self.decoder.args.max_seq_len
        if self.position in (0, max_len):
            keep = min(length, max_len) if self.position == 0 else max(1, max_len // 2)
            self.position = keep
            return self.decoder.prefill(seq[:, length - keep : length])
        self.position += 1
        return self.decoder.step(seq[:, length - 1], [self.position - 1] * seq.shape[0])


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
    int8: bool = False,
    decoder: Decoder | None = None,
) -> list[list[int]]:
    """num_samples continuations of the token ids in prompt, decoded together as one batch.

    Returns the new tokens of each sample. With eos_id, a sample ends at its first eos_id (which is not
    returned) and decoding stops once every sample has ended. seed makes the draws reproducible; the cached
    and the reference path draw identically from the same seed. int8 decodes with int8 weights
    (tinyllm.quantize; cached path only). decoder: a Decoder of this model with num_samples rows to reuse
    (building one copies every weight, about 30 ms at the reference size); by default a new one.
    See the module docstring for what happens past max_seq_len.
    """
    if not prompt:
        raise ValueError("the prompt needs at least one token (for example BOS)")
    device = model.tok_embeddings.weight.device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    seq = torch.empty((num_samples, len(prompt) + max(0, max_new_tokens)), dtype=torch.long, device=device)
    seq[:, : len(prompt)] = torch.tensor(prompt, dtype=torch.long, device=device)
    length, finished = len(prompt), torch.zeros(num_samples, dtype=torch.bool, device=device)
    max_len = model.args.max_seq_len

    def reference_logits(seq: torch.Tensor, length: int) -> torch.Tensor:  # the (cropped) sequence, each time
        return model(seq[:, max(0, length - max_len) : length])[0][:, -1]

    next_logits = (
        _CachedLogits(decoder or Decoder(model, num_samples, int8)) if use_cache else reference_logits
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            # Stopping at EOS costs one device sync per step, paid only when it was asked for.
            while length < seq.shape[1] and not (eos_id is not None and bool(finished.all())):
                token = sample_next_token(next_logits(seq, length), temperature, top_k, top_p, generator)
                seq[:, length] = token
                length += 1
                if eos_id is not None:
                    finished |= token == eos_id
    finally:
        model.train(was_training)
    samples = seq[:, len(prompt) : length].tolist()
    return [row[: row.index(eos_id)] if eos_id in row else row for row in samples]
