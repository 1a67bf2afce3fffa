"""`nanoeval causality`: test a checkpoint for future-token leaks and name the first leaking layer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nanoeval.commands.generate import INFERENCE_MODES
from nanoeval.load import add_verify_flag
from nanotrain.cli import EXIT_FOUND, EXIT_OK, add_device_arg


def register(sub) -> None:
    p = sub.add_parser(
        "causality",
        help="check that outputs never depend on future tokens; name the first leaking layer",
        description="Run random token ids twice, changing every token after a cut t the second time, and compare "
                    "the fp32 logits at positions <= t. Any change is a future-token leak; hooks on every block find "
                    "the first block whose output moves. Exit status: 0 causal, 1 leak found, 2 usage error.",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint folder (runs/<run>/final) or a run folder")
    p.add_argument("--seq-len", type=int, default=None, help="test length (default min(context, 256))")
    p.add_argument("--trials", type=int, default=3, help="cuts tested, spread over the sequence (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random ids (default 0)")
    p.add_argument("--inference-mode", choices=(*INFERENCE_MODES, "train"), default="refuse",
                   help="refuse (default): test the forward with every layer, as training and sampling run it "
                        "(nothing is refused here: a non-causal layer shows as a leak); bypass: test it with the "
                        "non-causal layers skipped, as --inference-mode bypass samples; train: old spelling of "
                        "refuse")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest |logit change| counted as no leak")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON result to this file")
    add_device_arg(p, default="cpu")
    add_verify_flag(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    import torch

    from nanoeval.causality import check_causality
    from nanoeval.load import load
    from nanoeval.report import write_json
    from nanotrain.dist import resolve_device

    args.device = str(resolve_device(args.device))
    if args.inference_mode == "train":
        print("nanoeval causality: --inference-mode train is the old spelling of refuse", file=sys.stderr)
        args.inference_mode = "refuse"
    loaded = load(args.ckpt, device=args.device, dtype=torch.float32, verify=args.verify)
    result = check_causality(loaded.model, seq_len=args.seq_len, trials=args.trials, seed=args.seed,
                             inference_mode=args.inference_mode, tolerance=args.tolerance)
    data = {"checkpoint": str(loaded.folder), "recipe": loaded.recipe, **result.to_dict()}
    if args.out is not None:
        write_json(args.out, data)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        verdict = "causal" if result.causal else f"NOT causal: first leaking layer {result.first_leaking_layer}"
        print(f"{loaded.folder} ({loaded.recipe}, mode {result.inference_mode}): {verdict}")
        print(f"largest logit change at positions <= t: {result.max_leak:.3g} (tolerance {result.tolerance:g}; "
              f"seq_len {result.seq_len}, cuts {result.cuts})")
        if result.declared_noncausal_layers:
            print(f"layers the model declares non-causal: {result.declared_noncausal_layers}")
    return EXIT_OK if result.causal else EXIT_FOUND
