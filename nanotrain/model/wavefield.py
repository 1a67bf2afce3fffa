"""Wavefield Haar attention (docs/original-runs.md): token mixing through a coarse 1-D field and a learned Haar filter.

Per layer, with H heads of width d = dim/H, field size F and J Haar levels:
1. s = scatter(x) viewed [B, T, H, d].
2. Scatter matrix S [L_max, F] (bilinear): p_t = t*(F-1)/(L_max-1), lo = floor(p_t), hi = lo+1, f = p_t - lo,
   S[t, lo] += 1-f, S[t, hi] += f. The stride uses the configured max_seq_len, not the actual T (as the seed).
3. Field u_h = S^T s_h [F, d]; Haar filter u~_h = IHaar_J(c_h * Haar_J(u_h)) with c_h = kernel_haar_coeffs[h]
   (unnormalised Haar: a = x_2i + x_2i+1, d = x_2i - x_2i+1 on the halving prefix; inverse divides by 2).
4. Head coupling W = row-softmax(coupling_logits): v_h = sum_g W[h, g] u~_g; gather y_h = S v_h.
5. Content gate y *= sigmoid(gate(x)) (per element), then out(y).

Modes (`wavefield_mode`):
- "bidirectional": the faithful layer above. Token t mixes with tokens up to ~260 positions ahead (S M S^T is
  symmetric), so a model with such a layer is not causal (`GPT.is_causal` is False) and cannot use a KV cache.
- "causal" (spec §3.6.1): same parameters, same operator restricted to the past. Per head A_h = S M_h S^T
  [T x T] with M_h = IHaar diag(c_h) Haar, masked to j <= t, then heads coupled and gated as above. A cached
  forward keeps the scattered per-head values s_j in a cache and computes only the rows of its own positions.
Physics parameters `omega`, `alpha_raw`, `phi` exist for checkpoint compatibility with the seed and are unused
(the seed's "haar_direct" path never reads them). `coupling_logits` and `kernel_haar_coeffs` are used.
`wavefield_physics_parameters(model)` lists all five, for the trainer's warmup delay (docs/original-runs.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nanotrain.config import ModelConfig
from nanotrain.model.cache import Positions, write_at
from nanotrain.model.quant import make_linear

PHYSICS_PARAM_NAMES = ("omega", "alpha_raw", "phi", "coupling_logits", "kernel_haar_coeffs")


def wavefield_layer_indices(n_layers: int, ratio: float) -> list[int]:
    """Wavefield layer indices: the k-th is floor((2k+1)*n_layers/(2*n_wf)), n_wf = round(ratio*n_layers)."""
    n_wf = round(ratio * n_layers)
    return [((2 * k + 1) * n_layers) // (2 * n_wf) for k in range(n_wf)]


def wavefield_physics_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every wavefield physics parameter: the trainer zeroes their grads during warmup delay."""
    return [(name, p) for name, p in model.named_parameters()
            if ".wavefield." in f".{name}" and name.rsplit(".", 1)[-1] in PHYSICS_PARAM_NAMES]


def scatter_matrix(max_seq_len: int, field_size: int) -> torch.Tensor:
    """Bilinear scatter S [max_seq_len, field_size] with stride (F-1)/(L_max-1)."""
    stride = (field_size - 1) / max(max_seq_len - 1, 1)
    rows = torch.arange(max_seq_len)
    pos = (rows.double() * stride).clamp(0, field_size - 1)
    lo = pos.floor().long().clamp(max=field_size - 1)
    hi = (lo + 1).clamp(max=field_size - 1)
    frac = pos - lo
    s = torch.zeros(max_seq_len, field_size, dtype=torch.float64)
    s.index_put_((rows, lo), 1 - frac, accumulate=True)
    s.index_put_((rows, hi), torch.where(hi != lo, frac, torch.zeros_like(frac)), accumulate=True)
    return s.float()


