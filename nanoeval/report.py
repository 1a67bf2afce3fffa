"""Score reports (JSON), their summary table, and side-by-side comparison of runs with bootstrap intervals.

The score report's field names are a public interface (docs/ARCHITECTURE.md, "Score report"; pinned by
tests/integration/test_nanoeval_score.py):

- `schema`, `created`, `nanoeval_version`, `wall_seconds`
- `checkpoint`: `path`, `run`, `recipe`, `step`, `train_loss`, `val_ce`
- `model`: `params` (total), `param_counts`, `causal`, `inference_mode`, `noncausal_layers`
- `heldout`: `ce`, `bpb`, `ppl`, `entropy`, `n_tokens`, `split`, `seq_len`, `dataset`, `train_mode_ce`,
  `train_mode_gap`, `ce_ci`, `bpb_ci` (95% bootstrap intervals over documents), `n_docs`, `doc_tokens`,
  `doc_nll` (per document, for paired comparison), `tokens_sha256` (of the measured tokens), `selection`
- `generation`: `n_samples`, `valid_rate`, `bracket_balance`, `error_density`, `distinct_3`, `compile_rate`,
  `tok_per_s`, `n_tokens`, `seconds`, `finish`, `prompts`, `samples_per_prompt`, `decode`, `metrics`,
  `sampling` (the sampling settings), `validator`, `valid_rate_tree_sitter`, `valid_rate_rustc`,
  `validator_agreement`, `validator_disagreements` (indices into `samples`), `rustc` (path, version and origin
  of the rustc used by --validator or --compile-check; None when none ran), `intervals` (95% interval of each
  rate and mean: see `nanoeval.stats`), `interval_method`, and with `--metrics seed` also `seed_metrics`
- `samples`: one object per sample: `prompt`, `text`, `finish`, `n_tokens`, `prompt_truncated`, `valid`,
  `valid_tree_sitter`, `valid_rustc`, `rustc_errors`, `bracket_balance`, `error_density`, `distinct_3`,
  `n_errors`, `first_error_line`, `compiles`, and with `--metrics seed` also `seed_metrics`

`valid` and `valid_rate` are the chosen validator's (`both`: tree-sitter's, the default); the per-validator fields
are None for a validator that did not run. `n_errors`, `first_error_line` and `error_density` are tree-sitter's;
`rustc_errors` lists rustc's (see `nanoeval.rustc`).

Validity, bracket balance and error density are measured on prompt + completion (the completion continues the
prompt's code), truncation-aware: a sample that did not end with `<eos>` counts as cut. `distinct_3` is measured
on the completion alone (it measures the model's own repetition).

Reports written before intervals existed lack `intervals`, `ce_ci` and the per-document fields: `compare` reads
them and says "no interval" where it has none to show.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from nanotrain.errors import UserError
from nanotrain.files import write_json, write_text  # noqa: F401 - the report writers of nanoeval's commands

SCHEMA = "nanoeval.score/1"
RATE_FIELDS = ("valid_rate", "bracket_balance", "distinct_3")
_PER_SAMPLE = {"valid_rate": "valid", "bracket_balance": "bracket_balance", "distinct_3": "distinct_3"}
# Generation metrics of the intervals and pairwise tests: (summary field, per-sample field, yes/no, higher is better).
GEN_METRICS = (
    ("valid_rate", "valid", True, True),
    ("valid_rate_tree_sitter", "valid_tree_sitter", True, True),
    ("valid_rate_rustc", "valid_rustc", True, True),
    ("compile_rate", "compiles", True, True),
    ("bracket_balance", "bracket_balance", False, True),
    ("error_density", "error_density", False, False),
    ("distinct_3", "distinct_3", False, True),
)
INTERVAL_METHOD = ("95%: Wilson score interval for yes/no rates; percentile bootstrap (2000 resamples, seed 0) over "
                   "samples for means, over documents for held-out CE/bpb")


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
    report["generation"]["intervals"] = sample_intervals(records)
    report["generation"]["interval_method"] = INTERVAL_METHOD
    if metrics == "seed":
        keys = records[0]["seed_metrics"].keys() if records else []
        report["generation"]["seed_metrics"] = {k: _mean(r["seed_metrics"][k] for r in records) for k in keys}
    return report


def sample_intervals(records: list[dict]) -> dict[str, list[float] | None]:
    """95% interval of every generation rate and mean over the per-sample records (`nanoeval.stats`): Wilson for
    yes/no verdicts, bootstrap over samples for the rest; None where a metric did not run or has < 2 values."""
    from nanoeval.stats import bootstrap_mean, rate_interval

    out: dict[str, list[float] | None] = {}
    for field, per_sample, binary, _ in GEN_METRICS:
        values = [r.get(per_sample) for r in records]
        if not values or all(v is None for v in values):
            out[field] = None
            continue
        ci = rate_interval(values) if binary else bootstrap_mean(values)
        out[field] = None if ci is None else [ci[0], ci[1]]
    return out


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


def _ci_fmt(value, ci, digits: int = 3) -> str:
    """`value [lo, hi]`, or the value alone when there is no interval."""
    if value is None:
        return "-"
    if not ci:
        return _fmt(value, digits)
    return f"{_fmt(value, digits)} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _validity_rows(g: dict) -> list[tuple[str, str]]:
    """The valid-rate rows of the summary: one per validator that ran, and their agreement."""
    validator = g.get("validator", "tree-sitter")
    ci = g.get("intervals") or {}
    rows = []
    for name in ("tree-sitter", "rustc"):
        key = "valid_rate_" + name.replace("-", "_")
        rate = g.get(key, g["valid_rate"] if name == validator else None)
        if rate is not None or name == validator:
            rows.append((f"valid rate ({name})", _ci_fmt(rate, ci.get(key) or (ci.get("valid_rate")
                                                                                  if name == validator else None))))
    if g.get("validator_agreement") is not None:
        differ = g["validator_disagreements"]
        listed = ", ".join(f"#{i}" for i in differ[:10]) + (", ..." if len(differ) > 10 else "")
        rows.append(("validator agreement", _fmt(g["validator_agreement"])
                     + (f" ({len(differ)} differ: {listed})" if differ else "")))
    return rows


def format_summary(report: dict) -> str:
    """A short human table of the report's headline numbers."""
    ck, m, h, g = report["checkpoint"], report["model"], report["heldout"] or {}, report["generation"]
    ci = g.get("intervals") or {}
    tokens = f"{h['n_tokens']:,} tokens, {h['n_docs']} documents" if h.get("n_docs") else (
        f"{h['n_tokens']:,} tokens" if h.get("n_tokens") else "-")
    rows = [
        ("checkpoint", ck["path"]),
        ("recipe / step", f"{ck['recipe']} / {ck['step']}"),
        ("params", f"{m['params']:,}"),
        ("causal / inference mode", f"{_fmt(m['causal'])} / {m['inference_mode']}"),
        ("held-out tokens", tokens),
        ("held-out CE (nats/token)", _ci_fmt(h.get("ce"), h.get("ce_ci"), 4)),
        ("held-out bits/byte", _ci_fmt(h.get("bpb"), h.get("bpb_ci"), 4)),
        ("held-out ppl / entropy", f"{_fmt(h.get('ppl'), 2)} / {_fmt(h.get('entropy'), 4)}"),
        ("samples", f"{g['n_samples']} ({g['prompts']} x {g['samples_per_prompt']})"),
        *_validity_rows(g),
        ("bracket balance", _ci_fmt(g["bracket_balance"], ci.get("bracket_balance"))),
        ("error density (/KB)", _ci_fmt(g["error_density"], ci.get("error_density"), 2)),
        ("distinct-3", _ci_fmt(g["distinct_3"], ci.get("distinct_3"))),
        ("compile rate (rustc)", _ci_fmt(g["compile_rate"], ci.get("compile_rate"))),
        ("finish eos/stop/length", "/".join(str(g["finish"][k]) for k in ("eos", "stop", "length"))),
        (f"tok/s ({g.get('decode', 'eager')} decode)", f"{g['tok_per_s']:.1f}"),
    ]
    if ci:
        rows.append(("intervals", g.get("interval_method", INTERVAL_METHOD)))
    if h.get("train_mode_ce") is not None:
        rows.insert(8, ("train-mode CE / gap", f"{_fmt(h['train_mode_ce'], 4)} / {_fmt(h['train_mode_gap'], 4)}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# --------------------------------------------------------------------------------------------------------------
# compare


def bootstrap_ci(values, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of per-sample `values` (None for fewer than 2 values)."""
    from nanoeval.stats import bootstrap_mean

    return bootstrap_mean(values, n_resamples=n_resamples, seed=seed, level=level)


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
        "settings": None, "report": None,
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
    """A comparison row of a score report. Rates carry their report's stored intervals; a report written before
    intervals existed gets them computed from its samples (its CE has none: no per-document losses)."""
    from nanoeval.stats import rate_interval

    ck, g, h = report["checkpoint"], report["generation"], report.get("heldout") or {}
    stored = g.get("intervals") or {}
    ci = {k: stored.get(k) if k in stored else bootstrap_ci([s[_PER_SAMPLE[k]] for s in report["samples"]])
          for k in ("bracket_balance", "distinct_3")}
    rates = {}
    for name in ("tree-sitter", "rustc"):
        verdicts = sample_verdicts(report, name)
        key = "valid_rate_" + name.replace("-", "_")
        rates[key] = None if verdicts is None else (sum(verdicts) / len(verdicts) if verdicts else None)
        ci[key] = None if verdicts is None else (stored.get(key) if key in stored else rate_interval(verdicts))
    ci["valid_rate"] = stored.get("valid_rate") if "valid_rate" in stored else rate_interval(
        [s["valid"] for s in report["samples"]])
    ci["val_ce"], ci["bpb"] = h.get("ce_ci"), h.get("bpb_ci")
    sampling = g.get("sampling") or {}
    settings = {
        "max_new_tokens": sampling.get("max_new_tokens"), "temperature": sampling.get("temperature"),
        "top_k": sampling.get("top_k"), "top_p": sampling.get("top_p"),
        "repetition_penalty": sampling.get("repetition_penalty"), "n_samples": g.get("n_samples"),
        "prompts": Path(g["prompts"]).name if g.get("prompts") else None, "heldout_tokens": h.get("n_tokens"),
        "heldout_data": h.get("tokens_sha256") or h.get("dataset"),
    }
    return {
        "run": ck["run"], "source": source, "recipe": ck["recipe"], "params": report["model"]["params"],
        "step": ck["step"], "train_loss": ck.get("train_loss"), "val_ce": h.get("ce", ck.get("val_ce")),
        "bpb": h.get("bpb"), "valid_rate": g["valid_rate"], **rates, "bracket_balance": g["bracket_balance"],
        "distinct_3": g["distinct_3"], "ci": ci, "n_samples": g["n_samples"],
        "causal": report["model"]["causal"], "inference_mode": report["model"]["inference_mode"],
        "settings": settings, "report": report,
    }


def _with_ci(value, ci, digits: int = 3) -> str:
    if value is None:
        return "-"
    if ci is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{ci[0]:.{digits - 1}f}, {ci[1]:.{digits - 1}f}]"


def _settings_lines(rows: list[dict]) -> list[str]:
    """The step and sampling settings of each row, and a warning per setting the scored rows disagree on."""
    header = ["run", "step", "max new tokens", "temperature", "top-k", "top-p", "samples", "prompts",
              "held-out tokens"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        st = r.get("settings") or {}
        cells = [r["run"], _fmt(r["step"]), *(_fmt(st.get(k)) for k in ("max_new_tokens", "temperature", "top_k",
                                                                          "top_p", "n_samples", "prompts")),
                 "-" if st.get("heldout_tokens") is None else f"{st['heldout_tokens']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    scored = [r for r in rows if r.get("settings")]
    names = {"max_new_tokens": "max new tokens", "temperature": "temperature", "top_k": "top-k",
             "top_p": "top-p", "repetition_penalty": "repetition penalty", "n_samples": "sample count",
             "prompts": "prompts", "heldout_tokens": "held-out token count", "heldout_data": "held-out tokens"}
    warnings = []
    for key, name in names.items():
        values = {repr(r["settings"].get(key)) for r in scored}
        if len(values) > 1:
            shown = ", ".join(f"{r['run']} {_short(r['settings'].get(key))}" for r in scored)
            warnings.append(f"**warning**: the reports were made with different {name} ({shown}); their numbers "
                            "do not measure the same thing")
    return lines + ([""] + warnings if warnings else [])


def _short(v) -> str:
    return v[:12] if isinstance(v, str) and len(v) == 64 else _fmt(v)


def _diff_cell(diff: float | None, ci, name_a: str, name_b: str, higher_is_better: bool, note: str = "") -> str:
    from nanoeval.stats import verdict

    if diff is None or math.isnan(diff):
        return "no interval" + (f" ({note})" if note else "")
    text = f"{diff:+.3f}" + ("" if ci is None else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]")
    return f"{text}: {verdict(name_a, name_b, ci, higher_is_better)}" + (f" ({note})" if note else "")


def pairwise(a: dict, b: dict, metrics: list[tuple[str, str, str, bool]]) -> list[str]:
    """Cells of the differences a - b (score reports `a`, `b`), one per metric (label, report field, per-sample
    field or 'heldout', higher is better): paired bootstrap over the same documents / samples, a winner only when
    the 95% interval excludes zero. Reports without per-document or per-sample data say 'no interval'."""
    from nanoeval.stats import independent_mean_diff, paired_mean_diff, paired_ratio_diff

    ra, rb = a["report"], b["report"]
    ha, hb = ra.get("heldout") or {}, rb.get("heldout") or {}
    same_prompts = [s["prompt"] for s in ra["samples"]] == [s["prompt"] for s in rb["samples"]]
    cells = []
    for label, field, per_sample, higher in metrics:
        if per_sample == "heldout":
            if not ha.get("doc_nll") or not hb.get("doc_nll"):
                cells.append("no interval (report without per-document losses)")
            elif ha.get("tokens_sha256") != hb.get("tokens_sha256") or ha["doc_tokens"] != hb["doc_tokens"]:
                cells.append("not comparable (different held-out tokens)")
            else:
                scale = 1.0 if field == "ce" else ha["bpb"] / ha["ce"]
                diff, ci = paired_ratio_diff(ha["doc_nll"], hb["doc_nll"], ha["doc_tokens"])
                ci = None if ci is None else (ci[0] * scale, ci[1] * scale)
                cells.append(_diff_cell(diff * scale, ci, a["run"], b["run"], higher))
            continue
        va = _per_sample_values(ra, per_sample)
        vb = _per_sample_values(rb, per_sample)
        if va is None or vb is None:
            cells.append("-")
        elif same_prompts:
            diff, ci = paired_mean_diff(va, vb)
            cells.append(_diff_cell(diff, ci, a["run"], b["run"], higher))
        else:
            diff, ci = independent_mean_diff(va, vb)
            cells.append(_diff_cell(diff, ci, a["run"], b["run"], higher, "unpaired: different prompts"))
    return cells


def _per_sample_values(report: dict, field: str) -> list | None:
    if field.startswith("valid_") and field != "valid":
        verdicts = sample_verdicts(report, field.removeprefix("valid_").replace("_", "-"))
        return None if verdicts is None else [float(v) for v in verdicts]
    values = [s.get(field) for s in report["samples"]]
    if not values or all(v is None for v in values):
        return None
    return [None if v is None else float(v) for v in values]


def compare_table(rows: list[dict], validator: str = "tree-sitter", rank: bool = False) -> str:
    """Markdown: one row per run with 95% intervals (CE/bpb over documents, rates over samples); each row's step
    and sampling settings, with a warning when the reports differ in them; and the pairwise differences of the
    scored runs with a verdict. `validator`: whose valid rate to show (tree-sitter, rustc or both: two columns);
    `rank`: order the rows by it (tree-sitter's with both), highest first, runs without it last."""
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
            _fmt(r["train_loss"], 4), _with_ci(r["val_ce"], r["ci"].get("val_ce"), 4),
            _with_ci(r["bpb"], r["ci"].get("bpb"), 4),
            *(_with_ci(r.get(k), r["ci"].get(k)) for k in keys),
            _with_ci(r["bracket_balance"], r["ci"].get("bracket_balance")),
            _with_ci(r["distinct_3"], r["ci"].get("distinct_3")), str(r["n_samples"]),
            _fmt(r["causal"]), r["inference_mode"] or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Value [95% interval]: held-out CE and bits/byte bootstrapped over documents; valid rates Wilson; "
              "bracket balance and distinct-3 bootstrapped over samples (2000 resamples, seed 0). A report "
              "written before intervals existed shows its CE without one.", "", "Settings:", ""]
    lines += _settings_lines(rows)
    pairs = pairwise_lines(rows, shown)
    return "\n".join(lines + ([""] + pairs if pairs else [])) + "\n"


def pairwise_lines(rows: list[dict], validators: list[str] | tuple[str, ...] = ("tree-sitter",)) -> list[str]:
    """A markdown table of every pair of the scored rows (`compare_row`): the differences A - B of val CE, bpb,
    valid rate (of each of `validators`), bracket balance and distinct-3 with their paired 95% intervals and the
    winner; [] with fewer than two scored rows."""
    scored = [r for r in rows if r.get("report") is not None]
    if len(scored) < 2:
        return []
    metrics = [("val CE", "ce", "heldout", False), ("bpb", "bpb", "heldout", False),
               *((f"valid rate ({v})", "valid_rate_" + v.replace("-", "_"), "valid_" + v.replace("-", "_"), True)
                 for v in validators),
               ("bracket balance", "bracket_balance", "bracket_balance", True),
               ("distinct-3", "distinct_3", "distinct_3", True)]
    lines = ["Pairwise differences A − B [95% paired bootstrap interval]: the winner, named only when the interval "
             "excludes zero (lower CE/bpb wins, higher rates win); otherwise \"not distinguishable\".", ""]
    lines += ["| A vs B | " + " | ".join(m[0] for m in metrics) + " |", "|" + "---|" * (len(metrics) + 1)]
    for i, a in enumerate(scored):
        for b in scored[i + 1:]:
            lines.append(f"| {a['run']} vs {b['run']} | " + " | ".join(pairwise(a, b, metrics)) + " |")
    return lines
