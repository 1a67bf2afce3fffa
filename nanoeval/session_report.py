"""The session report: a markdown account of a `nanotrain session` in the spirit of the original training report
(docs/original-runs.md), built only from what the session wrote.

Sources, per run of `<runs>/<session>/session.json`: `metrics.jsonl` (train/val rows), the checkpoint's
`config.json` (architecture and schedule), and `score.json` (`nanoeval score`: causal-path held-out CE/bpb,
tree-sitter valid rate, samples). Sections: executive summary table; per-run progression tables at the original's
logged steps (docs/original-runs.md, "What was logged"), mapped onto each run by the same fraction of its steps;
throughput and wall time; sample generations; and findings computed from the numbers (non-causal models, resumed runs
that regressed, the MTP loss inflation, the share of improvement made in the WSD decay, skipped steps). Nothing is
hard-coded but the original's step grid.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanotrain.errors import UserError
from nanotrain.files import read_metrics

STATE_FILE = "session.json"

# The steps the original report logged for each run (docs/original-runs.md) and the span they cover: (first, last) steps
# of that run's schedule segment. A run here is shown at the same fractions of its own segment.
ORIGINAL_STEPS: dict[str, tuple[int, int, tuple[int, ...]]] = {
    "haar-v5": (20000, 30000, (20050, 20250, 20500, 21000, 22000, 23000, 24000, 25000, 26000, 27000, 28000,
                               29000, 30000)),
    "engram-v1": (0, 10000, (50, 500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000)),
    "engram-v2": (10000, 16000, (10050, 10500, 11000, 12000, 13000, 14000, 15000, 15650, 16000)),
    "baseline-v1": (0, 10000, (50, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 8500, 9000, 9400, 9700,
                               10000)),
    "engram-mtp": (0, 10000, (50, 500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 9400, 10000)),
}
DEFAULT_GRID = "engram-v1"


@dataclass
class RunData:
    """Everything the report knows about one run."""

    name: str
    record: dict[str, Any]
    folder: Path
    config: dict[str, Any] | None = None
    checkpoint: str | None = None
    train: list[dict[str, Any]] = field(default_factory=list)
    val: list[dict[str, Any]] = field(default_factory=list)
    score: dict[str, Any] | None = None

    @property
    def recipe(self) -> str:
        return (self.config or {}).get("recipe") or self.record.get("recipe", "?")

    @property
    def model(self) -> dict[str, Any]:
        return (self.config or {}).get("model", {})

    @property
    def train_cfg(self) -> dict[str, Any]:
        return (self.config or {}).get("train", {})

    @property
    def finished(self) -> bool:
        return (self.folder / "final").is_dir()

    @property
    def last(self) -> dict[str, Any] | None:
        return self.train[-1] if self.train else None

    @property
    def total_steps(self) -> int:
        return int(self.train_cfg.get("total_steps") or self.record.get("total_steps") or 0)

    @property
    def causal(self) -> bool | None:
        if self.score is not None:
            return bool(self.score["model"]["causal"])
        if self.config is None:
            return None
        return not (self.model.get("wavefield_ratio", 0) > 0 and self.model.get("wavefield_mode") == "bidirectional")

    @property
    def heldout(self) -> dict[str, Any]:
        return (self.score or {}).get("heldout") or {}

    @property
    def generation(self) -> dict[str, Any]:
        return (self.score or {}).get("generation") or {}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _planned_config(record: dict[str, Any], scale: str | None) -> dict[str, Any] | None:
    """The config a run that has no checkpoint yet will train with: its recipe at the session's scale plus the
    session file's overrides."""
    from nanotrain.recipes import RECIPES

    recipe = RECIPES.get(record.get("recipe", ""))
    if recipe is None or scale not in ("full", "small", "tiny"):
        return None
    model_cfg, train_cfg = recipe.build(scale)
    train = train_cfg.to_dict()
    train.update({k: v for k, v in (record.get("overrides") or {}).items() if k in train})
    return {"recipe": recipe.name, "model": model_cfg.to_dict(), "train": train}