def haar_forward(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Unnormalised J-level Haar transform along the last dim: [approx | deepest details | ... | level-1 details]."""
    out = x.clone()
    n = x.shape[-1]
    for _ in range(levels):
        even, odd = out[..., 0:n:2], out[..., 1:n:2]
        out[..., :n] = torch.cat((even + odd, even - odd), dim=-1)
        n //= 2
    return out


def haar_inverse(y: torch.Tensor, levels: int) -> torch.Tensor:
    """Inverse of `haar_forward`: x_2i = (a_i + d_i)/2, x_2i+1 = (a_i - d_i)/2, deepest level first."""
    out = y.clone()
    n = y.shape[-1] >> (levels - 1)
    for _ in range(levels):
        a, d = out[..., : n // 2], out[..., n // 2: n]
        out[..., :n] = torch.stack(((a + d) / 2, (a - d) / 2), dim=-1).flatten(-2)
        n *= 2
    return out


class WavefieldAttention(nn.Module):
    """The wavefield token mixer (see the module docstring); `causal` selects spec §3.6.1."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.wavefield_heads or cfg.n_heads
        self.head_dim = cfg.dim // self.n_heads
        self.levels = cfg.wavefield_haar_levels
        self.causal = cfg.wavefield_mode == "causal"
        self.head_coupling = cfg.wavefield_head_coupling
        f = cfg.wavefield_field_size
        self.scatter = make_linear(cfg.dim, cfg.dim, cfg)
        self.gate = make_linear(cfg.dim, cfg.dim, cfg)
        self.out = make_linear(cfg.dim, cfg.dim, cfg)
        self.omega = nn.Parameter(torch.empty(self.n_heads).uniform_(0.3, 4.0))
        self.alpha_raw = nn.Parameter(torch.empty(self.n_heads).uniform_(-3.0, 0.5))
        self.phi = nn.Parameter(torch.empty(self.n_heads).uniform_(0.0, math.pi))
        self.coupling_logits = nn.Parameter(torch.zeros(self.n_heads, self.n_heads))
        self.kernel_haar_coeffs = nn.Parameter(torch.empty(self.n_heads, f).uniform_(-0.5, 0.5))
        self.register_buffer("scatter_s", scatter_matrix(cfg.max_seq_len, f), persistent=False)
        eye = torch.eye(f)
        self.register_buffer("haar_m", haar_forward(eye, self.levels).T.contiguous(), persistent=False)
        self.register_buffer("haar_inv_m", haar_inverse(eye, self.levels).T.contiguous(), persistent=False)
        self.register_buffer("value_cache", None, persistent=False)

    def setup_cache(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> None:
        self.value_cache = torch.zeros(batch_size, max_len, self.n_heads, self.head_dim, device=device, dtype=dtype)

    def clear_cache(self) -> None:
        self.value_cache = None

    def coupling(self) -> torch.Tensor:
        """Row-softmax head coupling [H, H] (identity when head coupling is off)."""
        if not self.head_coupling:
            return torch.eye(self.n_heads, device=self.coupling_logits.device)
        return torch.softmax(self.coupling_logits, dim=-1)

    def mixing_matrices(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Per-head token mixing A_h[t, j] = (S M_h S^T)[t, j] for query positions q_pos ([T], or [B, T] per row:
        then [B, H, T, K]) and key positions k_pos [K].

        Built in fp32 even under autocast: it sums up to 2^J field cells per entry."""
        with torch.autocast(device_type=q_pos.device.type, enabled=False):
            left = self.scatter_s[q_pos] @ self.haar_inv_m
            right = self.scatter_s[k_pos] @ self.haar_m.T
            return torch.einsum("...qf,hf,kf->...hqk", left, self.kernel_haar_coeffs.float(), right)

    def forward(self, x: torch.Tensor, at: Positions | None = None) -> torch.Tensor:
        """x [B, T, dim] (normed) -> [B, T, dim]. `at` (causal mode only): a cached forward through the value cache."""
        b, t, dim = x.shape
        s = self.scatter(x).view(b, t, self.n_heads, self.head_dim)
        if self.causal:
            y = self._causal_mix(s, at)
        else:
            y = self._field_mix(s)
        y = y.reshape(b, t, dim) * torch.sigmoid(self.gate(x))
        return self.out(y)

    def _field_mix(self, s: torch.Tensor) -> torch.Tensor:
        """The seed's bidirectional path: scatter to the field, Haar filter, couple heads, gather."""
        scat = self.scatter_s[: s.shape[1]].to(s.dtype)
        field = torch.einsum("tf,bthd->bhdf", scat, s)
        wide = torch.promote_types(field.dtype, torch.float32)  # at least fp32 (fp64 stays fp64)
        coeffs = self.kernel_haar_coeffs.to(wide)[None, :, None, :]
        filtered = haar_inverse(coeffs * haar_forward(field.to(wide), self.levels), self.levels)
        coupled = torch.einsum("hg,bgdf->bhdf", self.coupling().to(filtered.dtype), filtered)
        return torch.einsum("tf,bhdf->bthd", scat, coupled)

    def _causal_mix(self, s: torch.Tensor, at: Positions | None) -> torch.Tensor:
        """The same operator with A_h masked to j <= t; with `at`, keys come from the cache, rows at their positions."""
        b, t = s.shape[:2]
        if at is None:
            pos = torch.arange(t, device=s.device)
            mix = self.mixing_matrices(pos, pos) * (pos[None, None, :] <= pos[None, :, None])
            mixed = torch.einsum("hqk,bkhd->bqhd", mix.to(s.dtype), s)
        else:
            if self.value_cache is None:
                raise RuntimeError("wavefield cache not set up: call model.setup_cache(batch_size) first")
            write_at(self.value_cache, 1, at, s)
            keys = self.value_cache[:b, :at.length].to(s.dtype)
            mix = self.mixing_matrices(at.pos, at.key_positions)  # [B, H, T, L]
            if at.keep is not None:
                mix = mix * at.keep
            mixed = torch.einsum("bhqk,bkhd->bqhd", mix.to(s.dtype), keys)
        return torch.einsum("hg,bqgd->bqhd", self.coupling().to(mixed.dtype), mixed)
