"""MTP heads and loss (docs/original-runs.md): head i at t predicts token t+i+2, weights [1, 0.5, 0.25], no
smoothing."""

import math

import torch

from nanotrain.model import GPT, mtp_loss
from nanotrain.model.mtp import mtp_weights
from nanotrain.recipes import get_recipe


def test_weights_follow_the_seed():
    assert mtp_weights(3) == [1.0, 0.5, 0.25]
    assert mtp_weights(8)[-1] == 0.01


def test_loss_aligns_head_i_with_token_t_plus_i_plus_2():
    x = torch.randint(0, 11, (2, 13))
    y = x[:, 1:]
    t, vocab = 12, 11
    # head i puts all its mass on the true token x[t+i+2] (= y[t+i+1])
    logits = []
    for i in range(3):
        lg = torch.full((2, t, vocab), -30.0)
        for pos in range(t - i - 1):
            lg[:, pos].scatter_(1, y[:, pos + i + 1 : pos + i + 2], 30.0)
        logits.append(lg)
    assert mtp_loss(logits, y).item() < 1e-6
    shifted = [lg.roll(1, dims=1) for lg in logits]
    assert mtp_loss(shifted, y).item() > 10
    uniform = [torch.zeros(2, t, vocab) for _ in range(3)]
    assert math.isclose(mtp_loss(uniform, y).item(), 1.75 * math.log(vocab), rel_tol=1e-5)


def test_model_exposes_one_logit_tensor_per_head_only_in_the_full_forward():
    cfg, _ = get_recipe("baseline-v1").build("tiny")
    model = GPT(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (2, 10))
    captured = []
    model.norm_final.register_forward_hook(lambda mod, args, out: captured.append(out))
    out = model(idx)
    assert [lg.shape for lg in out.mtp_logits] == [(2, 10, cfg.vocab_size)] * 3
    for head, lg in zip(model.mtp.heads, out.mtp_logits):  # every head reads the final normed hidden state
        torch.testing.assert_close(lg, head(captured[0]))
    mtp_loss(out.mtp_logits, idx[:, 1:]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mtp.parameters())
    assert model.tok_embed.weight.grad.abs().sum() > 0  # the trunk learns from the MTP loss too
    model.setup_cache(2, 16)
    assert model(idx, torch.arange(idx.shape[1])).mtp_logits == []