def load_session_runs(folder: str | Path) -> tuple[dict[str, Any], list[RunData]]:
    """The session state and the data of each of its runs; UserError if `folder` is not a session folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--session {folder}: no such folder")
    path = folder / STATE_FILE
    if not path.is_file():
        raise UserError(f"--session {folder}: not a session folder (no {STATE_FILE}); run `nanotrain session FILE` "
                        "first")
    state = _read_json(path)
    if not isinstance(state, dict) or not isinstance(state.get("runs"), dict):
        raise UserError(f"{path}: unreadable or not a nanotrain session state")
    from nanoeval.report import SCHEMA
    from nanotrain.checkpoint import checkpoint_dirs

    runs = []
    for name, record in state["runs"].items():
        run_dir = folder / name
        data = RunData(name=name, record=record, folder=run_dir)
        for _, ckpt in checkpoint_dirs(run_dir):
            config = _read_json(ckpt / "config.json")
            if isinstance(config, dict):
                data.config, data.checkpoint = config, ckpt.name
                break
        if data.config is None:
            data.config = _planned_config(record, state.get("scale"))
        data.train, data.val = read_metrics(run_dir / "metrics.jsonl")
        score = _read_json(run_dir / "score.json")
        if isinstance(score, dict) and score.get("schema") == SCHEMA:
            data.score = score
        runs.append(data)
    return state, runs


# ---------------------------------------------------------------------------------------------- formatting
def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def architecture(model: dict[str, Any]) -> str:
    """A short description of a ModelConfig dict: the switched-on features, as the original's table named them."""
    if not model:
        return "—"
    parts = []
    if model.get("wavefield_ratio", 0) > 0:
        parts.append(f"Wavefield Haar {model.get('wavefield_mode', '')} ({model['wavefield_ratio']:.0%} of layers)")
    if model.get("engram_layers"):
        parts.append(f"Engram N-gram {model.get('engram_orders')} on layers {model['engram_layers']}")
    if model.get("loop_count", 0) > 0:
        parts.append(f"LoopLM x{model['loop_count']}")
    if model.get("mtp_heads", 0) > 0:
        parts.append(f"MTP x{model['mtp_heads']} (w={model.get('mtp_weight')})")
    if not parts:
        parts.append("Standard")
    if model.get("mhc_streams", 0) > 1:
        parts.append(f"mHC x{model['mhc_streams']}")
    if model.get("quant") not in (None, "none"):
        parts.append(f"{model['quant']} QAT")
    shape = f"dim {model.get('dim')}, {model.get('n_layers')} layers"
    return " + ".join(parts) + f" ({shape})"


def _origin(run: RunData, by_name: dict[str, RunData]) -> int:
    """The step a run's own training started from: its parent's final step for a resumed run, else 0."""
    parent = run.record.get("resume_from")
    if parent and parent in by_name:
        p = by_name[parent]
        if p.last is not None:
            return int(p.last["step"])
        return int(p.record.get("total_steps") or 0)
    return 0


def _steps_cell(run: RunData, origin: int) -> str:
    if run.last is None:
        return f"0 of {run.total_steps - origin:,} ({run.record.get('status', 'pending')})"
    end = run.last["step"]
    text = f"{origin:,} → {end:,}" if origin else f"{end:,}"
    if not run.finished:
        text += f" of {run.total_steps:,} ({run.record.get('status', 'unfinished')})"
    return text


def _causal_cell(run: RunData) -> str:
    if run.causal is None:
        return "—"
    if run.causal:
        return "yes"
    layers = (run.score or {}).get("model", {}).get("noncausal_layers")
    return f"no ({len(layers)} layers bypassed)" if layers else "no"


def _ci(value: Any, ci: Any, digits: int = 4) -> str:
    """`value [lo, hi]` (the 95% interval a score report stores), or the value alone without one."""
    if value is None or not ci:
        return _f(value, digits)
    return f"{_f(value, digits)} [{ci[0]:.{digits - 1}f}, {ci[1]:.{digits - 1}f}]"


