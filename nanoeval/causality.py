"""Future-token leak detector: does the output at position t depend on tokens after t?

Random token ids are run through the model twice, the second time with every token after a cut `t` replaced.
In a causal model the logits at positions <= t are unchanged (compared in fp32). Forward hooks on every block
find the first block whose output at <= t moves: the layer that reads the future. This catches the original's
bidirectional wavefield Haar layers (docs/original-runs.md, "Wavefield Haar attention"), which its own tests never
exercised in training mode.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch

from nanotrain.errors import UserError
from nanotrain.model.mhc import to_original

BLOCK_NAME = re.compile(r"^(blocks|local_before|local_after)\.\d+$|^shared_loop$")


@dataclass
class LayerLeak:
    """Largest change of one block call's output at positions <= t (a shared loop block appears once per call)."""

    name: str
    leak: float


@dataclass
class CausalityResult:
    causal: bool
    max_leak: float  # largest |Δ logit| at positions <= t, over all trials
    first_leaking_layer: str | None  # e.g. "blocks.1"; None when causal
    seq_len: int
    cuts: list[int]
    trials: int
    tolerance: float
    inference_mode: str
    declared_noncausal_layers: list[int]
    layers: list[LayerLeak] = field(default_factory=list)  # per block call, worst over trials

    def to_dict(self) -> dict:
        return asdict(self)


def _hook_blocks(model: torch.nn.Module, record: list):
    handles = []
    for name, module in model.named_modules():
        if BLOCK_NAME.match(name):
            def hook(_mod, _inp, out, name=name):
                streams = out[0] if name == "shared_loop" else out  # the loop block returns (streams, state, p)
                record.append((name, to_original(streams).detach().float().clone()))
            handles.append(module.register_forward_hook(hook))
    return handles


def _prefix(streams: torch.Tensor, cut: int) -> torch.Tensor:
    """Positions 0..cut of a block's output streams [N, B, T, dim]."""
    return streams.narrow(2, 0, cut + 1)


def _run(model, ids, bypass: bool) -> tuple[torch.Tensor, list]:
    record: list = []
    handles = _hook_blocks(model, record)
    try:
        with torch.inference_mode():
            logits = model(ids, bypass_noncausal=bypass).logits.float()
    finally:
        for h in handles:
            h.remove()
    return logits, record


def check_causality(
    model: torch.nn.Module,
    *,
    seq_len: int | None = None,
    trials: int = 3,
    batch_size: int = 2,
    seed: int = 0,
    inference_mode: str = "refuse",
    tolerance: float = 1e-4,
) -> CausalityResult:
    """Perturb the tokens after a cut and look for changes before it. Run the model in fp32.

    `inference_mode="refuse"` tests the forward with every layer (what training and the engine run); "bypass"
    tests it with the non-causal layers skipped, as the engine's bypass mode runs it. Nothing is refused here: a
    non-causal layer is what the check reports. `tolerance` is on |Δ logit| (fp32 rounding in a causal model stays
    far below).
    """
    if inference_mode not in ("refuse", "bypass"):
        raise UserError(f"--inference-mode {inference_mode!r}: expected refuse or bypass")
    if trials < 1:
        raise UserError(f"--trials {trials}: must be at least 1")
    bypass = inference_mode == "bypass"
    context = int(model.cfg.max_seq_len)
    seq_len = seq_len or min(context, 256)
    if not 2 <= seq_len <= context:
        raise UserError(f"--seq-len {seq_len}: must be between 2 and the model's context {context}")
    vocab = int(model.cfg.vocab_size)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    cuts = [max(0, (seq_len * (k + 1)) // (trials + 1) - 1) for k in range(trials)]
    max_leak = 0.0
    worst: dict[int, LayerLeak] = {}
    for cut in cuts:
        ids = torch.randint(2, vocab, (batch_size, seq_len), generator=gen)
        changed = ids.clone()
        # Shift every later token to a different id, so each future position really changes.
        offset = torch.randint(1, vocab - 2, (batch_size, seq_len - cut - 1), generator=gen)
        changed[:, cut + 1 :] = (ids[:, cut + 1 :] - 2 + offset) % (vocab - 2) + 2
        logits_a, rec_a = _run(model, ids.to(device), bypass)
        logits_b, rec_b = _run(model, changed.to(device), bypass)
        max_leak = max(max_leak, float((logits_a[:, : cut + 1] - logits_b[:, : cut + 1]).abs().max()))
        for k, ((name, out_a), (_, out_b)) in enumerate(zip(rec_a, rec_b)):
            leak = float((_prefix(out_a, cut) - _prefix(out_b, cut)).abs().max())
            if k not in worst:
                worst[k] = LayerLeak(name=name if name != "shared_loop" else f"shared_loop[{_call_index(rec_a, k)}]",
                                     leak=leak)
            else:
                worst[k].leak = max(worst[k].leak, leak)
    layers = [worst[k] for k in sorted(worst)]
    causal = max_leak <= tolerance and all(layer.leak <= tolerance for layer in layers)
    first = None if causal else next((layer.name for layer in layers if layer.leak > tolerance), "output")
    return CausalityResult(
        causal=causal,
        max_leak=max_leak,
        first_leaking_layer=first,
        seq_len=seq_len,
        cuts=cuts,
        trials=trials,
        tolerance=tolerance,
        inference_mode=inference_mode,
        declared_noncausal_layers=list(model.noncausal_layers()),
        layers=layers,
    )


def _call_index(record: list, k: int) -> int:
    """How many times the module recorded at position k was called before (the shared loop's iteration)."""
    name = record[k][0]
    return sum(1 for n, _ in record[:k] if n == name)
