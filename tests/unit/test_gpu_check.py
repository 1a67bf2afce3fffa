"""benchmarks/gpu_check.sh, the GPU set, checked on the CPU: every step's flags parse with its script's own parser.

GPU time is scarce, so a misspelt flag found there costs a step of a run that cannot be repeated at once.
Here `PY` points at a stand-in interpreter that loads each benchmark script and parses the step's arguments with
the script's `build_parser()` (exit 2 and the argparse message on a bad flag), then runs its `check_flags(args)`
where it has one (variant, recipe and batch-size names), instead of running it. That covers the prewarm processes
too: each is a step's command with one variant's flag and a one-step run appended.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARSE_ONLY = '''
import importlib.util, json, os, sys
args = sys.argv[1:]
if args[:1] == ["-c"]:  # the script's torch/device banner
    sys.exit(0)
script, argv = args[0], args[1:]
with open({record!r}, "a") as f:  # one line per call, for the tests to compare prewarm and timed commands
    f.write(json.dumps({{"argv": args, "threads": os.environ.get("TORCHINDUCTOR_COMPILE_THREADS")}}) + "\\n")
sys.path[:0] = [{bench!r}, {root!r}]
spec = importlib.util.spec_from_file_location("bench_under_test", script)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
parsed = module.build_parser().parse_args(argv)
if hasattr(module, "check_flags"):
    module.check_flags(parsed)
print("parsed", script, flush=True)
'''
ONE_STEP = {"bench_decode.py": ["--repeats", "1", "--warmup", "0"]}
ONE_STEP_DEFAULT = ["--steps", "1", "--warmup", "1"]


def run_gpu_check(tmp_path: Path, *argv: str, only: str | None = None, root: Path = ROOT,
                  extra_env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, str, list[dict]]:
    """Run `root`'s benchmarks/gpu_check.sh with the parse-only stand-in as PY; (process, its log, the calls)."""
    record = tmp_path / "calls.jsonl"
    record.write_text("")
    checker = tmp_path / "parse_only.py"
    checker.write_text(PARSE_ONLY.format(bench=str(root / "benchmarks"), root=str(root), record=str(record)))
    py = tmp_path / "py"
    py.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{checker}" "$@"\n')
    py.chmod(0o755)
    env = {**os.environ, "PY": str(py), "OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path)}
    env.pop("ONLY", None)
    env.update(extra_env or {})
    if only is not None:
        env["ONLY"] = only
    proc = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), *argv], env=env, text=True,
                          capture_output=True, timeout=300)
    log = tmp_path / "out" / f"gpu_check_{argv[0] if argv else 'targets'}.log"
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    return proc, log.read_text() if log.exists() else "", calls


def steps_of(log: str) -> list[str]:
    return [line.split()[1].rstrip(":") for line in log.splitlines() if line.startswith("=== ") and ".py " in line]


def out_path(call: dict) -> Path:
    """The JSON path a recorded call was given with --out: OUT/NAME.json for a timed step, else a prewarm's."""
    argv = call["argv"]
    return Path(argv[argv.index("--out") + 1])


def split_calls(calls: list[dict], out: Path) -> tuple[dict[str, list[str]], list[list[str]]]:
    """Timed calls by step name (their --out is OUT/NAME.json) with --out dropped, and the prewarm calls (--out in
    the scratch folder) with --out dropped."""
    timed, warm = {}, []
    for call in calls:
        argv, i = call["argv"], call["argv"].index("--out")
        rest = argv[:i] + argv[i + 2:]
        if out_path(call).parent == out:
            timed[out_path(call).stem] = rest
        else:
            warm.append(rest)
    return timed, warm


@pytest.fixture(scope="module")
def whole_set(tmp_path_factory):
    """`gpu_check.sh all` through the stand-in, once for the tests below: (tmp folder, process, log, calls)."""
    tmp = tmp_path_factory.mktemp("gpu_check_all")
    return (tmp, *run_gpu_check(tmp, "all"))


def test_every_step_of_the_gpu_set_has_flags_its_script_accepts(whole_set):
    tmp, proc, log, calls = whole_set
    assert proc.returncode == 0, proc.stderr
    steps = steps_of(log)
    assert len(steps) >= 12 and len(set(steps)) == len(steps), steps
    assert "FAILED" not in log, log[-3000:]
    assert log.count("parsed benchmarks/") == len(steps)
    timed, warm = split_calls(calls, tmp / "out")
    assert sorted(timed) == sorted(steps)
    announced = sum(int(line.split()[2]) for line in log.splitlines() if line.startswith("--- prewarm: "))
    assert len(warm) == announced == log.count(": done (") >= 9
    assert not list(tmp.glob("gpu_check_prewarm.*")), "the scratch folder is left behind"


