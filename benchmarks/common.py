"""Shared benchmark harness: device facts, timing, tables and JSON results (MFU: `nanotrain.mfu`).

Timing rule: on CUDA each variant runs alone (warm-up, then CUDA events around every step, peak memory from the
allocator); on CPU all variants are built first and their steps are interleaved round by round, so a neighbour
loading the shared cores slows every variant alike; the median step is reported. On CPU the process CPU time of
each step is recorded too: on a shared, oversubscribed machine it varies far less than wall time.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tqdm import tqdm

from nanotrain.errors import UserError
from nanotrain.files import write_json  # noqa: F401 - the result writer of every benchmark
from nanotrain.mfu import peak_bf16_flops

if TYPE_CHECKING:  # torch is imported where it is used, so a script's --help and flag checks start fast
    import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

def resolve_device(name: str) -> torch.device:
    """`cpu` or `cuda` from a --device flag; UserError if CUDA is asked for but absent."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch (use --device cpu)")
    return torch.device(name)


def set_threads(threads: int | None) -> None:
    """Apply a --threads flag (None keeps torch's choice); UserError below 1."""
    import torch

    if threads is None:
        return
    if threads < 1:
        raise UserError(f"--threads {threads}: must be at least 1")
    torch.set_num_threads(threads)


def training_process_setup(device: torch.device) -> bool:
    """The process set-up `nanotrain run` applies on a CPU: glibc keeps freed blocks for reuse instead of unmapping
    them and faulting them in again (`nanotrain.malloc`). It holds for the whole process, so a reference timed in
    the same run gets it too. On the 2-core CPU it made both compiled tiny steps ~10% faster (baseline-v1, B=16:
    ours 691 vs 759 ms, the reference 602 vs 643 ms). Returns whether it was applied."""
    if device.type != "cpu":
        return False
    from nanotrain.malloc import keep_freed_memory

    return keep_freed_memory()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: name, memory, peak FLOP/s (None on CPU), thread count."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": name, "memory_gib": round(props.total_memory / 2**30, 1),
                "cuda": torch.version.cuda, "peak_bf16_flops": peak_bf16_flops(name)}
    return {"type": "cpu", "name": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "peak_bf16_flops": None}


def run_header(device: torch.device, settings: dict[str, Any], schema: str) -> dict[str, Any]:
    """The common top of every result file (with the 1-minute load average: other work on the machine)."""
    import torch

    return {"schema": schema, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": device_info(device), "torch": torch.__version__, "python": platform.python_version(),
            "settings": settings, "load_avg_1m_start": round(os.getloadavg()[0], 2)}


def autocast_dtype(name: str) -> torch.dtype | None:
    """--dtype bf16 → autocast to bfloat16; fp32 → no autocast."""
    import torch

    return {"bf16": torch.bfloat16, "fp32": None}[name]


@dataclass
class Variant:
    """A thing to time. `build()` returns (step, info): `step()` does one unit of work, `info` goes into the JSON."""

    name: str
    build: Callable[[], tuple[Callable[[], Any], dict[str, Any]]]


@dataclass
class Measurement:
    name: str
    info: dict[str, Any]
    step_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    peak_mem_bytes: int | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.step_ms)

    @property
    def median_cpu_ms(self) -> float | None:
        return statistics.median(self.cpu_ms) if self.cpu_ms else None


def measure(variants: list[Variant], device: torch.device, warmup: int, steps: int,
            desc: str = "timing") -> list[Measurement]:
    """Time every variant: `warmup` untimed units, then `steps` timed ones (see the module docstring)."""
    if device.type == "cuda":
        return [_measure_cuda(v, device, warmup, steps, desc) for v in variants]
    built = []
    for v in tqdm(variants, desc=f"{desc}: build+warm-up", leave=False, file=sys.stderr):
        t0 = time.perf_counter()
        step, info = v.build()
        for _ in range(warmup):
            step()
        built.append((step, Measurement(v.name, info | {"build_s": round(time.perf_counter() - t0, 1)})))
    for r in tqdm(range(steps), desc=f"{desc}: rounds", leave=False, file=sys.stderr):
        shift = r % len(built)
        for step, m in built[shift:] + built[:shift]:
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            m.step_ms.append((time.perf_counter() - t0) * 1e3)
            m.cpu_ms.append((time.process_time() - c0) * 1e3)
    return [m for _, m in built]


def _measure_cuda(v: Variant, device: torch.device, warmup: int, steps: int, desc: str) -> Measurement:
    import torch
    from torch._dynamo.utils import counters

    t0 = time.perf_counter()
    skips = counters["inductor"]["cudagraph_skips"]
    step, info = v.build()
    for _ in tqdm(range(warmup), desc=f"{desc}: {v.name} warm-up", leave=False, file=sys.stderr):
        step()
    # graphs Inductor compiled without their CUDA graph (mode reduce-overhead): 0 means every graph is replayed
    info = info | {"cudagraph_skips": counters["inductor"]["cudagraph_skips"] - skips}
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
    for start, end in tqdm(events, desc=f"{desc}: {v.name}", leave=False, file=sys.stderr):
        start.record()
        step()
        end.record()
    torch.cuda.synchronize(device)
    times = [s.elapsed_time(e) for s, e in events]
    build_s = round(time.perf_counter() - t0 - sum(times) / 1e3, 1)
    m = Measurement(v.name, info | {"build_s": build_s}, times, peak_mem_bytes=torch.cuda.max_memory_allocated(device))
    # One line per variant as it finishes, so a run cut off by a time limit still leaves what it measured.
    print(f"[{desc}] {v.name}: median {m.median_ms:.2f} ms/unit over {steps} (build + {warmup} warm-up: {build_s} s)",
          file=sys.stderr, flush=True)
    del step
    gc.collect()
    torch.cuda.empty_cache()
    return m


def process_peak_rss_gib() -> float:
    """Peak resident memory of this process (Linux reports KiB): on CPU the only memory figure we have."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def gib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain aligned text table; `columns` are (key, header); floats get 3 significant figures."""
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    body = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, (_, h) in enumerate(columns)]
    lines = ["  ".join(h.ljust(w) for (_, h), w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def parse_overrides(pairs: list[str], cfg: Any, flag: str = "--set") -> None:
    """Apply KEY=VALUE overrides to a config dataclass in place (values parsed as JSON, else kept as strings)."""
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not hasattr(cfg, key):
            raise UserError(f"{flag} {pair!r}: expected KEY=VALUE with KEY a {type(cfg).__name__} field")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        setattr(cfg, key, value)


def run_cli(prog: str, main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a benchmark main; a UserError becomes one line `PROG: error: ...` and exit status 2."""
    try:
        return main(argv)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
