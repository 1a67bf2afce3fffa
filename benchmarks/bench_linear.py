"""Matrix products of a recipe's linear layers on a CPU: the packed oneDNN product and `frozen_weights`'s choice
between the two (`nanotrain.model.frozen.linear` given the packed weight: "as used") against plain `F.linear` (MKL),
on the same inputs, in the same run.

For each row count (the batch at decode, batch x tokens at prefill and held-out loss) it times every distinct
(in, out) shape of the model once per layer that has it (the tied head once), so a row's total is the matrix
product time of one forward pass. Rounds alternate between the two, each round times `--iters` calls per shape,
and the median round is reported. `nanotrain.model.frozen.PACKED_MIN_ROWS` and `PACKED_ONE_ROW_MIN_NUMEL` decide
where the packed product is used; this benchmark is how to check them on a given CPU.
Writes benchmarks/results/bench_linear.json (device, torch, per row count: the three times and speed-ups).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import RESULTS_DIR, format_table, parse_overrides, run_cli, run_header, write_json  # noqa: E402
from nanotrain.errors import UserError  # noqa: E402


def layer_shapes(recipe: str, scale: str, overrides: list[str]) -> tuple[Counter, int]:
    """(in_features, out_features) -> how many linear layers of the model have it, the tied head included; and
    the vocabulary size."""
    from nanotrain.model import GPT
    from nanotrain.model.frozen import Linear
    from nanotrain.recipes import get_recipe

    cfg, _ = get_recipe(recipe).build(scale)
    parse_overrides(overrides, cfg)
    with torch.device("meta"):
        model = GPT(cfg)
    shapes = Counter((m.in_features, m.out_features) for m in model.modules() if type(m) is Linear)
    shapes[(cfg.dim, cfg.vocab_size)] += 1
    return shapes, cfg.vocab_size


def parse_rows(text: str) -> list[int]:
    try:
        rows = [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"--rows {text}: expected a comma list of integers") from None
    if not rows or min(rows) < 1:
        raise UserError(f"--rows {text}: every row count must be at least 1")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_linear", description=__doc__)
    ap.add_argument("--recipe", default="baseline-v1", help="whose layer shapes to time (default baseline-v1)")
    ap.add_argument("--scale", default="tiny", choices=("tiny", "small", "full"), help="model scale (default tiny)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a model config field")
    ap.add_argument("--rows", default="1,2,4,8,32,2048", help="row counts to time (default 1,2,4,8,32,2048)")
    ap.add_argument("--iters", type=int, default=50, help="calls per shape in one round (default 50)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per variant (median reported)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "bench_linear.json")
    args = ap.parse_args(argv)
    rows_list = parse_rows(args.rows)
    if args.iters < 1 or args.rounds < 1:
        raise UserError("--iters and --rounds must be at least 1")

    from nanotrain.model.frozen import PACKED_MIN_ROWS, PACKED_ONE_ROW_MIN_NUMEL, can_pack, linear

    if not can_pack(torch.device("cpu"), torch.float32):
        raise UserError("this torch build has no oneDNN linear (torch.backends.mkldnn): nothing to compare")
    shapes, vocab = layer_shapes(args.recipe, args.scale, args.set)
    torch.manual_seed(0)
    weights = {s: torch.randn(s[1], s[0]) * s[0] ** -0.5 for s in shapes}
    packed = {s: torch.ops.mkldnn._reorder_linear_weight(w) for s, w in weights.items()}

    def forward_time(variant: str, inputs: dict) -> float:
        """Milliseconds of one forward's products: each shape timed over `iters` calls, times its layer count."""
        total = 0.0
        for s, count in shapes.items():
            x, w, p = inputs[s], weights[s], packed[s]
            t0 = time.perf_counter()
            for _ in range(args.iters):
                if variant == "plain":
                    F.linear(x, w)
                elif variant == "packed":
                    torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
                else:
                    linear(x, w, p)
            total += (time.perf_counter() - t0) / args.iters * count
        return total * 1e3

    results = []
    with torch.inference_mode():
        for n in rows_list:
            inputs = {s: torch.randn(n, s[0]) for s in shapes}
            for s in shapes:  # the products agree (the comparison is of one computation)
                x, w = inputs[s], weights[s]
                torch.testing.assert_close(torch.ops.mkldnn._linear_pointwise(x, packed[s], None, "none", [], ""),
                                           F.linear(x, w), rtol=1e-4, atol=1e-4)
            times: dict[str, list[float]] = {"plain": [], "packed": [], "as_used": []}
            for variant in times:  # warm-up
                forward_time(variant, inputs)
            for _ in range(args.rounds):
                for variant in times:
                    times[variant].append(forward_time(variant, inputs))
            ms = {v: statistics.median(t) for v, t in times.items()}
            results.append({"rows": n, "plain_ms": ms["plain"], "packed_ms": ms["packed"],
                            "as_used_ms": ms["as_used"], "packed_speedup": ms["plain"] / ms["packed"],
                            "as_used_speedup": ms["plain"] / ms["as_used"]})
    print(f"{args.recipe} ({args.scale}): {sum(shapes.values())} linear products per forward, "
          f"{len(shapes)} shapes: " + ", ".join(f"{i}x{o} x{c}" for (i, o), c in sorted(shapes.items())))
    print(format_table(results, [("rows", "rows"), ("plain_ms", "F.linear ms"), ("packed_ms", "packed ms"),
                                 ("as_used_ms", "as used ms"), ("packed_speedup", "packed speed-up"),
                                 ("as_used_speedup", "as used speed-up")]))
    result = {
        **run_header(torch.device("cpu"), {"recipe": args.recipe, "scale": args.scale, "overrides": args.set,
                                           "vocab": vocab,
                                           "iters": args.iters, "rounds": args.rounds,
                                           "timer": "wall, median of alternating rounds",
                                           "packed_min_rows": PACKED_MIN_ROWS,
                                           "packed_one_row_min_numel": PACKED_ONE_ROW_MIN_NUMEL},
                     "nanolab.bench_linear/1"),
        "shapes": [{"in": i, "out": o, "layers": c} for (i, o), c in sorted(shapes.items())],
        "results": results,
        "ratios": {f"rows{r['rows']}:{v}/plain": round(r[f"{v}_speedup"], 3) for r in results
                   for v in ("packed", "as_used")},
    }
    print(f"wrote {write_json(args.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("bench_linear", main))
