"""Where a training step's time goes: per-phase times of nanotrain's step and the reference's, plus top kernels.

Phases (each bracketed by CUDA events on a GPU, perf_counter + synchronise on CPU): forward (autocast), objective +
backward, clip, optimiser step, post-step clamps, zero grads. The reference step is split the same way (its
forward includes the loss). After the timed steps one more step of ours runs under torch.profiler and the
heaviest operators by device time (GPU) or CPU time are printed, with the number of operator calls per step,
which tells a launch-bound step (many small kernels) from a compute-bound one.

Usage: python benchmarks/profile_step.py --device cuda --scale full --batch-size 2 [--compile] [--recipe R]
Output is text on stdout (and JSON with --out); it is a diagnostic, not a benchmark of record.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="profile_step.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--recipe", default="baseline-v1")
    p.add_argument("--scale", choices=["tiny", "small", "full"], default=None,
                   help="default: tiny on cpu, full on cuda")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=None, help="default: the recipe's")
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile our forward and loss (as the Trainer does) and the reference's forward+loss")
    p.add_argument("--no-reference", action="store_true", help="profile ours only")
    p.add_argument("--isolate", action="store_true",
                   help="wait for the GPU before each phase, so its host time is the time to issue that phase "
                        "alone: without it a phase can also wait for the launch queue to drain, which hides "
                        "which phase is host-bound (the sum of phases then exceeds the step; no effect on CPU)")
    p.add_argument("--top", type=int, default=20, help="operators to list (default 20)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a ModelConfig field")
    from nanotrain.model.mhc import MHC_FORMS

    p.add_argument("--mhc-form", default="auto", choices=MHC_FORMS,
                   help="mHC form of our model (see nanotrain/model/mhc.py; default auto)")
    p.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    return p


class PhaseTimer:
    """Collects named intervals; CUDA events on a GPU (read once at the end), wall clock + sync on CPU.

    It also keeps the host's own time per phase (perf_counter around the call, no sync): on a GPU that is how long
    Python took to issue the phase's work, so a phase whose host time is close to its device time is host-bound
    (the device waited for the launches). Without `isolate` the host can also block inside a phase on a full
    launch queue left by the previous one (on an H200 the reference's forward at B=2 showed 22.6 ms of host time
    for 11.7 ms of device time that way); with it each phase starts on an idle GPU. On the CPU the two are the same
    interval."""

    def __init__(self, device, isolate: bool = False):
        import torch

        self.torch, self.cuda, self.isolate = torch, device.type == "cuda", isolate
        self.marks: list[tuple[str, object, object]] = []
        self.host: list[tuple[str, float]] = []

    def _now(self):
        if self.cuda:
            e = self.torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def phase(self, name, fn):
        if self.isolate and self.cuda:
            self.torch.cuda.synchronize()
        h0 = time.perf_counter()
        t0 = self._now()
        r = fn()
        self.marks.append((name, t0, self._now()))
        self.host.append((name, (time.perf_counter() - h0) * 1e3))
        return r

    def host_results(self) -> dict[str, float]:
        """Median host milliseconds per phase name."""
        return _medians(self.host)

    def results(self) -> dict[str, float]:
        """Median milliseconds per phase name."""
        if self.cuda:
            self.torch.cuda.synchronize()
        return _medians((name, a.elapsed_time(b) if self.cuda else (b - a) * 1e3) for name, a, b in self.marks)


def _medians(named_ms) -> dict[str, float]:
    """{name: median ms} over (name, ms) pairs, names in first-seen order."""
    by: dict[str, list[float]] = {}
    for name, ms in named_ms:
        by.setdefault(name, []).append(ms)
    return {k: round(statistics.median(v), 3) for k, v in by.items()}


def our_step(args, device):
    import bench_train as bt
    import torch

    from nanotrain.model.gpt import GPT
    from nanotrain.model.mhc import set_mhc_form
    from nanotrain.optim.groups import build_optimizers, clip_grad_norm_
    from nanotrain.train import objective

    mc, tc = bt.build_model_cfg(args.recipe, args.scale, args.set)
    torch.manual_seed(0)
    model = GPT(mc).to(device).train()
    set_mhc_form(model, args.mhc_form)
    opts = build_optimizers(model, tc)
    fwd = torch.compile(model) if args.compile else model
    loss_of = torch.compile(objective) if args.compile else objective  # compiled as the Trainer does
    x, y = bt.random_batch(mc.vocab_size, args.batch_size, args.seq_len, device, 0)
    params = opts.parameters()

    def step(t: PhaseTimer):
        opts.set_lr_scale(1.0)

        def forward():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return fwd(x)
        out = t.phase("forward", forward)

        def backward():
            loss, _ = loss_of(out, y, tc.label_smoothing, mc.mtp_weight)
            loss.backward()
            return loss
        loss = t.phase("objective+backward", backward)
        gnorm = t.phase("clip", lambda: clip_grad_norm_(params, tc.grad_clip))
        ok = t.phase("finite flag (on the device)",
                     lambda: torch.isfinite(loss.detach()) & torch.isfinite(gnorm))
        t.phase("optimiser step (gated by the flag)", lambda: opts.step(ok=ok))
        t.phase("post-step clamps", model.after_optimizer_step)
        t.phase("zero grads", opts.zero_grad)
    return step


def reference_step(args, device):
    import bench_train as bt
    import reference
    import torch

    mc, tc = bt.build_model_cfg(args.recipe, args.scale, args.set)
    cfg = reference.RefConfig.from_model_config(mc, label_smoothing=tc.label_smoothing)
    torch.manual_seed(0)
    model = reference.RefGPT(cfg).to(device)
    opt = reference.BatchedMuon(model)
    loss_fn = torch.compile(model.loss) if args.compile else model.loss
    x, y = bt.random_batch(cfg.vocab_size, args.batch_size, args.seq_len, device, 0)

    def step(t: PhaseTimer):
        def forward():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return loss_fn(x, y)
        loss = t.phase("forward", forward)
        t.phase("objective+backward", loss.backward)
        t.phase("clip", lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip, foreach=True))
        t.phase("optimiser step", opt.step)
        t.phase("zero grads", opt.zero_grad)
    return step


def time_phases(name, step, args, device) -> dict[str, float]:
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step(PhaseTimer(device))
    built = time.perf_counter() - t0
    timer = PhaseTimer(device, args.isolate)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(timer)
    if device.type == "cuda":
        import torch
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / args.steps * 1e3
    res = timer.results()
    host = timer.host_results()
    res["sum of phases"] = round(sum(res.values()), 3)
    host["sum of phases"] = round(sum(host.values()), 3)
    res["wall per step"] = round(wall, 3)
    print(f"\n{name}  (warm-up incl. build/compile {built:.1f} s)")
    print(f"  {'phase':36s} {'device' if device.type == 'cuda' else 'wall':>10s}     {'host':>8s}")
    for k, v in res.items():
        print(f"  {k:36s} {v:10.2f} ms" + (f"  {host[k]:8.2f} ms" if k in host else ""))
    return res | {"host_ms": host}


def top_ops(step, args, device) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step(PhaseTimer(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
    ka = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    n_calls = sum(e.count for e in ka if e.key.startswith("aten::"))
    kernels = sum(e.count for e in ka if getattr(e, "device_type", None) is not None
                  and str(e.device_type).endswith("CUDA")) if device.type == "cuda" else None
    print(f"\naten operator calls in one step of ours: {n_calls}" +
          (f"; device kernels: {kernels}" if kernels is not None else ""))
    print(ka.table(sort_by=key, row_limit=args.top, max_name_column_width=60))
    return {"aten_calls": n_calls, "device_kernels": kernels}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import bench_train as bt
    import torch

    device = common.resolve_device(args.device)
    malloc_tuned = common.training_process_setup(device)
    args.scale = args.scale or ("full" if device.type == "cuda" else "tiny")
    _, tc = bt.build_model_cfg(args.recipe, args.scale, args.set)
    args.seq_len = args.seq_len or tc.seq_len
    print(f"device {common.device_info(device)['name']}, torch {torch.__version__}, {args.recipe} {args.scale}, "
          f"B={args.batch_size} T={args.seq_len}, bf16 autocast{', compiled' if args.compile else ', eager'}, "
          f"mHC form {args.mhc_form}{', phases isolated' if args.isolate else ''}")
    out = {"settings": vars(args) | {"out": str(args.out), "malloc_tuned": malloc_tuned}}
    ours = our_step(args, device)
    out["nanotrain"] = time_phases("nanotrain (Muon+Lion)", ours, args, device)
    out["nanotrain_profile"] = top_ops(ours, args, device)
    del ours
    if not args.no_reference:
        out["reference"] = time_phases("reference (batched Muon + AdamW)", reference_step(args, device), args, device)
    if args.out:
        common.write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(common.run_cli("profile_step.py", main))
