"""Score reports (JSON), their summary table, and side-by-side comparison of runs with bootstrap intervals.

The score report's field names are a public interface (docs/ARCHITECTURE.md, "Score report"; pinned by
tests/integration/test_nanoeval_score.py):

- `schema`, `created`, `nanoeval_version`, `wall_seconds`
- `checkpoint`: `path`, `run`, `recipe`, `step`, `train_loss`, `val_ce`
- `model`: `params` (total), `param_counts`, `causal`, `inference_mode`, `noncausal_layers`
- `heldout`: `ce`, `bpb`, `ppl`, `entropy`, `n_tokens`, `split`, `seq_len`, `dataset`, `train_mode_ce`,
  `train_mode_gap`
- `generation`: `n_samples`, `valid_rate`, `bracket_balance`, `error_density`, `distinct_3`, `compile_rate`,
  `tok_per_s`, `n_tokens`, `seconds`, `finish`, `prompts`, `samples_per_prompt`, `decode`, `metrics`,
  `sampling` (the sampling settings), `validator`, `valid_rate_tree_sitter`, `valid_rate_rustc`,
  `validator_agreement`, `validator_disagreements` (indices into `samples`), `rustc` (path, version and origin
  of the rustc used by --validator or --compile-check; None when none ran), and with `--metrics seed` also
  `seed_metrics`
- `samples`: one object per sample: `prompt`, `text`, `finish`, `n_tokens`, `prompt_truncated`, `valid`,
  `valid_tree_sitter`, `valid_rustc`, `rustc_errors`, `bracket_balance`, `error_density`, `distinct_3`,
  `n_errors`, `first_error_line`, `compiles`, and with `--metrics seed` also `seed_metrics`

`valid` and `valid_rate` are the chosen validator's (`both`: tree-sitter's, the default); the per-validator fields
are None for a validator that did not run. `n_errors`, `first_error_line` and `error_density` are tree-sitter's;
`rustc_errors` lists rustc's (see `nanoeval.rustc`).

Validity, bracket balance and error density are measured on prompt + completion (the completion continues the
prompt's code), truncation-aware: a sample that did not end with `<eos>` counts as cut. `distinct_3` is measured
on the completion alone (it measures the model's own repetition).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from nanotrain.errors import UserError
from nanotrain.files import write_json, write_text  # noqa: F401 - the report writers of nanoeval's commands

SCHEMA = "nanoeval.score/1"
RATE_FIELDS = ("valid_rate", "bracket_balance", "distinct_3")
_PER_SAMPLE = {"valid_rate": "valid", "bracket_balance": "bracket_balance", "distinct_3": "distinct_3"}


def score_samples(samples, metrics: str = "default", validator: str = "tree-sitter", rustc=None,
                  progress: bool = False) -> list[dict]:
    """Per-sample records for the report: tree-sitter validity and lexer brackets (nanoeval.rust), rustc's parse
    verdict with `validator` rustc/both (`rustc`: a `nanoeval.rustc.Rustc`), plus the original's heuristics with
    `metrics="seed"`."""
    from nanoeval import rust
    from nanoeval.rustc import VALIDATORS, check_texts

    if metrics not in ("default", "seed"):
        raise UserError(f"--metrics {metrics!r}: expected default or seed")
    if validator not in VALIDATORS:
        raise UserError(f"--validator {validator!r}: expected one of {', '.join(VALIDATORS)}")
    verdicts = [None] * len(samples)
    if validator != "tree-sitter":
        if rustc is None:
            raise UserError(f"--validator {validator}: no rustc given")
        verdicts = check_texts([s.prompt + s.text for s in samples], [s.finish != "eos" for s in samples],
                               rustc, progress=progress)
    records = []
    for s, verdict in zip(samples, verdicts):
        score = rust.score_sample(s.prompt + s.text, truncated=s.finish != "eos")
        record = {
            "prompt": s.prompt,
            "text": s.text,
            "finish": s.finish,
            "n_tokens": s.n_tokens,
            "prompt_truncated": s.prompt_truncated,
            "valid": score.valid if verdict is None or validator == "both" else verdict.valid,
            "valid_tree_sitter": None if validator == "rustc" else score.valid,
            "valid_rustc": None if verdict is None else verdict.valid,
            "rustc_errors": None if verdict is None else verdict.errors,
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


def compile_check(records: list[dict], rustc, progress: bool = False) -> float | None:
    """Compile each sample's prompt + text as a library crate with `rustc --emit=metadata` (`rustc`: a
    `nanoeval.rustc.Rustc`, from `find_rustc`); fills `compiles`.

    Returns the compile rate. Fragments cut by the token limit are expected not to compile: the rate is a strict
    measure, reported as is.
    """
    from nanoeval.rustc import compile_texts

    if not records:
        return None
    for r, ok in zip(records, compile_texts([r["prompt"] + r["text"] for r in records], rustc, progress=progress)):
        r["compiles"] = ok
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
    validator: str = "tree-sitter",
    rustc_info: dict | None = None,
) -> dict:
    """Assemble the score report (see the module doc for the contract). `rustc_info`: the rustc used, if any."""
    import nanoeval
    from nanoeval.rustc import validity_summary

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
            **validity_summary(
                validator,
                None if validator == "rustc" else [r["valid_tree_sitter"] for r in records],
                None if validator == "tree-sitter" else [r["valid_rustc"] for r in records],
            ),
            "rustc": rustc_info,
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


def _validity_rows(g: dict) -> list[tuple[str, str]]:
    """The valid-rate rows of the summary: one per validator that ran, and their agreement."""
    validator = g.get("validator", "tree-sitter")
    rows = []
    for name in ("tree-sitter", "rustc"):
        rate = g.get("valid_rate_" + name.replace("-", "_"), g["valid_rate"] if name == validator else None)
        if rate is not None or name == validator:
            rows.append((f"valid rate ({name})", _fmt(rate)))
    if g.get("validator_agreement") is not None:
        differ = g["validator_disagreements"]
        listed = ", ".join(f"#{i}" for i in differ[:10]) + (", ..." if len(differ) > 10 else "")
        rows.append(("validator agreement", _fmt(g["validator_agreement"])
                     + (f" ({len(differ)} differ: {listed})" if differ else "")))
    return rows


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
        *_validity_rows(g),
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
        "bpb": _pick(ckpt_metrics, "val_bpb", "bpb"), "valid_rate": None, "valid_rate_tree_sitter": None,
        "valid_rate_rustc": None, "bracket_balance": None,
        "distinct_3": None, "ci": {}, "n_samples": 0, "causal": model.is_causal, "inference_mode": None,
    }


def sample_verdicts(report: dict, validator: str) -> list[bool] | None:
    """One validator's per-sample verdicts from a score report (tree-sitter or rustc); None if it did not run.
    Reports written before the validator choice carry tree-sitter's verdicts in `valid`."""
    key = "valid_" + validator.replace("-", "_")
    samples = report["samples"]
    if samples and key in samples[0]:
        verdicts = [s[key] for s in samples]
        return None if any(v is None for v in verdicts) else verdicts
    if report["generation"].get("validator", "tree-sitter") == validator:
        return [s["valid"] for s in samples]
    return None