def test_each_prewarm_builds_what_its_timed_step_builds(whole_set):
    """A prewarm process only helps if Inductor's cache keys match: it must be its step's own command with just
    one variant picked (a later flag of the same name wins in argparse) and a one-step run appended. It runs with
    the host's cores shared out as Inductor compile threads; the timed steps keep the caller's setting."""
    tmp, proc, log, calls = whole_set
    timed, warm = split_calls(calls, tmp / "out")
    picks = {}
    for argv in warm:
        tail = ONE_STEP.get(Path(argv[0]).name, ONE_STEP_DEFAULT)
        assert argv[-len(tail):] == tail, argv
        body = argv[:-len(tail)]
        matches = [n for n, t in timed.items() if body[:len(t)] == t and len(body) - len(t) <= 1]
        assert len(matches) == 1, (argv, matches)
        picks.setdefault(matches[0], []).extend(body[len(timed[matches[0]]):])
    assert {k: sorted(v) for k, v in picks.items()} == {
        "train_b2": ["--only=nanotrain", "--only=reference-muon"],
        "fwdbwd_b2_graphs": ["--only=reference-adamw"],
        "recipes_b2_graphs": ["--recipes=engram-v1", "--recipes=haar-v5"],
        "train_b16": ["--only=nanotrain", "--only=reference-adamw"],
        "decode": ["--batch-sizes=1", "--batch-sizes=64"],
        "decode_engram": [],
        "train_b2_nographs": ["--only=nanotrain", "--only=reference-muon"],
        "train_b2_regional": [],
    }, picks
    warm_threads = {c["threads"] for c in calls if out_path(c).parent != tmp / "out"}
    timed_threads = {c["threads"] for c in calls if out_path(c).parent == tmp / "out"}
    assert warm_threads and all(1 <= int(t) <= os.cpu_count() for t in warm_threads), warm_threads
    assert timed_threads == {os.environ.get("TORCHINDUCTOR_COMPILE_THREADS")}


def test_only_runs_the_named_steps_and_a_bad_part_is_refused(tmp_path):
    proc, log, calls = run_gpu_check(tmp_path, "targets", only="train_b2,decode")
    assert proc.returncode == 0 and steps_of(log) == ["decode", "train_b2"]  # the set's order, not ONLY's
    assert "--- prewarm: 4 processes" in log
    proc, log, calls = run_gpu_check(tmp_path, "targets", only="train_b2", extra_env={"PREWARM": "0"})
    assert proc.returncode == 0 and steps_of(log) == ["train_b2"] and "prewarm" not in log and len(calls) == 1
    proc, _, _ = run_gpu_check(tmp_path, "nonsense")
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_the_stand_in_fails_on_a_flag_the_script_lacks(tmp_path):
    """The check itself can fail: a step with a bad flag shows as FAILED in the log, and so does a prewarm process
    whose variant name its script does not know (`check_flags`)."""
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    broken = script.replace("--compile \\\n      --steps 10 --warmup 3", "--compile \\\n      --stepz 10 --warmup 3")
    broken = broken.replace('"--only=nanotrain|--only=reference-muon" bench_train.py $FULL --batch-size 2 $GRAPHS',
                            '"--only=nanotrain|--only=reference-mun" bench_train.py $FULL --batch-size 2 $GRAPHS')
    assert broken.count("--stepz") == 1 and broken.count("reference-mun") == 1
    copy = tmp_path / "benchmarks"
    copy.mkdir()
    for f in (ROOT / "benchmarks").glob("*.py"):
        (copy / f.name).write_text(f.read_text())
    (copy / "gpu_check.sh").write_text(broken)
    (tmp_path / "nanotrain").symlink_to(ROOT / "nanotrain")
    (tmp_path / "nanoeval").symlink_to(ROOT / "nanoeval")
    proc, log, _ = run_gpu_check(tmp_path, "targets", only="train_b2,train_b16", root=tmp_path)
    assert proc.returncode == 0
    assert "FAILED: train_b16" in log and "prewarm train_b16 --only=nanotrain: FAILED" in log
    assert "prewarm train_b2 --only=reference-mun: FAILED" in log and "unknown variant(s) reference-mun" in log
    assert "prewarm train_b2 --only=nanotrain: done" in log and "FAILED: train_b2\n" not in log
