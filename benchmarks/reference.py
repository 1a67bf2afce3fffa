"""The yardstick: a plain Llama-style GPT and two plain optimiser set-ups, written to be read in one sitting.

Every nanolab benchmark times our code against this module in the same process, at the same shapes and batch.
The model has the shapes of nanotrain's models (docs/original-runs.md): RMSNorm, half-split RoPE,
SDPA attention with grouped KV heads, SwiGLU, a tied embedding/head, label-smoothed cross-entropy, and optional
MTP heads so that baseline-v1's extra FLOPs are matched. It has none of nanotrain's extras (mHC streams, Engram,
wavefield, LoopLM), so a ratio against it prices exactly those extras plus any overhead in our code.

Optimisers: `adamw` (fused on CUDA), and `BatchedMuon`: Muon for the hidden matrices with same-shape matrices
stacked so Newton-Schulz (the original's coefficients, 5 steps) runs as one bmm chain per shape, plus AdamW for the
rest (embedding, norms, MTP heads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NS_COEFFS = (3.4445, -4.7750, 2.0315)


@dataclass
class RefConfig:
    """Shapes of the reference model (a subset of nanotrain's ModelConfig)."""

    vocab_size: int = 4096
    dim: int = 1024
    n_layers: int = 20
    n_heads: int = 16
    n_kv_heads: int = 4
    ffn_hidden: int = 3072
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    mtp_heads: int = 0
    mtp_weight: float = 0.2
    label_smoothing: float = 0.1

    @classmethod
    def from_model_config(cls, cfg, label_smoothing: float = 0.1) -> "RefConfig":
        """Copy the shapes of a nanotrain ModelConfig; SwiGLU hidden rounded up as nanotrain does (`ffn_dim()`)."""
        multiple = cfg.ffn_multiple_of
        hidden = math.ceil(math.floor(cfg.dim * cfg.ffn_mult) / multiple) * multiple
        return cls(vocab_size=cfg.vocab_size, dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                   n_kv_heads=cfg.n_kv_heads, ffn_hidden=hidden, max_seq_len=cfg.max_seq_len,
                   rope_theta=cfg.rope_theta, norm_eps=cfg.norm_eps, mtp_heads=cfg.mtp_heads,
                   mtp_weight=cfg.mtp_weight, label_smoothing=label_smoothing)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [max_len, head_dim/2] for angle p·theta^(-2i/head_dim)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+hd/2}) of x [B, H, T, hd] by the angles in cos/sin [T, hd/2]."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    """Causal self-attention with grouped KV heads and an optional static KV cache for decoding."""

    def __init__(self, cfg: RefConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.dim // cfg.n_heads
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * self.head_dim, cfg.dim, bias=False)
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start_pos: int | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if start_pos is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            end = start_pos + T
            self.k_cache[:B, :, start_pos:end] = k
            self.v_cache[:B, :, start_pos:end] = v
            k, v = self.k_cache[:B, :, :end], self.v_cache[:B, :, :end]
            mask = None
            if T > 1:
                mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(diagonal=start_pos)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: RefConfig) -> None:
        super().__init__()
        self.w_gate = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w_up = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w_down = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: RefConfig) -> None:
        super().__init__()
        self.norm_attn = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm_ffn = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start_pos: int | None) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x), cos, sin, start_pos)
        return x + self.ffn(self.norm_ffn(x))


class RefGPT(nn.Module):
    """The plain GPT. `forward` returns (logits, mtp_logits); `loss` is the training objective."""

    def __init__(self, cfg: RefConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm_final = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.mtp = nn.ModuleList(nn.Linear(cfg.dim, cfg.vocab_size) for _ in range(cfg.mtp_heads))
        cos, sin = rope_tables(cfg.dim // cfg.n_heads, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        for name, p in self.named_parameters():
            if p.dim() == 2 and not name.startswith("mtp."):
                nn.init.normal_(p, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, start_pos: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        T = idx.shape[1]
        p0 = 0 if start_pos is None else start_pos
        cos, sin = self.rope_cos[p0:p0 + T], self.rope_sin[p0:p0 + T]
        x = self.tok_embed(idx)
        for block in self.blocks:
            x = block(x, cos, sin, start_pos)
        h = self.norm_final(x)
        logits = F.linear(h, self.tok_embed.weight)
        return logits, [head(h) for head in self.mtp]

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Label-smoothed CE on the next token + mtp_weight · Σ_i 0.5^i · CE(head i → token t+i+2), as the
        original's MTP runs (docs/original-runs.md)."""
        logits, mtp_logits = self(idx)
        V = self.cfg.vocab_size
        loss = F.cross_entropy(logits.float().view(-1, V), targets.reshape(-1),
                               label_smoothing=self.cfg.label_smoothing)
        for i, head_logits in enumerate(mtp_logits):
            shift = i + 1
            ce = F.cross_entropy(head_logits[:, :-shift].float().reshape(-1, V), targets[:, shift:].reshape(-1))
            loss = loss + self.cfg.mtp_weight * max(0.5 ** i, 0.01) * ce
        return loss

    def setup_cache(self, batch_size: int, max_len: int) -> None:
        """Preallocate the per-layer KV caches [B, n_kv, max_len, hd] in the weights' dtype and device."""
        w = self.tok_embed.weight
        for block in self.blocks:
            a = block.attn
            shape = (batch_size, a.n_kv_heads, max_len, a.head_dim)
            a.k_cache = torch.zeros(shape, dtype=w.dtype, device=w.device)
            a.v_cache = torch.zeros(shape, dtype=w.dtype, device=w.device)


