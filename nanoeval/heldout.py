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
from dataclasses import asdict, dataclass, field

import torch

from nanotrain.errors import UserError


@dataclass
class HeldoutResult:
    """Held-out metrics over `n_tokens` predicted tokens of one split, with bootstrap intervals over its documents.

    `doc_tokens` / `doc_nll`: the predicted tokens and summed NLL (nats) of each document (file) the measured
    tokens touch, in order (the last may be cut); `tokens_sha256` identifies the measured tokens, so two reports
    with the same value measured the same documents and can be compared pairwise."""

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
    n_docs: int = 0
    ce_ci: tuple[float, float] | None = None
    bpb_ci: tuple[float, float] | None = None
    tokens_sha256: str = ""
    selection: str = ""  # which tokens were measured, in words
    doc_tokens: list[int] = field(default_factory=list)
    doc_nll: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ce_ci"] = None if self.ce_ci is None else list(self.ce_ci)
        d["bpb_ci"] = None if self.bpb_ci is None else list(self.bpb_ci)
        return d


def validation_tokens(train: dict) -> tuple[int, int] | None:
    """(tokens, window length) of a run's validation, from its training config dict: the first
    eval_batches x batch_size windows of seq_len tokens of the val split. None if the config lacks them."""
    try:
        n = int(train["eval_batches"]) * int(train["batch_size"]) * int(train["seq_len"])
        return n, int(train["seq_len"])
    except (KeyError, TypeError, ValueError):
        return None


def _measure(model, batches, bypass: bool, n_batches: int, desc: str,
             progress: bool) -> tuple[torch.Tensor, float]:
    """Per-target NLL (nats, fp32, in token order) over `batches`, and the summed predictive entropy."""
    from tqdm import tqdm

    nlls = []
    ent = 0.0
    with torch.inference_mode():
        for x, y in tqdm(batches, total=n_batches, desc=desc, unit="batch", disable=not progress, leave=False):
            logits = model(x, bypass_noncausal=bypass).logits.float()
            logp = logits.log_softmax(dim=-1)
            nlls.append(-logp.gather(-1, y[..., None]).squeeze(-1).reshape(-1).cpu())
            ent += float(-(logp.exp() * logp).sum())
    return torch.cat(nlls), ent


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
    """CE/bpb/ppl/entropy over the first `max_tokens` predicted tokens of `split` (all of it with None), in
    non-overlapping windows of `seq_len`, with bootstrap intervals over documents (`nanoeval.stats`).

    The windows are the trainer's validation windows (`nanotrain.data.loader.sequential_batches`): with the run's
    seq_len and `validation_tokens` they are exactly the tokens its validation measured. `seq_len` defaults to
    the model's context; it shrinks to fit the model's context and a split shorter than one window.
    """
    import hashlib

    import numpy as np

    from nanoeval.engine import resolve_inference_mode
    from nanoeval.stats import bootstrap_ratio
    from nanotrain.data.loader import sequential_batches
    from nanotrain.data.tokenizer import EOS_ID
    from nanotrain.model.frozen import frozen_weights

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
    batch_size = max(1, min(batch_size, windows))
    n_batches = -(-windows // batch_size)

    def batches():
        device = next(model.parameters()).device
        for x, y in sequential_batches(tokens[: windows * seq_len + 1], seq_len, batch_size):
            yield x.to(device), y.to(device)

    with frozen_weights(model, next(model.parameters()).dtype):  # weights packed once for both passes
        nll, ent = _measure(model, batches(), bypass, n_batches, f"held-out {split}", progress)
        train_nll = None
        if bypass:
            train_nll, _ = _measure(model, batches(), False, n_batches, f"held-out {split} (train mode)", progress)
    count = len(nll)
    ce = float(nll.double().sum()) / count
    # Target token p (1..count) belongs to the document of the <eos> count before it (an <eos> ends its file).
    measured = np.asarray(tokens[: count + 1])
    doc = np.cumsum(measured[:-1] == EOS_ID)
    doc -= doc[0]
    doc_tokens = np.bincount(doc).astype(np.int64)
    doc_nll = np.bincount(doc, weights=nll.double().numpy())
    keep = doc_tokens > 0
    doc_tokens, doc_nll = doc_tokens[keep], doc_nll[keep]
    bpt = dataset.bytes_per_token(split)
    ce_ci = bootstrap_ratio(doc_nll, doc_tokens)
    result = HeldoutResult(
        split=split,
        ce=ce,
        bpb=ce / math.log(2) / bpt,
        ppl=math.exp(ce),
        entropy=ent / count,
        n_tokens=count,
        seq_len=seq_len,
        inference_mode=mode,
        n_docs=len(doc_tokens),
        ce_ci=ce_ci,
        bpb_ci=None if ce_ci is None else (ce_ci[0] / math.log(2) / bpt, ce_ci[1] / math.log(2) / bpt),
        tokens_sha256=hashlib.sha256(np.ascontiguousarray(measured, dtype=np.uint16).tobytes()).hexdigest(),
        selection=f"the first {count:,} predicted tokens of the {split} split, windows of {seq_len}",
        doc_tokens=[int(v) for v in doc_tokens],
        doc_nll=[round(float(v), 6) for v in doc_nll],
    )
    if train_nll is not None:
        result.train_mode_ce = float(train_nll.double().sum()) / count
        result.train_mode_gap = ce - result.train_mode_ce
    return result
