"""benchmarks/gpu_check.sh, the GPU set, checked on the CPU: every step's flags parse with its script's own parser.

The set runs only on a lent GPU, a few minutes per session, so a misspelt flag there costs a step of a scarce run.
Here `PY` points at a stand-in interpreter that loads each benchmark script and parses the step's arguments with
the script's `build_parser()` (exit 2 and the argparse message on a bad flag) instead of running it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARSE_ONLY = '''
import importlib.util, sys
args = sys.argv[1:]
if args[:1] == ["-c"]:  # the script's torch/device banner
    sys.exit(0)
script, argv = args[0], args[1:]
sys.path[:0] = [{bench!r}, {root!r}]
spec = importlib.util.spec_from_file_location("bench_under_test", script)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.build_parser().parse_args(argv)
print("parsed", script, flush=True)
'''


def run_gpu_check(tmp_path: Path, *argv: str, only: str | None = None,
                  root: Path = ROOT) -> tuple[subprocess.CompletedProcess, str]:
    """Run `root`'s benchmarks/gpu_check.sh with the parse-only stand-in as PY; (process, its log)."""
    checker = tmp_path / "parse_only.py"
    checker.write_text(PARSE_ONLY.format(bench=str(root / "benchmarks"), root=str(root)))
    py = tmp_path / "py"
    py.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{checker}" "$@"\n')
    py.chmod(0o755)
    env = {**os.environ, "PY": str(py), "OUT": str(tmp_path / "out")}
    env.pop("ONLY", None)
    if only is not None:
        env["ONLY"] = only
    proc = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), *argv], env=env, text=True,
                          capture_output=True, timeout=300)
    log = tmp_path / "out" / f"gpu_check_{argv[0] if argv else 'all'}.log"
    return proc, log.read_text() if log.exists() else ""


def steps_of(log: str) -> list[str]:
    return [line.split()[1].rstrip(":") for line in log.splitlines() if line.startswith("=== ") and ".py " in line]


def test_every_step_of_the_gpu_set_has_flags_its_script_accepts(tmp_path):
    proc, log = run_gpu_check(tmp_path, "all")
    assert proc.returncode == 0, proc.stderr
    steps = steps_of(log)
    assert len(steps) >= 10 and len(set(steps)) == len(steps), steps
    assert "FAILED" not in log, log[-3000:]
    assert log.count("parsed benchmarks/") == len(steps)


def test_only_runs_the_named_steps_and_a_bad_part_is_refused(tmp_path):
    proc, log = run_gpu_check(tmp_path, "all", only="train_b2,decode")
    assert proc.returncode == 0 and steps_of(log) == ["train_b2", "decode"]
    proc, _ = run_gpu_check(tmp_path, "nonsense")
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_the_stand_in_fails_on_a_flag_the_script_lacks(tmp_path):
    """The check itself can fail: a step with a bad flag shows as FAILED in the log."""
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    broken = script.replace("step train_b16 230 bench_train.py --device cuda",
                            "step train_b16 230 bench_train.py --batch-sizes 16 --device cuda")
    assert broken != script
    copy = tmp_path / "benchmarks"
    copy.mkdir()
    for f in (ROOT / "benchmarks").glob("*.py"):
        (copy / f.name).write_text(f.read_text())
    (copy / "gpu_check.sh").write_text(broken)
    (tmp_path / "nanotrain").symlink_to(ROOT / "nanotrain")
    (tmp_path / "nanoeval").symlink_to(ROOT / "nanoeval")
    proc, log = run_gpu_check(tmp_path, "core", only="train_b16", root=tmp_path)
    assert proc.returncode == 0 and "FAILED: train_b16" in log
