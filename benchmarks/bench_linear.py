"""Matrix products of a recipe's linear layers on a CPU: through the packed oneDNN weights `frozen_weights` makes for
inference (`nanotrain.model.frozen.linear`) against plain `F.linear` (MKL), on the same inputs, in the same run.

For each row count (the batch at decode, batch x tokens at prefill and held-out loss) it runs a forward pass's
products: one weight of its own per layer (the tied head once), in order, so each weight comes from memory as in a
real forward (timing one small weight over and over keeps it in the cache, which flatters MKL's matrix-vector
kernel). Rounds alternate between the two, each round runs `--iters` forward passes' products, and the median round
is reported. Writes benchmarks/results/bench_linear.json (device, torch, per row count: both times and the ratio).
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
    ap.add_argument("--iters", type=int, default=20, help="forward passes' products per round (default 20)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per variant (median reported)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "bench_linear.json")
    args = ap.parse_args(argv)
    rows_list = parse_rows(args.rows)
    if args.iters < 1 or args.rounds < 1:
        raise UserError("--iters and --rounds must be at least 1")

    from nanotrain.model.frozen import can_pack, linear

    if not can_pack(torch.device("cpu"), torch.float32):
        raise UserError("this torch build has no oneDNN linear (torch.backends.mkldnn): nothing to compare")
    shapes, vocab = layer_shapes(args.recipe, args.scale, args.set)
    torch.manual_seed(0)
    layers = []
    for (n_in, n_out), count in shapes.items():
        for _ in range(count):
            w = torch.randn(n_out, n_in) * n_in ** -0.5
            layers.append((n_in, w, torch.ops.mkldnn._reorder_linear_weight(w)))

    def forward_time(variant: str, inputs: dict) -> float:
        """Milliseconds per forward pass's products (the mean over `iters` passes)."""
        t0 = time.perf_counter()
        for _ in range(args.iters):
            for n_in, w, p in layers:
                if variant == "plain":
                    F.linear(inputs[n_in], w)
                else:
                    linear(inputs[n_in], w, p)
        return (time.perf_counter() - t0) / args.iters * 1e3

    results = []
    with torch.inference_mode():
        for n in rows_list:
            inputs = {n_in: torch.randn(n, n_in) for n_in, _, _ in layers}
            for n_in, w, p in layers:  # the products agree (the comparison is of one computation)
                torch.testing.assert_close(linear(inputs[n_in], w, p), F.linear(inputs[n_in], w), rtol=1e-4,
                                           atol=1e-4)
            times: dict[str, list[float]] = {"plain": [], "packed": []}
            for variant in times:  # warm-up
                forward_time(variant, inputs)
            for _ in range(args.rounds):
                for variant in times:
                    times[variant].append(forward_time(variant, inputs))
            ms = {v: statistics.median(t) for v, t in times.items()}
            results.append({"rows": n, "plain_ms": ms["plain"], "packed_ms": ms["packed"],
                            "speedup": ms["plain"] / ms["packed"]})
    print(f"{args.recipe} ({args.scale}): {sum(shapes.values())} linear products per forward, "
          f"{len(shapes)} shapes: " + ", ".join(f"{i}x{o} x{c}" for (i, o), c in sorted(shapes.items())))
    print(format_table(results, [("rows", "rows"), ("plain_ms", "F.linear ms"), ("packed_ms", "packed ms"),
                                 ("speedup", "packed speed-up")]))
    result = {
        **run_header(torch.device("cpu"), {"recipe": args.recipe, "scale": args.scale, "overrides": args.set,
                                           "vocab": vocab, "iters": args.iters, "rounds": args.rounds,
                                           "timer": "wall, median of alternating rounds"},
                     "nanolab.bench_linear/1"),
        "shapes": [{"in": i, "out": o, "layers": c} for (i, o), c in sorted(shapes.items())],
        "results": results,
        "ratios": {f"rows{r['rows']}:packed/plain": round(r["speedup"], 3) for r in results},
    }
    print(f"wrote {write_json(args.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("bench_linear", main))