def summary_rows(runs: list[RunData]) -> list[list[str]]:
    """Executive summary rows: model, architecture, steps, final train loss, val CE, bpb, valid rate (each with
    its 95% interval when scored), samples, causal."""
    by_name = {r.name: r for r in runs}
    rows = []
    for r in runs:
        val_ce = _ci(r.heldout.get("ce"), r.heldout.get("ce_ci"))
        if r.heldout.get("ce") is None and r.val:
            val_ce = _f(r.val[-1].get("val_ce")) + (" (train mode)" if r.causal is False else "")
        bpb = _ci(r.heldout.get("bpb"), r.heldout.get("bpb_ci"))
        if r.heldout.get("bpb") is None and r.val:
            bpb = _f(r.val[-1].get("val_bpb")) + (" (train mode)" if r.causal is False else "")
        rate = _ci(r.generation.get("valid_rate"), (r.generation.get("intervals") or {}).get("valid_rate"), 3)
        rows.append([f"**{r.name}**", architecture(r.model), _steps_cell(r, _origin(r, by_name)),
                     _f(r.last and r.last.get("loss")), val_ce, bpb, rate, _f(r.generation.get("n_samples")),
                     _causal_cell(r)])
    return rows


def _compare_rows(runs: list[RunData]) -> list[dict]:
    """`nanoeval compare` rows of the scored runs (for the pairwise tests)."""
    from nanoeval.report import _row_from_report

    rows = []
    for r in runs:
        if r.score is not None:
            row = _row_from_report(r.score, r.name)
            row["run"] = r.name
            rows.append(row)
    return rows


def _pair_verdict(a: dict, b: dict, metric: str) -> str:
    """The pairwise cell of a vs b for one metric ('val CE' or 'valid rate (tree-sitter)')."""
    from nanoeval.report import pairwise

    spec = {"val CE": ("val CE", "ce", "heldout", False),
            "valid rate": ("valid rate (tree-sitter)", "valid_rate_tree_sitter", "valid_tree_sitter", True)}[metric]
    return pairwise(a, b, [spec])[0]


def _nearest(rows: list[dict[str, Any]], step: float) -> dict[str, Any] | None:
    return min(rows, key=lambda r: (abs(r["step"] - step), -r["step"])) if rows else None


def progression(run: RunData, origin: int) -> list[list[str]]:
    """Rows of the run's metrics at the original's logged steps, scaled to this run's segment."""
    start, end, steps = ORIGINAL_STEPS.get(run.recipe, ORIGINAL_STEPS[DEFAULT_GRID])
    span = max(run.total_steps - origin, 1)
    seen: set[int] = set()
    rows = []
    for s in steps:
        target = origin + (s - start) / (end - start) * span
        row = _nearest(run.train, target)
        if row is None or row["step"] in seen or abs(row["step"] - target) > span / 10:
            continue
        seen.add(row["step"])
        rows.append([str(row["step"]), f"{s:,}", _f(row.get("loss")), _f(row.get("ce")), _f(row.get("entropy")),
                     _f(row.get("lr"), 6), _f(row.get("gnorm"), 2), _f(row.get("tok_per_s"), 0)])
    return rows


def throughput(run: RunData, origin: int) -> float | None:
    """Mean training tokens/s over the logged intervals, weighted by the steps each interval covers."""
    steps = tokens = 0.0
    prev = origin
    for row in run.train:
        n, prev = row["step"] - prev, row["step"]
        if row.get("tok_per_s") is not None and n > 0:
            steps += n
            tokens += n * row["tok_per_s"]
    return tokens / steps if steps else None


# ---------------------------------------------------------------------------------------------- findings
def _decay_share(run: RunData, origin: int) -> tuple[int, float, float, float] | None:
    """(decay start, loss there, final loss, loss at the first logged step) of a finished run trained from
    scratch; None when there is nothing to compare."""
    if origin or not run.train or not run.finished or not run.train_cfg:
        return None
    from nanotrain.config import TrainConfig
    from nanotrain.optim.schedule import decay_start

    d = decay_start(TrainConfig.from_dict(run.train_cfg))
    before = [r for r in run.train if r["step"] <= d and r.get("loss") is not None]
    first, last = run.train[0].get("loss"), run.last.get("loss")
    if not before or first is None or last is None or before[-1]["step"] == run.last["step"]:
        return None
    return d, before[-1]["loss"], last, first