def _row_from_report(report: dict, source: str) -> dict:
    ck, g, h = report["checkpoint"], report["generation"], report.get("heldout") or {}
    ci = {k: bootstrap_ci([s[_PER_SAMPLE[k]] for s in report["samples"]]) for k in RATE_FIELDS}
    rates = {}
    for name in ("tree-sitter", "rustc"):
        verdicts = sample_verdicts(report, name)
        key = "valid_rate_" + name.replace("-", "_")
        rates[key] = None if verdicts is None else (sum(verdicts) / len(verdicts) if verdicts else None)
        ci[key] = None if verdicts is None else bootstrap_ci(verdicts)
    return {
        "run": ck["run"], "source": source, "recipe": ck["recipe"], "params": report["model"]["params"],
        "step": ck["step"], "train_loss": ck.get("train_loss"), "val_ce": h.get("ce", ck.get("val_ce")),
        "bpb": h.get("bpb"), "valid_rate": g["valid_rate"], **rates, "bracket_balance": g["bracket_balance"],
        "distinct_3": g["distinct_3"], "ci": ci, "n_samples": g["n_samples"],
        "causal": report["model"]["causal"], "inference_mode": report["model"]["inference_mode"],
    }


def _with_ci(value, ci) -> str:
    if value is None:
        return "-"
    if ci is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def compare_table(rows: list[dict], validator: str = "tree-sitter", rank: bool = False) -> str:
    """Markdown table, one row per run, rates with bootstrap 95% intervals over samples. `validator`: whose valid
    rate to show (tree-sitter, rustc or both: two columns); `rank`: order the rows by it (tree-sitter's with
    both), highest first, runs without it last."""
    from nanoeval.rustc import VALIDATORS

    if validator not in VALIDATORS:
        raise UserError(f"--validator {validator!r}: expected one of {', '.join(VALIDATORS)}")
    shown = ["tree-sitter", "rustc"] if validator == "both" else [validator]
    keys = ["valid_rate_" + v.replace("-", "_") for v in shown]
    if rank:
        rows = sorted(rows, key=lambda r: (r.get(keys[0]) is None, -(r.get(keys[0]) or 0.0)))
    header = ["run", "params", "steps", "train loss", "val CE", "bpb", *(f"valid rate ({v})" for v in shown),
              "bracket balance", "distinct-3", "n", "causal", "inference mode"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["run"], "-" if r["params"] is None else f"{r['params'] / 1e6:.2f}M", _fmt(r["step"]),
            _fmt(r["train_loss"], 4), _fmt(r["val_ce"], 4), _fmt(r["bpb"], 4),
            *(_with_ci(r.get(k), r["ci"].get(k)) for k in keys),
            _with_ci(r["bracket_balance"], r["ci"].get("bracket_balance")),
            _with_ci(r["distinct_3"], r["ci"].get("distinct_3")), str(r["n_samples"]),
            _fmt(r["causal"]), r["inference_mode"] or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nRates: mean over samples [bootstrap 95% interval, 2000 resamples].\n"
