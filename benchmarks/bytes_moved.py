"""Memory traffic of the compiled training step, without a GPU: Inductor's own count of the bytes its kernels read
and write, ours against the reference, per transformer layer.

A full-scale step at B=16 is bound by memory bandwidth as much as by FLOPs, and a GPU is not always at hand.
Inductor sums, for every kernel it schedules (fused elementwise and reductions, and the matmuls it calls out to),
the sizes of the buffers the kernel reads and writes (`GraphLowering.count_bytes`, logged under
TORCH_LOGS=inductor_metrics). This script compiles the forward, loss and backward of each variant with the caches
off (a cache hit skips the count) at two depths and reports the bytes per layer (the difference over the layers
added) and the rest (embedding, heads, loss). Counted on the CPU, whose code generator fuses somewhat differently
from the GPU's, so the figures estimate the GPU's traffic, they do not measure it; the per-layer difference between
variants is what to read.

Usage: python benchmarks/bytes_moved.py [--layers 2,4] [--batch-size 2] [--seq-len 1024] [--set mhc_streams=1]
Takes ~1 minute per compile at full width on the 2-core CPU (two depths x the variants). JSON with --out.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

VARIANTS = ("nanotrain", "reference")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bytes_moved.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="baseline-v1", help="recipe whose shapes are counted (default baseline-v1)")
    p.add_argument("--scale", choices=["tiny", "small", "full"], default="full", help="default full")
    p.add_argument("--layers", default="2,4", metavar="A,B",
                   help="the two depths to compile (default 2,4); bytes per layer = the difference / (B - A)")
    p.add_argument("--batch-size", type=int, default=2, help="sequences per step (default 2; traffic grows with it)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence (default 1024)")
    p.add_argument("--only", default=",".join(VARIANTS), metavar="LIST",
                   help="comma list of variants: nanotrain (ours, forward + objective + backward, as the Trainer "
                        "compiles them) and reference (benchmarks/reference.py's loss and backward)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ModelConfig field of both variants, e.g. --set mhc_streams=1 (repeatable)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="autocast dtype (default bf16)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    return p


def check_flags(args) -> tuple[int, int]:
    """The two depths, A < B, and the variants; UserError names the flag."""
    from nanotrain.errors import UserError

    try:
        depths = [int(x) for x in args.layers.split(",")]
    except ValueError:
        depths = []
    if len(depths) != 2 or not 1 <= depths[0] < depths[1]:
        raise UserError(f"--layers {args.layers}: expected two depths A,B with 1 <= A < B, e.g. 2,4")
    unknown = set(args.only.split(",")) - set(VARIANTS)
    if unknown or not args.only:
        raise UserError(f"--only {args.only}: unknown variant(s) {', '.join(sorted(unknown)) or '(none)'}; "
                        f"choose from {', '.join(VARIANTS)}")
    if any(kv.split("=")[0].strip() == "n_layers" for kv in args.set):
        raise UserError("--set n_layers: the depths come from --layers")
    for flag, value in (("--batch-size", args.batch_size), ("--seq-len", args.seq_len)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    return depths[0], depths[1]


def per_layer(bytes_a: int, bytes_b: int, depth_a: int, depth_b: int) -> tuple[float, float]:
    """(bytes per layer, bytes outside the layers) from the totals at two depths (traffic is linear in depth)."""
    slope = (bytes_b - bytes_a) / (depth_b - depth_a)
    return slope, bytes_a - slope * depth_a


def count_step_bytes(variant: str, depth: int, args) -> int:
    """Compile one forward+loss+backward of `variant` at `depth` layers, caches off; the bytes Inductor counted."""
    import bench_train
    import torch
    from torch._inductor import metrics

    bench_args = bench_train.build_parser().parse_args(
        ["--scale", args.scale, "--recipe", args.recipe, "--batch-size", str(args.batch_size), "--seq-len",
         str(args.seq_len), "--compile", "--fwd-bwd-only", "--dtype", args.dtype, "--set", f"n_layers={depth}",
         *(x for kv in args.set for x in ("--set", kv))])
    bench_train.resolve_settings(bench_args)
    device = torch.device("cpu")
    if variant == "nanotrain":
        v = bench_train.our_variant(args.recipe, args.scale, bench_args.set, bench_args, device, variant)
    else:
        v = bench_train.reference_variant(args.recipe, args.scale, bench_args.set, bench_args, device, "adamw")
    torch._dynamo.reset()
    metrics.reset()
    step, _ = v.build()
    step()
    return int(metrics.num_bytes_accessed)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    depth_a, depth_b = check_flags(args)
    common.set_threads(args.threads)
    import torch
    import torch._inductor.config as inductor_config

    inductor_config.force_disable_caches = True  # a cache hit would skip the count
    warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")
    # Inductor counts the bytes only while its `inductor_metrics` log is on; on, but kept off the terminal
    metrics_log = torch._logging.getArtifactLogger("torch._inductor.compile_fx", "inductor_metrics")
    metrics_log.setLevel(logging.INFO)
    metrics_log.propagate = False
    metrics_log.addHandler(logging.NullHandler())

    variants = [v for v in VARIANTS if v in args.only.split(",")]
    rows = []
    for v in variants:
        totals = {}
        for depth in (depth_a, depth_b):
            print(f"compiling {v} at {depth} layers ...", file=sys.stderr, flush=True)
            totals[depth] = count_step_bytes(v, depth, args)
        layer, rest = per_layer(totals[depth_a], totals[depth_b], depth_a, depth_b)
        rows.append({"name": v, "bytes_total": totals, "mb_per_layer": round(layer / 1e6, 1),
                     "mb_outside_layers": round(rest / 1e6, 1)})
    ratio = None
    if len(rows) == 2:
        ratio = round(rows[0]["mb_per_layer"] / rows[1]["mb_per_layer"], 3)
    settings = {"recipe": args.recipe, "scale": args.scale, "layers": [depth_a, depth_b],
                "batch_size": args.batch_size, "seq_len": args.seq_len, "dtype": args.dtype, "overrides": args.set}
    result = common.run_header(torch.device("cpu"), settings, "nanolab.bytes_moved/1")
    result.update({"results": rows, "ratio_per_layer": ratio,
                   "counted_by": "Inductor GraphLowering.count_bytes (CPU code generator), forward+loss+backward"})
    print(f"{args.recipe} {args.scale}, B={args.batch_size} T={args.seq_len}, {args.dtype}, "
          f"overrides {args.set or 'none'}: bytes Inductor's kernels read and write per step, forward+loss+backward")
    print(common.format_table(rows, [("name", "variant"), ("mb_per_layer", "MB per layer"),
                                     ("mb_outside_layers", "MB outside the layers")]))
    if ratio is not None:
        print(f"ratio nanotrain/reference per layer: {ratio}")
    if args.out:
        print(f"wrote {common.write_json(args.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(common.run_cli("bytes_moved.py", main))
