"""The Gradio demo served by `python -m apps.demo`, driven over HTTP with gradio_client (real tiny checkpoints).

One server per module: it is started with the real CLI on a free port and a runs folder holding copies of two
tiny causal checkpoints (engram-v1, baseline-v1), a non-causal one (haar-v5) and one with truncated weights
(broken). Next to the runs folder sits a checkpoint that must never be served, reachable by `..`, by absolute path
and through a symlink inside runs/.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from apps.demo import discover_checkpoints, resolve_checkpoint
from nanoeval.cli import main as nanoeval_main
from nanotrain.errors import UserError

ROOT = Path(__file__).resolve().parents[2]

PROMPT = "fn main() {"
CAUSAL = ["engram-v1/final", "baseline-v1/final"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_run(ckpt: Path, runs: Path, name: str) -> None:
    """Copy a checkpoint (and its run's metrics log) to runs/<name>/final, as a user's runs folder holds them."""
    shutil.copytree(ckpt, runs / name / "final")
    shutil.copy(Path(ckpt).parent / "metrics.jsonl", runs / name / "metrics.jsonl")


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory, tiny_checkpoint_factory) -> Path:
    base = tmp_path_factory.mktemp("app")
    runs = base / "runs"
    runs.mkdir()
    for recipe in ("engram-v1", "baseline-v1", "haar-v5"):
        copy_run(tiny_checkpoint_factory(recipe), runs, recipe)
    shutil.copytree(runs / "engram-v1" / "final", base / "outside" / "final")
    shutil.copytree(runs / "baseline-v1" / "final", runs / "broken" / "final")
    weights = runs / "broken" / "final" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (runs / "escape").symlink_to(base / "outside", target_is_directory=True)
    prompts = base / "prompts.jsonl"
    prompts.write_text('{"prompt": "fn main() {"}\n{"prompt": "pub struct Config {"}\n')
    rc = nanoeval_main(["score", "--ckpt", str(runs / "engram-v1" / "final"), "--prompts", str(prompts),
                        "--samples-per-prompt", "2", "--max-new-tokens", "12", "--heldout-tokens", "0",
                        "--out", str(runs / "engram-v1" / "score.json")])
    assert rc == 0
    return runs


def wait_until_up(proc: subprocess.Popen, url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the demo exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the demo did not answer on {url} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def server(runs_folder):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apps.demo", "--runs", str(runs_folder), "--port", str(port),
         "--concurrency", "2", "--cache-size", "3"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(proc, url)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def generate(client, checkpoints, seed=7, max_tokens=48, bypass=False, prompt=PROMPT, full=False):
    """Submit one Generate request; returns (streamed results, final results), or with `full` (streamed results,
    every final output: header, code and stats of each of the 4 panels, then the results)."""
    job = client.submit(checkpoints, prompt, 0.8, 40, 0.95, max_tokens, seed, bypass, api_name="/generate")
    streamed = [out[-1] for out in job]
    outputs = job.result()
    return streamed, (outputs if full else outputs[-1])


def test_generate_streams_scores_and_reproduces(client):
    from nanoeval.rust import score_sample

    streamed, outputs = generate(client, CAUSAL, full=True)
    final = outputs[-1]
    assert [r["checkpoint"] for r in final] == CAUSAL
    assert len(streamed) >= 2, "the Generate endpoint must stream partial outputs"
    assert not any(r["done"] for r in streamed[0])
    for i, r in enumerate(final):
        assert r["done"] and r["error"] is None, r
        assert r["completion"].strip(), f"{r['checkpoint']}: empty generation"
        assert r["text"] == PROMPT + r["completion"]
        assert 0 < r["n_tokens"] <= 48 and r["tok_per_s"] > 0
        assert r["truncated"] == (r["finish"] == "length") and r["causal"] is True
        for partial in streamed:
            assert r["completion"].startswith(partial[i]["completion"])
        expect = score_sample(r["text"], r["truncated"])
        assert r["score"]["valid"] == expect.valid
        assert r["score"]["first_error_line"] == expect.first_error_line
        assert r["score"]["bracket_balance"] == pytest.approx(expect.bracket_balance)
        assert (r["score"]["first_error_line"] is None) == (expect.n_errors == 0)
        header, code, stats = outputs[3 * i : 3 * i + 3]
        assert r["checkpoint"] in header and code == r["text"]
        assert f"{r['tok_per_s']:.1f} tok/s" in stats and f"bracket balance {expect.bracket_balance:.2f}" in stats
        if expect.valid:
            assert "✓ **valid**" in stats
        else:
            line = expect.errors[0]["line"]
            assert f"first error at line {line}" in stats
            assert f"{line:>4} | {r['text'].split(chr(10))[line - 1]}" in stats

    _, again = generate(client, CAUSAL)
    assert [r["completion"] for r in again] == [r["completion"] for r in final]


def test_five_concurrent_requests_all_succeed(client):
    _, alone = generate(client, CAUSAL, seed=3, max_tokens=24)
    seeds = [1, 2, 3, 4, 5]
    with ThreadPoolExecutor(len(seeds)) as pool:
        finals = list(pool.map(lambda s: generate(client, CAUSAL, seed=s, max_tokens=24)[1], seeds))
    for final in finals:
        # every panel finished without error and generated: text, or an <eos> the seed drew as its first token
        assert all(r["done"] and r["error"] is None and r["n_tokens"] >= 1
                   and (r["completion"].strip() or r["finish"] == "eos") for r in final), [
            {k: r.get(k) for k in ("checkpoint", "done", "error", "completion", "finish", "n_tokens")} for r in final]
    # Requests overlapped on the same models: each must still get exactly its own seeded text.
    assert [r["completion"] for r in finals[seeds.index(3)]] == [r["completion"] for r in alone]


def test_noncausal_checkpoint_needs_explicit_bypass(client):
    _, refused = generate(client, ["haar-v5/final", "engram-v1/final"], max_tokens=16)
    assert refused[0]["causal"] is False and refused[0]["inference_mode"] == "refused"
    assert "non-causal" in refused[0]["error"] and refused[0]["completion"] == ""
    assert refused[1]["error"] is None and refused[1]["completion"]

    outputs = client.predict(["haar-v5/final", "engram-v1/final"], PROMPT, 0.8, 40, 0.95, 16, 7, True,
                             api_name="/generate")
    header, bypassed = outputs[0], outputs[-1]
    assert "non-causal" in header and "bypass mode" in header
    assert bypassed[0]["inference_mode"] == "bypass" and bypassed[0]["error"] is None
    assert bypassed[0]["completion"] and bypassed[0]["score"] is not None
    assert bypassed[1]["inference_mode"] == "causal"


@pytest.mark.parametrize("choice", ["../outside/final", "escape/final", "ABS"])
def test_paths_outside_runs_are_refused(client, runs_folder, choice):
    from gradio_client.exceptions import AppError

    if choice == "ABS":
        choice = str(runs_folder.parent / "outside" / "final")
    with pytest.raises(AppError, match="outside the runs folder"):
        generate(client, [choice, "engram-v1/final"], max_tokens=4)


def table_row(markdown: str, run: str) -> list[str]:
    rows = [line for line in markdown.split("\n\n")[0].splitlines() if line.startswith(f"| {run} |")]
    assert len(rows) == 1, markdown  # the first table: one row per run
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_bad_requests_get_one_clear_line(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=r"seed must be in \[0, 2\*\*63\)"):
        generate(client, CAUSAL, seed=-1)
    with pytest.raises(AppError, match="pick 1 to 4 checkpoints"):
        generate(client, [*CAUSAL, "haar-v5/final", "broken/final", "escape/final"])
    with pytest.raises(AppError, match="no such folder"):
        generate(client, ["engram-v1/step_999"])


def test_corrupt_checkpoint_fails_its_panel_only(client):
    _, final = generate(client, ["broken/final", "engram-v1/final"], max_tokens=8)
    assert final[0]["done"] and final[0]["completion"] == ""
    assert "model.safetensors" in final[0]["error"] and "internal error" not in final[0]["error"]
    assert final[1]["error"] is None and final[1]["completion"]


def test_model_cache_is_lru_by_path(runs_folder):
    from apps.demo import ModelCache

    cache = ModelCache(capacity=1)
    a, b = runs_folder / "engram-v1" / "final", runs_folder / "baseline-v1" / "final"
    first = cache.get(a)
    assert cache.get(a) is first
    assert cache.get(b) is not first
    assert cache.get(a) is not first, "capacity 1: loading b must have evicted a"


def test_metrics_tab_compares_reports_and_plots_curves(client, runs_folder):
    table, loss, ce, val_ce = client.predict(["engram-v1", "baseline-v1"], api_name="/metrics")
    report = json.loads((runs_folder / "engram-v1" / "score.json").read_text())
    scored = table_row(table, "engram-v1")
    assert scored[6].startswith(f"{report['generation']['valid_rate']:.3f}")
    assert scored[9] == str(report["generation"]["n_samples"]) and scored[11] == "causal"
    logged = json.loads((runs_folder / "baseline-v1" / "final" / "metrics.json").read_text())
    assert table_row(table, "baseline-v1")[4] == f"{logged['val']['val_ce']:.4f}"
    assert "haar-v5" not in table

    table_with_broken = client.predict(["broken", "engram-v1"], api_name="/metrics")[0]
    assert "⚠ broken:" in table_with_broken and "model.safetensors" in table_with_broken
    assert table_row(table_with_broken, "engram-v1") == scored

    for run in ("engram-v1", "baseline-v1"):
        lines = [json.loads(x) for x in (runs_folder / run / "metrics.jsonl").read_text().splitlines()]
        for plot, key in ((loss, "loss"), (ce, "ce"), (val_ce, "val_ce")):
            expect = [(m["step"], pytest.approx(m[key])) for m in lines if m.get(key) is not None]
            assert expect, f"{run}/metrics.jsonl has no {key}"
            assert [(row[2], row[3]) for row in plot["data"] if row[0] == run] == expect


def test_discovery_and_path_checks(runs_folder):
    names = [e.name for e in discover_checkpoints(runs_folder)]
    assert sorted(names) == ["baseline-v1/final", "broken/final", "engram-v1/final", "haar-v5/final"]
    assert resolve_checkpoint(runs_folder, "engram-v1/final") == (runs_folder / "engram-v1" / "final").resolve()
    for bad in ("../outside/final", "escape/final", "engram-v1/final/../../../outside/final",
                str(runs_folder.parent / "outside" / "final")):
        with pytest.raises(UserError, match="outside the runs folder"):
            resolve_checkpoint(runs_folder, bad)
    with pytest.raises(UserError, match="no such folder"):
        resolve_checkpoint(runs_folder, "engram-v1/step_99")


def test_cli_refuses_missing_runs_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "apps.demo", "--runs", str(tmp_path / "nope")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"nanolab-demo: error: --runs {tmp_path / 'nope'}: no such folder "
                                                "(train a run first: nanotrain run RECIPE)"]


def test_panel_shows_rustc_verdict_beside_tree_sitter(rustc):
    from apps.demo import Panel, _score

    text = "fn f() { m!(~x); }\n"  # rustc accepts the `~` inside the macro call; tree-sitter does not
    score = _score(text, False, "both", rustc)
    assert score["valid"] is False and score["valid_tree_sitter"] is False and score["valid_rustc"] is True
    panel = Panel(name="a", prompt=text, requested_tokens=8)
    panel.done, panel.n_tokens, panel.tok_per_s, panel.finish, panel.score = True, 1, 1.0, "eos", score
    stats = panel.stats_md()
    assert "tree-sitter: ✗ **invalid**" in stats and "rustc: ✓ **valid**" in stats
    bad = _score("fn f() {\n    let = 1;\n}\n", False, "rustc", rustc)
    assert bad["valid"] is False and bad["valid_tree_sitter"] is None
    panel.score = bad
    assert "rustc: ✗ **invalid** at line 2" in panel.stats_md() and "tree-sitter" not in panel.stats_md()


def test_cli_refuses_an_unfit_rustc(tmp_path):
    argv = ["--runs", str(tmp_path), "--validator", "rustc", "--rustc", str(tmp_path / "nope")]
    proc = subprocess.run([sys.executable, "-m", "apps.demo", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    expect = f"nanolab-demo: error: --rustc {tmp_path / 'nope'}: no such executable"
    assert proc.stderr.strip().splitlines() == [expect]