def findings(runs: list[RunData]) -> list[str]:
    """Findings computed from the session's numbers (each says what it compares)."""
    by_name = {r.name: r for r in runs}
    out: list[str] = []
    scored_causal = [r for r in runs if r.causal and r.heldout.get("ce") is not None]
    for r in runs:
        if r.causal is False:
            h = r.heldout
            loss = r.last and r.last.get("loss")
            if h.get("ce") is not None:
                text = (f"**{r.name} is not causal**: {len((r.score or {})['model'].get('noncausal_layers') or [])} "
                        f"bidirectional layers read future tokens, so its training loss ({_f(loss)}) is not "
                        f"comparable. On the causal path used for generation (those layers bypassed) its held-out "
                        f"CE is {_f(h['ce'])} nats/token")
                if h.get("train_mode_ce") is not None:
                    text += (f", against {_f(h['train_mode_ce'])} with them active (causal path minus train mode: "
                             f"{h['ce'] - h['train_mode_ce']:+.4f})")
                if scored_causal:
                    best = min(scored_causal, key=lambda x: x.heldout["ce"])
                    text += f"; the best causal run, {best.name}, reaches {_f(best.heldout['ce'])}"
                out.append(text + ".")
            else:
                out.append(f"**{r.name} is not causal** (bidirectional wavefield layers): its training loss "
                           f"({_f(loss)}) reads future tokens; score it to measure its causal-path CE.")
    compared = {row["run"]: row for row in _compare_rows(runs)}
    if scored_causal:
        best = min(scored_causal, key=lambda x: x.heldout["ce"])
        others = [x for x in scored_causal if x is not best]
        text = (f"**Lowest causal held-out CE: {best.name}** ({_ci(best.heldout['ce'], best.heldout.get('ce_ci'))} "
                f"nats/token, {_f(best.heldout.get('bpb'))} bits/byte)")
        if others and best.name in compared:
            verdicts = [f"vs {x.name} {_f(x.heldout['ce'])}: "
                        f"{_pair_verdict(compared[best.name], compared[x.name], 'val CE')}"
                        for x in others if x.name in compared]
            text += "; paired over the same documents (difference [95% interval]: winner) " + "; ".join(verdicts)
        out.append(text + ".")
    rated = [r for r in runs if r.generation.get("valid_rate") is not None and r.name in compared]
    if len(rated) > 1:
        top = max(rated, key=lambda x: x.generation["valid_rate"])
        verdicts = [f"vs {x.name} {_f(x.generation['valid_rate'], 3)}: "
                    f"{_pair_verdict(compared[top.name], compared[x.name], 'valid rate')}"
                    for x in rated if x is not top]
        distinct = [v for v in verdicts if v.endswith(f": {top.name}")]
        head = (f"**Highest tree-sitter valid rate: {top.name}**" if len(distinct) == len(verdicts)
                else f"**Tree-sitter valid rate: {top.name} is highest ({_f(top.generation['valid_rate'], 3)})"
                     f", but not distinguishable from every other run**")
        rate_ci = (top.generation.get("intervals") or {}).get("valid_rate")
        out.append(f"{head} ({_ci(top.generation['valid_rate'], rate_ci, 3)} "
                   f"over {top.generation.get('n_samples')} samples); paired over the same prompts: "
                   + "; ".join(verdicts) + ".")
    sets = {(r.heldout.get("tokens_sha256"), r.heldout.get("n_tokens")) for r in runs if r.heldout}
    if len(sets) > 1:
        out.append("**The runs' held-out CE was measured on different tokens** (their validation windows differ: "
                   "batch_size, seq_len or eval_batches), so their CE is not compared pairwise; set [score] "
                   "heldout_tokens in the session file to measure every run on the same tokens.")
    for r in runs:
        parent_name = r.record.get("resume_from")
        parent = by_name.get(parent_name) if parent_name else None
        if parent is None or r.last is None or parent.last is None:
            continue
        child_loss, parent_loss = r.last.get("loss"), parent.last.get("loss")
        if child_loss is None or parent_loss is None:
            continue
        policy = r.train_cfg.get("resume_lr", "rewarm")
        how = (f"LR re-warmed over {r.train_cfg.get('rewarm_steps')} steps" if policy == "rewarm"
               else "LR jumped to the new schedule")
        first = r.train[0]
        verdict = "a **regression**" if child_loss > parent_loss else "an improvement"
        text = (f"**{r.name} resumed {parent.name}** at step {_origin(r, by_name):,} ({how}; LR "
                f"{_f(parent.last.get('lr'), 6)} "
                f"at {parent.name}'s end, {_f(first.get('lr'), 6)} at step {first['step']:,}, loss there "
                f"{_f(first.get('loss'))}) and ended at loss {_f(child_loss)} vs {parent.name}'s final "
                f"{_f(parent_loss)}: {verdict} ({child_loss - parent_loss:+.4f})")
        if r.heldout.get("ce") is not None and parent.heldout.get("ce") is not None:
            text += f"; held-out CE {_f(r.heldout['ce'])} vs {_f(parent.heldout['ce'])}"
        out.append(text + ".")
    plain_gaps = [r.last["loss"] - r.last["ce"] for r in runs if r.last and not r.model.get("mtp_heads")
                  and r.last.get("loss") is not None and r.last.get("ce") is not None]
    for r in runs:
        if r.model.get("mtp_heads") and r.last and r.last.get("loss") is not None and r.last.get("ce") is not None:
            gap = r.last["loss"] - r.last["ce"]
            text = (f"**{r.name}'s loss is inflated by MTP**: final loss {_f(r.last['loss'])} vs next-token CE "
                    f"{_f(r.last['ce'])} (loss − CE = {_f(gap)}; {r.model['mtp_heads']} extra heads at weight "
                    f"{r.model.get('mtp_weight')})")
            if plain_gaps:
                base = sum(plain_gaps) / len(plain_gaps)
                text += (f"; runs without MTP show loss − CE = {_f(base)} (label smoothing), so MTP adds "
                         f"{_f(gap - base)}. Compare CE, not loss")
            out.append(text + ".")
    for r in runs:
        share = _decay_share(r, _origin(r, by_name))
        if share is not None:
            d, at_d, last, first = share
            text = (f"**WSD decay ({r.name})**: loss {_f(at_d)} at the decay start (step {d:,}) → {_f(last)} at the "
                    f"end, a {(at_d - last) / at_d:.1%} change in the last {1 - d / max(r.total_steps, 1):.0%} of "
                    f"its steps")
            if first > last and 0 <= (at_d - last) / (first - last) <= 1:
                text += f" ({(at_d - last) / (first - last):.0%} of the run's whole loss drop from {_f(first)})"
            out.append(text + ".")
    for r in runs:
        skipped = sum(int(x.get("skipped") or 0) for x in r.train)
        if skipped:
            out.append(f"**{r.name} skipped {skipped} non-finite steps** (NaN guard).")
    unfinished = [r.name for r in runs if not r.finished]
    if unfinished:
        out.append(f"**Unfinished**: {', '.join(unfinished)} (re-run `nanotrain session` to continue).")
    return out


