"""A Llama-2-style decoder-only Transformer, readable top to bottom.

RMSNorm, rotary position embeddings (interleaved pairs, as llama2.c and run.c use them), grouped-query
attention through scaled_dot_product_attention (or, for bf16 training on CPU, two batched matmuls, which
are faster there), a SwiGLU feed-forward, and a token embedding tied to the output layer. This is the
training and reference forward; tinyllm.generate.Decoder runs the same weights one token at a time with a
key/value cache.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tinyllm.checkpoint import read_checkpoint
from tinyllm.config import check_model_shape


@dataclass
class ModelArgs:
    dim: int = 288
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int | None = 4
    vocab_size: int = 4096
    hidden_dim: int | None = None  # None: 2/3 of 4*dim, rounded up to multiple_of
    multiple_of: int = 32
    norm_eps: float = 1e-5
    max_seq_len: int = 256
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        check_model_shape(self.dim, self.n_heads, self.n_kv_heads)  # raises ConfigError, a ValueError
        if self.hidden_dim is None:
            hidden = int(2 * (4 * self.dim) / 3)
            self.hidden_dim = self.multiple_of * math.ceil(hidden / self.multiple_of)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelArgs:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 even under bf16 autocast: 8 mantissa bits lose too much in the mean of squares.
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        # Under autocast, hand the next layers their compute dtype once: otherwise each of the linear layers
        # that read this output (wq, wk, wv; w1, w3) casts the same activations again.
        device = x.device.type
        if torch.is_autocast_enabled(device):
            return out.to(torch.get_autocast_dtype(device))
        return out.type_as(x)


ROPE_THETA = 10000.0  # rotary base, as Llama 2 (run.c hardcodes it; the HF and GGUF exports write it)


def rotary_tables(head_dim: int, max_len: int, theta: float = ROPE_THETA) -> tuple[torch.Tensor, ...]:
    """cos and sin of shape (max_len, head_dim // 2) for rotating pairs (x[2i], x[2i+1])."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (B, T, H, D) by the angles in cos/sin (T, D/2)."""
    if torch.compiler.is_compiling():
        # Inductor fuses the real-valued form into one kernel but cannot generate code for complex numbers.
        xf = x.float().unflatten(-1, (-1, 2))
        x0, x1 = xf[..., 0], xf[..., 1]
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
        out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
        return out.flatten(-2).type_as(x)
    # Eager: each pair is a complex number x0 + i*x1 and the rotation a complex product, one kernel (and one
    # in the backward) instead of the four products, two sums and a stack of the real-valued form (7x faster).
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
    rotation = torch.complex(cos, sin)[None, :, None, :]
    return torch.view_as_real(pairs * rotation).flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.dropout = args.dropout
        self.resid_dropout = nn.Dropout(args.dropout)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, head_dim)

        dropout = self.dropout if self.training else 0.0
        if not x.is_cuda and q.dtype != torch.float32:
            y = self._causal_attention_cpu(q, k, v, dropout)
        else:
            # Grouped-query attention: each key/value head serves n_heads // n_kv_heads consecutive heads.
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=dropout, enable_gqa=self.n_kv_heads != self.n_heads
            )
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.resid_dropout(self.wo(y))

    def _causal_attention_cpu(self, q, k, v, dropout: float) -> torch.Tensor:
        """Causal attention as two batched matmuls, for bf16 training on CPU.

        On CPU, scaled_dot_product_attention's flash kernel is slow in the bf16 backward pass (forward and
        backward take 2.5x this; in float32 it is 20% faster than this, so float32 keeps it). Here the scale
        and the causal mask fold into one baddbmm, and the query heads that share a key/value head are
        stacked into one matrix, so keys and values are never repeated.
        """
        B, _, T, D = q.shape
        group = self.n_heads // self.n_kv_heads
        q = q.reshape(B * self.n_kv_heads, group * T, D)
        k = k.reshape(B * self.n_kv_heads, T, D)
        v = v.reshape(B * self.n_kv_heads, T, D)
        causal_bias = torch.full((T, T), float("-inf"), device=q.device).triu(1).repeat(group, 1)
        scores = torch.baddbmm(causal_bias.to(q.dtype), q, k.transpose(1, 2), alpha=D**-0.5)
        probs = F.dropout(torch.softmax(scores, dim=-1), dropout)
        return torch.bmm(probs.to(v.dtype), v).view(B, self.n_heads, T, D)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)
        self.w3 = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.dropout = nn.Dropout(args.dropout)

    def forward(self, x):
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x, cos, sin):
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.dropout = nn.Dropout(args.dropout)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.output.weight = self.tok_embeddings.weight  # weight tying

        cos, sin = rotary_tables(args.head_dim, args.max_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

        self.apply(self._init_weights)
        # Scaled init of the projections that write into the residual stream (GPT-2 paper).
        for name, p in self.named_parameters():
            if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * args.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per parameter (forward and backward matmuls) plus attention.

        Attention counts the two T x T matmuls (scores and weighted values) as dense, 12 * n_layers * dim * T
        per token over forward and backward, as nanoGPT and the PaLM paper do; the causal half is not
        discounted.
        """
        return 6 * self.num_params() + 12 * self.args.n_layers * self.args.dim * self.args.max_seq_len

    def forward(
        self, tokens: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) for tokens (B, T); loss too when targets are given (-1 = ignore)."""
        T = tokens.shape[1]
        if T > self.args.max_seq_len:
            raise ValueError(f"{T} positions exceed max_seq_len={self.args.max_seq_len}")
        h = self.dropout(self.tok_embeddings(tokens))
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for layer in self.layers:
            h = layer(h, cos, sin)
        logits = self.output(self.norm(h))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
            )
        return logits, loss


def load_model(path, device: str | torch.device = "cpu") -> Transformer:
    """A Transformer from a checkpoint written by tinyllm.train (ckpt.pt or best.pt), in eval mode.

    The checkpoint is a dict with at least "model" (a state_dict) and "model_args" (ModelArgs.to_dict()).
    """
    checkpoint = read_checkpoint(path, device)
    model = Transformer(ModelArgs.from_dict(checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()
