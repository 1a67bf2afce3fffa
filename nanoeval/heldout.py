"""Held-out loss on a dataset split: CE, bits per byte, perplexity and mean predictive entropy.

`ce` is the pure next-token NLL in nats/token and `entropy` the mean Shannon entropy of the predicted
distribution: the original logged the latter as "H" and called it CE (docs/original-runs.md, "What was logged"); they
are kept apart here. `bpb = ce / ln 2 / bytes_per_token(split)`, so models with different tokenizers compare.

The loss is computed on the same causal path sampling uses: a causal model as is, a model with bidirectional
layers with those layers bypassed. For such a model the train-mode (bidirectional) CE is measured too, and the
gap shows how much of its training loss came from reading future tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from nanotrain.errors import UserError


@dataclass
class HeldoutResult:
    """Held-out metrics over `n_tokens` predicted tokens of one split."""

    split: str
    ce: float
    bpb: float
    ppl: float
    entropy: float
    n_tokens: int
    seq_len: int
    inference_mode: str
    train_mode_ce: float | None = None  # only for non-causal models: CE with the bidirectional layers active
    train_mode_gap: float | None = None  # ce - train_mode_ce

    def to_dict(self) -> dict:
        return asdict(self)


def _measure(model, batches, bypass: bool, n_batches: int, desc: str, progress: bool) -> tuple[float, float, int]:
    """Summed NLL and entropy (nats) and the token count over `batches`, in fp32."""
    from tqdm import tqdm

    nll = ent = 0.0
    count = 0
    with torch.inference_mode():
        for x, y in tqdm(batches, total=n_batches, desc=desc, unit="batch", disable=not progress, leave=False):
            logits = model(x, bypass_noncausal=bypass).logits.float()
            logp = logits.log_softmax(dim=-1)
            nll += float(-logp.gather(-1, y[..., None]).sum())
            ent += float(-(logp.exp() * logp).sum())
            count += y.numel()
    return nll, ent, count


def evaluate_heldout(
    model: torch.nn.Module,
    dataset,
    *,
    split: str = "val",
    seq_len: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    inference_mode: str = "refuse",
    progress: bool = False,
) -> HeldoutResult:
    """CE/bpb/ppl/entropy over non-overlapping windows of `split`, in order, up to `max_tokens` predictions.

    `seq_len` defaults to the model's context; it shrinks to fit a split shorter than one window.
    """
    from nanoeval.engine import resolve_inference_mode
    from nanotrain.data.loader import sequential_batches

    mode, bypass = resolve_inference_mode(model, inference_mode)
    tokens = dataset.tokens(split)
    if len(tokens) < 2:
        raise UserError(f"{dataset.folder}: the {split} split has {len(tokens)} tokens; held-out loss needs at least 2")
    seq_len = min(seq_len or int(model.cfg.max_seq_len), int(model.cfg.max_seq_len), len(tokens) - 1)
    windows = (len(tokens) - 1) // seq_len
    if max_tokens is not None:
        if max_tokens < 1:
            raise UserError(f"--heldout-tokens {max_tokens}: must be at least 1")
        windows = min(windows, max(1, max_tokens // seq_len))
    batch_size = min(batch_size, windows)
    n_batches = windows // batch_size

    def batches():
        device = next(model.parameters()).device
        for x, y in sequential_batches(tokens, seq_len, batch_size, max_batches=n_batches):
            yield x.to(device), y.to(device)

    nll, ent, count = _measure(model, batches(), bypass, n_batches, f"held-out {split}", progress)
    ce = nll / count
    result = HeldoutResult(
        split=split,
        ce=ce,
        bpb=ce / math.log(2) / dataset.bytes_per_token(split),
        ppl=math.exp(ce),
        entropy=ent / count,
        n_tokens=count,
        seq_len=seq_len,
        inference_mode=mode,
    )
    if bypass:
        train_nll, _, _ = _measure(model, batches(), False, n_batches, f"held-out {split} (train mode)", progress)
        result.train_mode_ce = train_nll / count
        result.train_mode_gap = ce - result.train_mode_ce
    return result