# ---------------------------------------------------------------------------------------------- the report
def _sample_block(run: RunData) -> list[str]:
    samples = (run.score or {}).get("samples") or []
    if not samples:
        return ["_not scored_"]
    pick = next((s for s in samples if s["prompt"].startswith("fn main")), samples[0])
    text = (pick["prompt"] + pick["text"]).replace("```", "`\u200b``")
    g, mode = run.generation, run.score["model"].get("inference_mode")
    return [f"valid rate {_f(g.get('valid_rate'), 3)} over {g.get('n_samples')} samples, bracket balance "
            f"{_f(g.get('bracket_balance'), 3)}, distinct-3 {_f(g.get('distinct_3'), 3)}, inference mode {mode}. "
            f"Sample (valid: {_f(pick.get('valid'))}, finish: {pick.get('finish')}):", "", "```rust", text.rstrip(),
            "```"]


def _timing(runs: list[RunData]) -> str:
    """Session wall time (first training start to last training end) against the summed training time."""
    import calendar

    stamps = []
    for r in runs:
        for a in r.record.get("attempts", []):
            for key in ("started", "ended"):
                if a.get(key):
                    stamps.append(calendar.timegm(time.strptime(a[key], "%Y-%m-%d %H:%M:%S")))
    trained = sum(r.record.get("train_wall_s") or 0.0 for r in runs)
    scored = sum(r.record.get("score_wall_s") or 0.0 for r in runs)
    span = f"{(max(stamps) - min(stamps)) / 60:.1f} min from the first run's start to the last run's end; " \
        if len(stamps) > 1 else ""
    return (f"Wall time: {span}training {trained / 60:.1f} min summed over runs, scoring {scored / 60:.1f} min "
            f"(recorded in session.json).")


