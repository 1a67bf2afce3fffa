"""Score reports (JSON), their summary table, and side-by-side comparison of runs with bootstrap intervals.

The score report's field names are a public interface (ARCHITECTURE.md "Score report"; pinned by
tests/integration/test_nanoeval_score.py):

- `schema`, `created`, `nanoeval_version`, `wall_seconds`
- `checkpoint`: `path`, `run`, `recipe`, `step`, `train_loss`, `val_ce`
- `model`: `params` (total), `param_counts`, `causal`, `inference_mode`, `noncausal_layers`
- `heldout`: `ce`, `bpb`, `ppl`, `entropy`, `n_tokens`, `split`, `seq_len`, `dataset`, `train_mode_ce`,
  `train_mode_gap`
- `generation`: `n_samples`, `valid_rate`, `bracket_balance`, `error_density`, `distinct_3`, `compile_rate`,
  `tok_per_s`, `n_tokens`, `seconds`, `finish`, `prompts`, `samples_per_prompt`, `decode`, `metrics`,
  `sampling` (the sampling settings), and with `--metrics seed` also `seed_metrics`
- `samples`: one object per sample: `prompt`, `text`, `finish`, `n_tokens`, `prompt_truncated`, `valid`,
  `bracket_balance`, `error_density`, `distinct_3`, `n_errors`, `first_error_line`, `compiles`, and with
  `--metrics seed` also `seed_metrics`

Validity, bracket balance and error density are measured on prompt + completion (the completion continues the
prompt's code), truncation-aware: a sample that did not end with `<eos>` counts as cut. `distinct_3` is measured
on the completion alone (it measures the model's own repetition).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from nanotrain.errors import UserError

SCHEMA = "nanoeval.score/1"
RATE_FIELDS = ("valid_rate", "bracket_balance", "distinct_3")
_PER_SAMPLE = {"valid_rate": "valid", "bracket_balance": "bracket_balance", "distinct_3": "distinct_3"}


def write_json(path: str | Path, obj) -> Path:
    """Write JSON atomically: a temporary sibling, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically (temporary sibling + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def score_samples(samples, metrics: str = "default") -> list[dict]:
    """Per-sample records for the report: tree-sitter validity and lexer brackets (nanoeval.rust), plus the
    original's heuristics with `metrics="seed"`."""
    from nanoeval import rust

    if metrics not in ("default", "seed"):
        raise UserError(f"--metrics {metrics!r}: expected default or seed")
    records = []
    for s in samples:
        score = rust.score_sample(s.prompt + s.text, truncated=s.finish != "eos")
        record = {
            "prompt": s.prompt,
            "text": s.text,
            "finish": s.finish,
            "n_tokens": s.n_tokens,
            "prompt_truncated": s.prompt_truncated,
            "valid": score.valid,
            "bracket_balance": score.bracket_balance,
            "error_density": score.error_density,
            "distinct_3": rust.distinct_3(s.text),
            "n_errors": score.n_errors,
            "first_error_line": score.first_error_line,
            "compiles": None,
        }
        if metrics == "seed":
            from nanoeval import seed_metrics

            record["seed_metrics"] = seed_metrics.score(s.prompt + s.text)
        records.append(record)
    return records


def compile_check(records: list[dict], timeout: float = 30.0, progress: bool = False) -> float | None:
    """Compile each sample's prompt + text as a library crate with `rustc --emit=metadata`; fills `compiles`.

    Returns the compile rate. Fragments cut by the token limit are expected not to compile: the rate is a strict
    measure, reported as is. UserError when rustc is not installed.
    """
    from tqdm import tqdm

    rustc = shutil.which("rustc")
    if rustc is None:
        raise UserError("--compile-check: rustc not found on PATH (install Rust or drop the flag)")
    if not records:
        return None
    with tempfile.TemporaryDirectory(prefix="nanoeval-rustc-") as tmp:
        src, out = Path(tmp) / "sample.rs", Path(tmp) / "sample.rmeta"
        for r in tqdm(records, desc="rustc", unit="sample", disable=not progress, leave=False):
            src.write_text(r["prompt"] + r["text"], encoding="utf-8")
            cmd = [rustc, "--edition", "2021", "--crate-type", "lib", "--emit=metadata", "-A", "warnings",
                   "-o", str(out), str(src)]
            try:
                r["compiles"] = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=tmp).returncode == 0
            except subprocess.TimeoutExpired:
                r["compiles"] = False
    return sum(r["compiles"] for r in records) / len(records)


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def build_score_report(
    *,
    loaded,
    heldout,
    dataset_path: Path | None,
    generation,
    records: list[dict],
    prompts_spec: str,
    samples_per_prompt: int,
    metrics: str,
    compile_rate: float | None,
    wall_seconds: float,
) -> dict:
    """Assemble the score report (see the module doc for the contract)."""
    import nanoeval

    ckpt_metrics = loaded.metrics()
    counts = loaded.model.param_counts()
    finish = {k: sum(1 for r in records if r["finish"] == k) for k in ("eos", "stop", "length")}
    report = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nanoeval_version": nanoeval.__version__,
        "wall_seconds": round(wall_seconds, 2),
        "checkpoint": {
            "path": str(loaded.folder),
            "run": loaded.run_name,
            "recipe": loaded.recipe,
            "step": loaded.step,
            "train_loss": _pick(ckpt_metrics, "loss", "train_loss"),
            "val_ce": _pick(ckpt_metrics, "val_ce"),
        },
        "model": {
            "params": int(counts["total"]),
            "param_counts": {k: int(v) for k, v in counts.items()},
            "causal": bool(loaded.model.is_causal),
            "inference_mode": generation.inference_mode,
            "noncausal_layers": list(loaded.model.noncausal_layers()),
        },
        "heldout": None if heldout is None else {**heldout.to_dict(), "dataset": str(dataset_path)},
        "generation": {
            "n_samples": len(records),
            "valid_rate": _mean(r["valid"] for r in records),
            "bracket_balance": _mean(r["bracket_balance"] for r in records),
            "error_density": _mean(r["error_density"] for r in records),
            "distinct_3": _mean(r["distinct_3"] for r in records),
            "compile_rate": compile_rate,
            "tok_per_s": generation.tok_per_s,
            "n_tokens": generation.n_tokens,
            "seconds": round(generation.seconds, 3),
            "finish": finish,
            "prompts": prompts_spec,
            "samples_per_prompt": samples_per_prompt,
            "decode": ("compiled, CUDA graphs" if generation.cuda_graphs
                       else "compiled" if generation.compiled else "eager"),
            "metrics": metrics,
            "sampling": generation.config.to_dict(),
        },
        "samples": records,
    }
    if metrics == "seed":
        keys = records[0]["seed_metrics"].keys() if records else []
        report["generation"]["seed_metrics"] = {k: _mean(r["seed_metrics"][k] for r in records) for k in keys}
    return report


