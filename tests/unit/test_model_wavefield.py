"""Wavefield Haar (docs/original-runs.md): layer choice, Haar transform, scatter, bidirectional vs causal operator."""

import dataclasses

import pytest
import torch

from nanotrain.model import GPT, wavefield_physics_parameters
from nanotrain.model.wavefield import (
    WavefieldAttention,
    haar_forward,
    haar_inverse,
    scatter_matrix,
    wavefield_layer_indices,
)
from nanotrain.recipes import get_recipe


def layer_cfg(mode: str):
    cfg, _ = get_recipe("haar-v5").build("tiny")
    return dataclasses.replace(cfg, wavefield_mode=mode, dim=64, n_heads=4, max_seq_len=64,
                               wavefield_field_size=32, wavefield_haar_levels=3)


def test_layer_indices_follow_the_seed_rule():
    assert wavefield_layer_indices(20, 0.5) == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]
    assert wavefield_layer_indices(6, 0.5) == [1, 3, 5]
    assert wavefield_layer_indices(20, 0.25) == [2, 6, 10, 14, 18]


def test_unnormalised_haar_layout_inverse_and_identity_scaling():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(haar_forward(x, 2), torch.tensor([10.0, -4.0, -1.0, -1.0]))
    y = torch.randn(3, 256)
    torch.testing.assert_close(haar_inverse(haar_forward(y, 6), 6), y)
    ones = torch.ones(256)
    torch.testing.assert_close(haar_inverse(ones * haar_forward(y, 6), 6), y)


def test_scatter_is_bilinear_with_stride_from_max_seq_len():
    s = scatter_matrix(1024, 256)
    torch.testing.assert_close(s.sum(dim=1), torch.ones(1024))
    stride = 255 / 1023
    t = 5
    lo = int(t * stride)
    assert s[t, lo].item() == pytest.approx(1 - (t * stride - lo), abs=1e-6)
    assert s[t, lo + 1].item() == pytest.approx(t * stride - lo, abs=1e-6)
    assert s[0, 0] == 1 and s[1023, 255] == 1


def test_field_path_equals_the_token_mixing_matrix_and_causal_mode_masks_it():
    torch.manual_seed(0)
    bidir = WavefieldAttention(layer_cfg("bidirectional"))
    causal = WavefieldAttention(layer_cfg("causal"))
    causal.load_state_dict(bidir.state_dict())
    with torch.no_grad():
        bidir.coupling_logits.normal_()
        causal.coupling_logits.copy_(bidir.coupling_logits)
    x = torch.randn(2, 40, 64)
    with torch.no_grad():
        yb, yc = bidir(x), causal(x)
    # the last position sees the whole sequence in both modes
    torch.testing.assert_close(yb[:, -1], yc[:, -1], atol=1e-5, rtol=1e-4)
    assert (yb[:, :-8] - yc[:, :-8]).abs().max() > 1e-4  # earlier positions: the bidirectional one reads ahead
    # the seed's field path (scatter, Haar filter, couple, gather) equals S M S^T applied per head
    s = bidir.scatter(x).view(2, 40, 4, 16)
    pos = torch.arange(40)
    mix = bidir.mixing_matrices(pos, pos)
    expected = torch.einsum("hg,bqgd->bqhd", bidir.coupling(), torch.einsum("hqk,bkhd->bqhd", mix, s))
    torch.testing.assert_close(bidir._field_mix(s), expected, atol=1e-5, rtol=1e-4)


def test_physics_parameters_are_listed_and_omega_alpha_phi_are_unused():
    cfg, _ = get_recipe("haar-causal").build("tiny")
    model = GPT(cfg)
    names = [n for n, _ in wavefield_physics_parameters(model)]
    assert len(names) == 3 * 5
    assert "blocks.1.wavefield.kernel_haar_coeffs" in names and "blocks.5.wavefield.omega" in names
    model(torch.randint(0, 4096, (1, 16))).logits.sum().backward()
    params = dict(model.named_parameters())
    assert params["blocks.1.wavefield.omega"].grad is None
    assert params["blocks.1.wavefield.phi"].grad is None
    assert params["blocks.1.wavefield.kernel_haar_coeffs"].grad.abs().sum() > 0
    assert params["blocks.1.wavefield.coupling_logits"].grad.abs().sum() > 0
    assert params["blocks.1.wavefield.scatter.weight"].shape == (cfg.dim, cfg.dim)