def build_report(folder: str | Path) -> str:
    """The markdown report of a session folder (`<runs>/<session>`)."""
    state, runs = load_session_runs(folder)
    by_name = {r.name: r for r in runs}
    lines = [f"# Training report — session {state.get('name', Path(folder).name)}", ""]
    if state.get("description"):
        lines += [state["description"], ""]
    lines += [f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from `{folder}`. Devices: "
              f"{', '.join(state.get('devices', []))}; scale: {state.get('scale')}; dataset: "
              f"`{state.get('dataset')}`.", "", "## Executive summary", ""]
    lines += _table(["Model", "Architecture", "Steps", "Final loss", "Val CE", "bpb", "Valid rate", "Samples",
                     "Causal"], summary_rows(runs))
    lines += ["", _timing(runs)]
    lines += ["", "Final loss: the training objective (label smoothing, MTP included) of the last logged interval. "
              "Val CE (nats/token) and bpb: `nanoeval score` on the run's validation tokens of the val split, on "
              "the causal path generation uses (non-causal layers bypassed); the trainer's last validation when a "
              "run is not scored. Valid rate: share of sampled completions that tree-sitter parses "
              "(truncation-aware). [95% intervals]: CE/bpb bootstrapped over documents, valid rate Wilson over "
              "samples.", ""]
    from nanoeval.report import pairwise_lines

    pairs = pairwise_lines(_compare_rows(runs))
    if pairs:
        lines += pairs + [""]
    found = findings(runs)
    if found:
        lines += ["**Key findings** (computed from this session's numbers):", ""]
        lines += [f"{i}. {f}" for i, f in enumerate(found, 1)]
        lines.append("")
    lines += ["## Training configuration", ""]
    cfg_rows = []
    for r in runs:
        t, m = r.train_cfg, r.model
        params = (r.score or {}).get("model", {}).get("params")
        cfg_rows.append([r.name, r.recipe, r.record.get("device", "—"), _f(params and f"{params / 1e6:.2f}M"),
                         f"{m.get('dim', '—')} / {m.get('n_layers', '—')} / {m.get('n_heads', '—')}:"
                         f"{m.get('n_kv_heads', '—')}", f"{t.get('batch_size', '—')} × {t.get('seq_len', '—')}",
                         _f(t.get("lr"), 4), _f(t.get("warmup_steps")), _f(t.get("total_steps")),
                         r.record.get("resume_from") or "—"])
    lines += _table(["Run", "Recipe", "Device", "Params", "dim / layers / heads:kv", "Batch × seq", "Peak LR",
                     "Warmup", "Total steps", "Resumes"], cfg_rows)
    lines += ["", "## Training progression", ""]
    for r in runs:
        origin = _origin(r, by_name)
        lines += [f"### {r.name} ({architecture(r.model)})", ""]
        rows = progression(r, origin)
        grid = r.recipe if r.recipe in ORIGINAL_STEPS else DEFAULT_GRID
        if not rows:
            lines += [f"_no logged steps ({r.record.get('status', 'pending')})_", ""]
            continue
        lines += _table(["Step", f"Orig. step ({grid})", "Loss", "CE", "Entropy", "LR", "gnorm", "tok/s"], rows)
        wall = r.record.get("train_wall_s") or 0.0
        tps = throughput(r, origin)
        end = r.last["step"] if r.last else origin
        lines += ["", f"**Training time**: {wall / 60:.1f} min over {len(r.record.get('attempts', []))} "
                  f"invocation(s); **steps**: {end - origin:,} ({origin:,} → {end:,}); **throughput**: "
                  f"~{_f(tps, 0)} tok/s average" + (f"; last validation: CE {_f(r.val[-1].get('val_ce'))} at step "
                                                     f"{r.val[-1]['step']:,}" if r.val else "") + ".", ""]
    lines += ["Rows are the logged steps nearest to the original report's steps, taken at the same fraction of each "
              "run's own segment (docs/original-runs.md). Loss: objective; CE: next-token NLL; Entropy: mean "
              "predictive "
              "entropy (the original's \"H\"; estimated on every 4th sequence of each batch); LR: Muon LR of the "
              "next update; gnorm: pre-clip gradient norm.", "",
              "## Sample generations", ""]
    for r in runs:
        lines += [f"### {r.name}", ""] + _sample_block(r) + [""]
    return "\n".join(lines).rstrip() + "\n"