def _pick(d: dict, *keys):
    """The first of `keys` present in `d` (metrics.json may nest train/val sections)."""
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    for section in ("train", "val"):
        sub = d.get(section)
        if isinstance(sub, dict):
            for k in keys:
                for name in (k, k.removeprefix(f"{section}_")):
                    if sub.get(name) is not None:
                        return sub[name]
    return None


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_summary(report: dict) -> str:
    """A short human table of the report's headline numbers."""
    ck, m, h, g = report["checkpoint"], report["model"], report["heldout"] or {}, report["generation"]
    rows = [
        ("checkpoint", ck["path"]),
        ("recipe / step", f"{ck['recipe']} / {ck['step']}"),
        ("params", f"{m['params']:,}"),
        ("causal / inference mode", f"{_fmt(m['causal'])} / {m['inference_mode']}"),
        ("held-out CE (nats/token)", _fmt(h.get("ce"), 4)),
        ("held-out bits/byte", _fmt(h.get("bpb"), 4)),
        ("held-out ppl / entropy", f"{_fmt(h.get('ppl'), 2)} / {_fmt(h.get('entropy'), 4)}"),
        ("samples", f"{g['n_samples']} ({g['prompts']} x {g['samples_per_prompt']})"),
        ("valid rate (tree-sitter)", _fmt(g["valid_rate"])),
        ("bracket balance", _fmt(g["bracket_balance"])),
        ("error density (/KB)", _fmt(g["error_density"], 2)),
        ("distinct-3", _fmt(g["distinct_3"])),
        ("compile rate (rustc)", _fmt(g["compile_rate"])),
        ("finish eos/stop/length", "/".join(str(g["finish"][k]) for k in ("eos", "stop", "length"))),
        (f"tok/s ({g.get('decode', 'eager')} decode)", f"{g['tok_per_s']:.1f}"),
    ]
    if h.get("train_mode_ce") is not None:
        rows.insert(7, ("train-mode CE / gap", f"{_fmt(h['train_mode_ce'], 4)} / {_fmt(h['train_mode_gap'], 4)}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# --------------------------------------------------------------------------------------------------------------
# compare


def bootstrap_ci(values, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of per-sample `values` (None for fewer than 2 values)."""
    import numpy as np

    x = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    if len(x) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def read_score_report(path: str | Path) -> dict:
    """A score report JSON; UserError if unreadable or not a score report."""
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read score report ({e.__class__.__name__})") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise UserError(f"{path}: not a nanoeval score report (expected schema {SCHEMA!r})")
    return report


def compare_row(path: str | Path, verify: bool = True) -> dict:
    """One comparison row from a score report, or from a checkpoint/run folder (with its score.json if any).

    `verify`: the checkpoint's config.json and metrics.json (what the row reads) must match its manifest."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such score report or checkpoint folder")
    if path.is_file():
        return _row_from_report(read_score_report(path), str(path))
    from nanoeval.load import resolve_checkpoint
    from nanotrain.checkpoint import CONFIG_FILE, METRICS_FILE, present, read_config, verify_manifest

    folder = resolve_checkpoint(path, verify=verify)
    if verify:
        verify_manifest(folder, (CONFIG_FILE, *present(folder, METRICS_FILE)))
    for candidate in (folder / "score.json", folder.parent / "score.json"):
        if candidate.is_file():
            report = read_score_report(candidate)
            if Path(report["checkpoint"]["path"]).resolve() == folder.resolve():
                return _row_from_report(report, str(path))
    import torch

    from nanotrain.config import ModelConfig
    from nanotrain.model.gpt import GPT

    config = read_config(folder)
    try:
        ckpt_metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        ckpt_metrics = {}
    with torch.device("meta"):  # shapes only: parameter count and causality without loading weights
        model = GPT(ModelConfig.from_dict(config["model"]))
    return {
        "run": folder.parent.name, "source": str(path), "recipe": config["recipe"],
        "params": model.param_counts()["total"], "step": config["step"],
        "train_loss": _pick(ckpt_metrics, "loss", "train_loss"), "val_ce": _pick(ckpt_metrics, "val_ce"),
        "bpb": _pick(ckpt_metrics, "val_bpb", "bpb"), "valid_rate": None, "bracket_balance": None,
        "distinct_3": None, "ci": {}, "n_samples": 0, "causal": model.is_causal, "inference_mode": None,
    }


def _row_from_report(report: dict, source: str) -> dict:
    ck, g, h = report["checkpoint"], report["generation"], report.get("heldout") or {}
    ci = {k: bootstrap_ci([s[_PER_SAMPLE[k]] for s in report["samples"]]) for k in RATE_FIELDS}
    return {
        "run": ck["run"], "source": source, "recipe": ck["recipe"], "params": report["model"]["params"],
        "step": ck["step"], "train_loss": ck.get("train_loss"), "val_ce": h.get("ce", ck.get("val_ce")),
        "bpb": h.get("bpb"), "valid_rate": g["valid_rate"], "bracket_balance": g["bracket_balance"],
        "distinct_3": g["distinct_3"], "ci": ci, "n_samples": g["n_samples"],
        "causal": report["model"]["causal"], "inference_mode": report["model"]["inference_mode"],
    }


def _with_ci(value, ci) -> str:
    if value is None:
        return "-"
    if ci is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def compare_table(rows: list[dict]) -> str:
    """Markdown table, one row per run, rates with bootstrap 95% intervals over samples."""
    header = ["run", "params", "steps", "train loss", "val CE", "bpb", "valid rate", "bracket balance",
              "distinct-3", "n", "causal", "inference mode"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["run"], "-" if r["params"] is None else f"{r['params'] / 1e6:.2f}M", _fmt(r["step"]),
            _fmt(r["train_loss"], 4), _fmt(r["val_ce"], 4), _fmt(r["bpb"], 4),
            _with_ci(r["valid_rate"], r["ci"].get("valid_rate")),
            _with_ci(r["bracket_balance"], r["ci"].get("bracket_balance")),
            _with_ci(r["distinct_3"], r["ci"].get("distinct_3")), str(r["n_samples"]),
            _fmt(r["causal"]), r["inference_mode"] or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nRates: mean over samples [bootstrap 95% interval, 2000 resamples].\n"