@torch.no_grad()
def generate_greedy(model: RefGPT, prompt: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The plain decode loop: prefill once, then one token at a time with the KV cache. Returns the new ids [B, n]."""
    B, T0 = prompt.shape
    model.setup_cache(B, T0 + max_new_tokens)
    logits, _ = model(prompt, start_pos=0)
    out = [logits[:, -1].argmax(-1)]
    for i in range(max_new_tokens - 1):
        logits, _ = model(out[-1][:, None], start_pos=T0 + i)
        out.append(logits[:, -1].argmax(-1))
    return torch.stack(out, dim=1)


def adamw(params, lr: float = 6e-4, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """Plain AdamW, betas (0.9, 0.95); fused kernel on CUDA, foreach on CPU."""
    params = list(params)
    fused = bool(params) and params[0].is_cuda
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay,
                             fused=fused, foreach=not fused)


def newton_schulz(x: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately orthogonalise each matrix of a stack x [n, r, c] with Muon's quintic iteration."""
    a, b, c = NS_COEFFS
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


class BatchedMuon:
    """Muon on hidden matrices, one stacked Newton-Schulz chain per shape; AdamW on everything else.

    Momentum is Nesterov in the common lerp form; the update is scaled by sqrt(max(1, rows/cols)).
    `ns_dtype` defaults to bf16 on CUDA and fp32 on CPU.
    """

    def __init__(self, model: nn.Module, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0,
                 adamw_lr: float = 6e-4, ns_steps: int = 5, ns_dtype: torch.dtype | None = None) -> None:
        hidden, rest = [], []
        for name, p in model.named_parameters():
            is_hidden = p.dim() == 2 and name.startswith("blocks.")
            (hidden if is_hidden else rest).append(p)
        by_shape: dict[tuple[int, ...], list[nn.Parameter]] = {}
        for p in hidden:
            by_shape.setdefault(tuple(p.shape), []).append(p)
        self.groups = list(by_shape.values())
        self.buffers = [torch.zeros((len(g), *g[0].shape), dtype=g[0].dtype, device=g[0].device)
                        for g in self.groups]
        self.lr, self.momentum, self.weight_decay, self.ns_steps = lr, momentum, weight_decay, ns_steps
        device_is_cuda = bool(hidden) and hidden[0].is_cuda
        self.ns_dtype = ns_dtype or (torch.bfloat16 if device_is_cuda else torch.float32)
        self.adamw = adamw(rest, lr=adamw_lr)

    @torch.no_grad()
    def step(self) -> None:
        for params, buf in zip(self.groups, self.buffers):
            grads = torch.stack([p.grad for p in params])
            buf.lerp_(grads, 1 - self.momentum)
            update = grads.lerp_(buf, self.momentum)
            ortho = newton_schulz(update.to(self.ns_dtype), self.ns_steps).to(buf.dtype)
            rows, cols = params[0].shape
            if self.weight_decay:
                torch._foreach_mul_(params, 1 - self.lr * self.weight_decay)
            torch._foreach_add_(params, list(ortho.unbind(0)), alpha=-self.lr * max(1.0, rows / cols) ** 0.5)
        self.adamw.step()

    def zero_grad(self) -> None:
        for params in self.groups:
            for p in params:
                p.grad = None
        self.adamw.zero_grad(set_to_none=True)


def train_step(loss_fn, model: nn.Module, opt, x: torch.Tensor, y: torch.Tensor,
               autocast_dtype: torch.dtype | None, grad_clip: float = 1.0) -> torch.Tensor:
    """One optimiser step as a trainer does it: loss (autocast), backward, global-norm clip, step, zero grads.

    `loss_fn(x, y)` is `model.loss` or a compiled version of it.
    """
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        loss = loss_fn(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    opt.step()
    opt.zero_grad()
    return loss.detach()


def forward_backward(loss_fn, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """Loss (autocast) and backward, then zero grads: the model's share of a step, without the optimiser."""
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        loss = loss_fn(x, y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.detach()
