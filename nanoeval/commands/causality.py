"""`nanoeval causality`: test a checkpoint for future-token leaks and name the first leaking layer."""

from __future__ import annotations

import json
from pathlib import Path

from nanoeval.load import add_verify_flag


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
    p.add_argument("--inference-mode", choices=("train", "bypass"), default="train",
                   help="train: the plain forward training uses (default); bypass: the generation path with "
                        "non-causal layers skipped")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest |logit change| counted as no leak")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON result to this file")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:N or auto")
    add_verify_flag(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    import torch

    from nanoeval.causality import check_causality
    from nanoeval.load import load
    from nanoeval.report import write_json
    from nanotrain.dist import resolve_device

    args.device = str(resolve_device(args.device))
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
    return 0 if result.causal else 1
