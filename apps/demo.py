"""Gradio side-by-side generation demo: 2-4 checkpoints, one prompt, streamed completions, tree-sitter verdicts.

Start it with `python -m apps.demo --runs runs` (or the `nanolab-demo` script). Completions come from
nanoeval's inference engine (causal, KV-cached, seeded sampling). Each panel is scored with
`nanoeval.rust.score_sample` (truncation-aware validity, lexer-aware bracket balance). Checkpoints with a
bidirectional (non-causal) wavefield layer are refused unless the user ticks the explicit bypass mode, and the
panel then says so.

Only checkpoints under the runs folder given at launch can be opened: any other path (`..`, absolute paths,
symlinks that leave the folder, a checkpoint whose files are symlinks leaving it) is refused with one clear line.
Models are loaded once (checked against their manifest unless `--no-verify`) and kept in a small LRU cache;
the Gradio queue caps concurrent generations so several users cannot exhaust memory.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import queue
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from nanotrain.errors import UserError
from nanotrain.files import read_metrics

if TYPE_CHECKING:  # gradio and pandas are imported where the app is built, so --help and bad flags answer fast
    import gradio as gr
    import pandas as pd

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry, also from anything gradio sets up at import

log = logging.getLogger("nanolab.demo")

MAX_PANELS = 4
CURVE_METRICS = {"loss": "train loss (objective)", "ce": "train CE", "val_ce": "val CE"}
_STREAM_INTERVAL_S = 0.1


@dataclass(frozen=True)
class CheckpointEntry:
    """A checkpoint folder found under the runs folder; `name` is its path relative to that folder."""

    run: str
    name: str
    path: Path
    step: int | None


def _is_checkpoint(folder: Path) -> bool:
    from nanotrain.checkpoint import REQUIRED_FILES

    return all((folder / name).is_file() for name in REQUIRED_FILES)


def _file_outside(folder: Path, root: Path) -> str | None:
    """The name of a file of the checkpoint `folder` that resolves outside `root` (a symlink leaving the runs
    folder), or None when every file stays inside."""
    for f in sorted(folder.iterdir()):
        if not f.resolve().is_relative_to(root):
            return f.name
    return None


def discover_checkpoints(runs_dir: Path) -> list[CheckpointEntry]:
    """Every complete `<run>/final` and `<run>/step_<N>` under `runs_dir` that stays inside it, newest first per run."""
    root = runs_dir.resolve()
    if not root.is_dir():
        return []
    return [entry for run_dir in _run_dirs(root) for entry in run_checkpoints(run_dir, root)]


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def run_checkpoints(run_dir: Path, root: Path) -> list[CheckpointEntry]:
    """The complete checkpoints of one run that resolve inside `root`, newest first."""
    from nanotrain.checkpoint import checkpoint_dirs

    return [CheckpointEntry(run_dir.name, f"{run_dir.name}/{folder.name}", folder, step if step >= 0 else None)
            for step, folder in checkpoint_dirs(run_dir)
            if _is_checkpoint(folder) and folder.resolve().is_relative_to(root)
            and _file_outside(folder, root) is None]


def default_selection(entries: list[CheckpointEntry], n: int = 2) -> list[str]:
    """The newest checkpoint of each of the first `n` runs (so a fresh page can generate at once)."""
    chosen: dict[str, str] = {}
    for e in entries:
        if e.run not in chosen and len(chosen) < n:
            chosen[e.run] = e.name
    return list(chosen.values())


def resolve_checkpoint(runs_dir: Path, choice: str) -> Path:
    """The real folder of `choice` (relative to `runs_dir`, or absolute); refuses anything outside `runs_dir`."""
    text = str(choice).strip()
    if not text:
        raise UserError("checkpoint: empty name; pick one from the list")
    if "\x00" in text:
        raise UserError(f"checkpoint {text!r}: not a valid name (NUL byte)")
    root = runs_dir.resolve()
    given = Path(text)
    real = (given if given.is_absolute() else root / given).resolve()
    if not real.is_relative_to(root):
        raise UserError(
            f"checkpoint {text!r} is outside the runs folder {runs_dir}; only checkpoints under it can be opened"
        )
    if not real.is_dir():
        raise UserError(f"checkpoint {text!r}: no such folder under {runs_dir}")
    if not _is_checkpoint(real):
        raise UserError(f"checkpoint {text!r}: not a complete checkpoint folder (config.json, "
                        "model.safetensors, tokenizer.json)")
    outside = _file_outside(real, root)
    if outside is not None:
        raise UserError(f"checkpoint {text!r}: its {outside} resolves outside the runs folder {runs_dir}; only "
                        "files under it can be opened")
    return real


@dataclass
class CachedModel:
    """A loaded checkpoint, its inference engines (one per inference mode) and the lock that serialises
    generations on it (the model's caches are module state)."""

    loaded: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    engines: dict[str, Any] = field(default_factory=dict)

    def engine(self, mode: str) -> Any:
        """The engine for inference mode `mode` ("refuse" or "bypass"), made on first use."""
        from nanoeval.engine import Engine

        if mode not in self.engines:
            self.engines[mode] = Engine(self.loaded.model, self.loaded.tokenizer, inference_mode=mode)
        return self.engines[mode]


class ModelCache:
    """LRU cache of loaded checkpoints keyed by real path and weights mtime, so a rewritten checkpoint reloads.
    Each load checks the checkpoint against its manifest unless `verify` is False (the demo's `--no-verify`)."""

    def __init__(self, capacity: int, verify: bool = True) -> None:
        if capacity < 1:
            raise UserError(f"--cache-size must be at least 1 (got {capacity})")
        self.capacity = capacity
        self.verify = verify
        self._items: OrderedDict[tuple[str, float], CachedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> CachedModel:
        from nanoeval import load

        key = (str(path), (path / "model.safetensors").stat().st_mtime)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            entry = CachedModel(load(path, verify=self.verify))
            self._items[key] = entry
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return entry


@dataclass(frozen=True)
class SamplingSettings:
    """The controls on the page; one set is used for every panel so the comparison is fair."""

    temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
    seed: int

    @classmethod
    def from_ui(cls, temperature: Any, top_k: Any, top_p: Any, max_new_tokens: Any, seed: Any) -> "SamplingSettings":
        try:
            s = cls(float(temperature), int(top_k), float(top_p), int(max_new_tokens), int(seed))
        except (TypeError, ValueError) as e:
            raise UserError(f"sampling settings: {e}") from None
        if not math.isfinite(s.temperature) or s.temperature < 0:
            raise UserError(f"temperature must be >= 0 (got {s.temperature})")
        if s.top_k < 0:
            raise UserError(f"top-k must be >= 0, 0 = off (got {s.top_k})")
        if not 0.0 < s.top_p <= 1.0:
            raise UserError(f"top-p must be in (0, 1] (got {s.top_p})")
        if s.max_new_tokens < 1:
            raise UserError(f"max tokens must be at least 1 (got {s.max_new_tokens})")
        if not 0 <= s.seed < 2**63:
            raise UserError(f"seed must be in [0, 2**63) (got {s.seed})")
        return s


@dataclass
class Panel:
    """What one side-by-side column shows, updated as tokens stream in."""

    name: str
    prompt: str
    requested_tokens: int
    completion: str = ""
    n_tokens: int = 0
    started: bool = False
    elapsed: float = 0.0
    tok_per_s: float | None = None
    finish: str | None = None
    causal: bool | None = None
    noncausal_layers: list[int] = field(default_factory=list)
    inference_mode: str | None = None
    step: int | None = None
    recipe: str | None = None
    score: dict[str, Any] | None = None
    max_new_tokens: int | None = None
    context: int | None = None
    error: str | None = None
    done: bool = False

    @property
    def text(self) -> str:
        return self.prompt + self.completion

    def header_md(self) -> str:
        bits = [f"### {self.name}"]
        meta = [x for x in (self.recipe, f"step {self.step}" if self.step is not None else None) if x]
        if meta:
            bits.append(" · ".join(meta))
        if self.causal is False:
            layers = ", ".join(str(i) for i in self.noncausal_layers) or "?"
            if self.inference_mode == "bypass":
                bits.append(f"**non-causal** (bidirectional layers {layers}) — generated in **bypass mode**: "
                            "those mixers are skipped, so this is not the model that was trained")
            else:
                bits.append(f"**non-causal** (bidirectional layers {layers})")
        return "\n\n".join(bits)

    def stats_md(self) -> str:
        if self.error:
            return f"⚠ {self.error}"
        if not self.done:
            rate = f" · {self.n_tokens / self.elapsed:.1f} tok/s" if self.elapsed > 0 and self.n_tokens else ""
            return f"generating… {self.n_tokens} tokens{rate}" if self.started else "waiting for the model…"
        lines = [f"{self.n_tokens} tokens · {self.tok_per_s:.1f} tok/s · "
                 + ("**truncated** at the token limit" if self.finish == "length" else f"finished by {self.finish}")]
        if self.finish == "length" and self.max_new_tokens is not None and self.max_new_tokens < self.requested_tokens:
            lines.append(f"limit cut to {self.max_new_tokens} tokens by the model's {self.context}-token context")
        if self.score is not None:
            s = self.score
            lines.append(f"bracket balance {s['bracket_balance']:.2f} · {s['error_density']:.1f} errors/KB")
            cut = " (under truncation)" if self.finish == "length" else ""
            if s.get("valid_tree_sitter", s["valid"]) is None:
                pass
            elif s.get("valid_tree_sitter", s["valid"]):
                lines.append(f"tree-sitter: ✓ **valid**{cut}")
            else:
                lines.append(f"tree-sitter: ✗ **invalid** — first error at line {s['first_error_line']}")
                lines.append(_marked_line(self.text, s.get("first_error")))
            if s.get("valid_rustc") is not None:
                if s["valid_rustc"]:
                    lines.append(f"rustc: ✓ **valid**{cut}")
                else:
                    err = next(e for e in s["rustc_errors"] if not e["excused"])
                    where = f" at line {err['line']}" if err["line"] is not None else ""
                    lines.append(f"rustc: ✗ **invalid**{where} — {err['message']}")
        return "\n\n".join(lines)

    def result(self) -> dict[str, Any]:
        """The machine-readable result (also what `gradio_client` callers read)."""
        return {
            "checkpoint": self.name, "recipe": self.recipe, "step": self.step, "prompt": self.prompt,
            "completion": self.completion, "text": self.text, "n_tokens": self.n_tokens,
            "tok_per_s": self.tok_per_s, "finish": self.finish, "max_new_tokens": self.max_new_tokens,
            "truncated": None if self.finish is None else self.finish == "length",
            "causal": self.causal, "inference_mode": self.inference_mode, "score": self.score,
            "error": self.error, "done": self.done,
        }


def _marked_line(text: str, err: dict[str, Any] | None) -> str:
    """The offending source line with a caret under the first error's column, as a fenced block."""
    if not err:
        return ""
    lines = text.split("\n")
    line, col = int(err["line"]), int(err.get("col", 1))
    if not 1 <= line <= len(lines):
        return ""
    src = lines[line - 1].replace("\t", " ")
    gutter = f"{line:>4} | "
    fence = "`" * max(3, _longest_backtick_run(src) + 1)
    caret = " " * (len(gutter) + max(col - 1, 0)) + f"^ {err.get('kind', 'error')}"
    return f"{fence}text\n{gutter}{src}\n{caret}\n{fence}"


def _longest_backtick_run(text: str) -> int:
    """Length of the longest run of backticks, so a fence around `text` can be made longer than any of them."""
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return longest


def _score(text: str, truncated: bool, validator: str = "tree-sitter", rustc: Any = None) -> dict[str, Any]:
    """tree-sitter verdict and bracket balance of the prompt plus completion, and with `validator` rustc/both
    rustc's verdict (`rustc`: a `nanoeval.rustc.Rustc`), as the score report computes them."""
    from nanoeval.rust import score_sample
    from nanoeval.rustc import check_texts

    s = score_sample(text, truncated)
    out = {
        "valid": bool(s.valid), "n_errors": s.n_errors, "error_density": float(s.error_density),
        "first_error_line": s.first_error_line, "first_error": s.errors[0] if s.errors else None,
        "bracket_balance": float(s.bracket_balance), "brackets": s.brackets, "distinct_3": float(s.distinct_3),
    }
    if validator != "tree-sitter":
        verdict = check_texts([text], [truncated], rustc)[0]
        out.update(valid_tree_sitter=None if validator == "rustc" else out["valid"], valid_rustc=verdict.valid,
                   rustc_errors=verdict.errors)
        if validator == "rustc":
            out["valid"] = verdict.valid
    return out


class DemoBackend:
    """Everything the page does, without the widgets: discovery, path checks, the model cache, streaming."""

    def __init__(self, runs_dir: Path, cache_size: int = 4, verify: bool = True, validator: str = "tree-sitter",
                 rustc: Any = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.cache = ModelCache(cache_size, verify)
        self.validator, self.rustc = validator, rustc

    def checkpoints(self) -> list[CheckpointEntry]:
        return discover_checkpoints(self.runs_dir)

    def generate(self, choices: list[str], prompt: str, settings: SamplingSettings,
                 bypass_noncausal: bool) -> Iterator[list[Panel]]:
        """Yield the panels repeatedly while every checkpoint streams its completion; the last yield is final."""
        names = [str(c).strip() for c in (choices or []) if str(c).strip()]
        if not 1 <= len(names) <= MAX_PANELS:
            raise UserError(f"pick 1 to {MAX_PANELS} checkpoints (got {len(names)})")
        if len(set(names)) != len(names):
            raise UserError("the same checkpoint is selected twice")
        paths = [resolve_checkpoint(self.runs_dir, n) for n in names]
        panels = [Panel(name=n, prompt=prompt, requested_tokens=settings.max_new_tokens) for n in names]
        events: queue.Queue = queue.Queue()
        stop = threading.Event()
        workers = [threading.Thread(target=self._worker, daemon=True, name=f"demo-gen-{i}",
                                    args=(i, p, prompt, settings, bypass_noncausal, events, stop))
                   for i, p in enumerate(paths)]
        for w in workers:
            w.start()
        try:
            yield panels
            last = time.monotonic()
            while not all(p.done for p in panels):
                try:
                    kind, i, payload = events.get(timeout=_STREAM_INTERVAL_S)
                except queue.Empty:
                    kind = None
                if kind is not None:
                    self._apply(panels[i], kind, payload)
                if time.monotonic() - last >= _STREAM_INTERVAL_S:
                    last = time.monotonic()
                    yield panels
            yield panels
        finally:
            stop.set()

    @staticmethod
    def _apply(panel: Panel, kind: str, payload: Any) -> None:
        if kind == "meta":
            for k, v in payload.items():
                setattr(panel, k, v)
        elif kind == "text":
            panel.completion, panel.n_tokens, panel.elapsed = payload
            panel.started = True
        elif kind == "done":
            for k, v in payload.items():
                setattr(panel, k, v)
            panel.done = True
        elif kind == "error":
            panel.error, panel.done = payload, True

    def _worker(self, i: int, path: Path, prompt: str, settings: SamplingSettings, bypass: bool,
                events: queue.Queue, stop: threading.Event) -> None:
        try:
            cached = self.cache.get(path)
            loaded = cached.loaded
            causal = bool(loaded.model.is_causal)
            mode = "causal" if causal else ("bypass" if bypass else "refused")
            events.put(("meta", i, {
                "causal": causal, "noncausal_layers": list(loaded.model.noncausal_layers()), "inference_mode": mode,
                "step": loaded.step, "recipe": loaded.recipe,
            }))
            if mode == "refused":
                raise UserError("non-causal checkpoint: tick 'bypass non-causal layers' to generate with those "
                                "mixers skipped (the label then says so)")
            with cached.lock:
                out = _stream_sample(cached, prompt, settings, bypass, stop,
                                     lambda text, n, dt: events.put(("text", i, (text, n, dt))))
            if out is None:
                events.put(("error", i, "cancelled"))
                return
            out["score"] = _score(prompt + out["completion"], out["finish"] == "length", self.validator,
                                  self.rustc)
            events.put(("done", i, out))
        except UserError as e:
            events.put(("error", i, str(e)))
        except Exception as e:  # an unexpected failure must still end the panel, with the cause in the log
            log.exception("generation failed for %s", path)
            events.put(("error", i, f"internal error: {type(e).__name__}: {e}"))


def _stream_sample(cached: CachedModel, prompt: str, settings: SamplingSettings, bypass: bool,
                   stop: threading.Event, on_text: Callable[[str, int, float], None]) -> dict[str, Any] | None:
    """Run the inference engine on one prompt, reporting (completion, tokens, seconds) after every step.

    Returns the final fields of the panel, or None when `stop` was set (the page went away) before the end.
    """
    from nanoeval.engine import SamplingConfig, context_length

    loaded = cached.loaded
    room = context_length(loaded.model) - len(loaded.tokenizer.encode(prompt, add_special_tokens=False).ids)
    max_new = min(settings.max_new_tokens, max(room, 1))
    config = SamplingConfig(max_new_tokens=max_new, temperature=settings.temperature,
                            top_k=settings.top_k, top_p=settings.top_p, seed=settings.seed)
    steps = cached.engine("bypass" if bypass else "refuse").stream([prompt], config)
    t0 = time.perf_counter()
    sample = None
    try:
        for samples in steps:
            if stop.is_set():
                return None
            sample = samples[0]
            on_text(sample.text, sample.n_tokens, time.perf_counter() - t0)
    finally:
        steps.close()
    seconds = time.perf_counter() - t0
    if sample is None:
        raise UserError("the engine produced no tokens")
    return {"completion": sample.text, "n_tokens": sample.n_tokens, "finish": sample.finish,
            "tok_per_s": sample.n_tokens / seconds if seconds > 0 else 0.0, "elapsed": seconds,
            "max_new_tokens": max_new, "context": context_length(loaded.model)}


def score_reports(run_dir: Path) -> list[Path]:
    """Score reports of a run: `<run>/score.json`, other `<run>/*.json` reports, then `<checkpoint>/score.json`
    (where `nanoeval score` writes by default), newest checkpoint first."""
    from nanoeval.report import read_score_report
    from nanotrain.checkpoint import checkpoint_dirs

    candidates = sorted(run_dir.glob("*.json"), key=lambda p: (p.name != "score.json", p.name))
    candidates += [folder / "score.json" for _, folder in checkpoint_dirs(run_dir)]
    found = []
    for path in candidates:
        if not path.is_file():
            continue
        try:
            read_score_report(path)
        except UserError:
            continue
        found.append(path)
    return found


def list_runs(runs_dir: Path) -> list[str]:
    """Run folders with something to show: a metrics log, a checkpoint or a score report."""
    root = runs_dir.resolve()
    if not root.is_dir():
        return []
    return [p.name for p in _run_dirs(root) if p.resolve().is_relative_to(root)
            and ((p / "metrics.jsonl").is_file() or run_checkpoints(p, root) or score_reports(p))]


def resolve_run(runs_dir: Path, run: str) -> Path:
    """The folder of run `run`, refusing names that leave the runs folder."""
    if "\x00" in str(run):
        raise UserError(f"run {run!r}: not a valid name (NUL byte)")
    root = runs_dir.resolve()
    real = (root / str(run)).resolve()
    if not real.is_relative_to(root) or real == root:
        raise UserError(f"run {run!r} is outside the runs folder {runs_dir}")
    if not real.is_dir():
        raise UserError(f"run {run!r}: no such folder under {runs_dir}")
    return real


def compare_markdown(runs_dir: Path, runs: list[str]) -> str:
    """The `nanoeval compare` table for the selected runs: one row per score report, or the checkpoint's logged
    metrics when a run has no report yet (runs without any checkpoint are left out)."""
    from nanoeval.report import compare_row, compare_table

    rows, problems = [], []
    for run in runs:
        run_dir = resolve_run(runs_dir, run)
        try:
            reports = score_reports(run_dir)
            if reports:
                rows += [compare_row(p) for p in reports]
            elif run_checkpoints(run_dir, runs_dir.resolve()):
                rows.append(compare_row(run_dir))
        except UserError as e:  # one unreadable run must not hide the others
            problems.append(f"⚠ {run}: {e}")
    table = compare_table(rows) if rows else "No checkpoints or score reports in the selected runs yet."
    return "\n\n".join([table, *problems])


def training_curves(runs_dir: Path, runs: list[str]) -> pd.DataFrame:
    """Long table (run, metric, step, value) of loss / CE / val CE from each run's metrics.jsonl."""
    import pandas as pd

    rows = []
    for run in runs:
        train, val = read_metrics(resolve_run(runs_dir, run) / "metrics.jsonl")
        for m in train + val:
            step = m.get("step")
            for name in CURVE_METRICS:
                value = m.get(name)
                if isinstance(step, (int, float)) and isinstance(value, (int, float)) and math.isfinite(value):
                    rows.append({"run": run, "metric": name, "step": step, "value": float(value)})
    return pd.DataFrame(rows, columns=["run", "metric", "step", "value"])


def metrics_view(runs_dir: Path, runs: list[str]) -> tuple[str, dict[str, pd.DataFrame]]:
    """The compare table (markdown) and one curve table per entry of CURVE_METRICS for the selected runs."""
    curves = training_curves(runs_dir, runs)
    return compare_markdown(runs_dir, runs), {name: curves[curves.metric == name] for name in CURVE_METRICS}


def build_app(runs_dir: Path, *, cache_size: int = 4, concurrency: int = 2, max_queue: int = 32,
              verify: bool = True, validator: str = "tree-sitter", rustc: Any = None) -> gr.Blocks:
    """The Blocks app: a Generate tab (side-by-side streaming) and a Metrics tab (compare table, curves).
    `validator` rustc/both also shows rustc's verdict on each panel (`rustc`: a `nanoeval.rustc.Rustc`)."""
    import gradio as gr

    from nanoeval.prompts import SEED_PROMPTS

    backend = DemoBackend(runs_dir, cache_size, verify, validator, rustc)
    entries = backend.checkpoints()

    with gr.Blocks(title="nanolab — side-by-side Rust generation", analytics_enabled=False) as demo:
        gr.Markdown("## nanolab · side-by-side Rust generation\n"
                    f"Checkpoints from `{runs_dir}`. Completions stream as tokens arrive; each panel is scored "
                    "with tree-sitter (truncation-aware) and a Rust-aware bracket lexer.")
        with gr.Tab("Generate"):
            with gr.Row():
                ckpts = gr.Dropdown(
                    choices=[e.name for e in entries], value=default_selection(entries), multiselect=True,
                    max_choices=MAX_PANELS, allow_custom_value=True, label="Checkpoints (pick 2-4 to compare)",
                    info="runs/<run>/final or step_N; a path outside the runs folder is refused", scale=5,
                    elem_id="checkpoints")
                refresh = gr.Button("Rescan runs", scale=1, size="sm")
            bypass = gr.Checkbox(False, label="bypass non-causal layers",
                                 info="needed for checkpoints with a bidirectional wavefield layer")
            prompt = gr.Textbox(SEED_PROMPTS[0], label="Prompt", lines=4, max_lines=12)
            gr.Examples([[p] for p in SEED_PROMPTS], inputs=[prompt], label="The seed's 15 prompts",
                        examples_per_page=len(SEED_PROMPTS))
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, 0.7, step=0.05, label="temperature (0 = greedy)")
                top_k = gr.Slider(0, 200, 40, step=1, label="top-k (0 = off)")
                top_p = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="top-p")
                max_tokens = gr.Slider(1, 512, 128, step=1, label="max new tokens")
                seed = gr.Number(0, precision=0, label="seed")
            go = gr.Button("Generate", variant="primary")
            outputs: list[gr.components.Component] = []
            columns = []
            with gr.Row(equal_height=False):
                for i in range(MAX_PANELS):
                    with gr.Column(visible=i < max(len(default_selection(entries)), 1), min_width=280) as col:
                        outputs.append(gr.Markdown(f"### panel {i + 1}", elem_id=f"panel-{i}-header"))
                        outputs.append(gr.Code("", language=None, lines=14, max_lines=40, interactive=False,
                                               label="completion", elem_id=f"panel-{i}-code"))
                        outputs.append(gr.Markdown("", elem_id=f"panel-{i}-stats"))
                    columns.append(col)
            with gr.Accordion("Raw results (JSON)", open=False):
                raw = gr.JSON(label="results")

        with gr.Tab("Metrics"):
            run_names = list_runs(runs_dir)
            first_table, first_curves = metrics_view(runs_dir, run_names)
            with gr.Row():
                runs = gr.Dropdown(choices=run_names, value=run_names, multiselect=True, label="Runs", scale=5)
                refresh_metrics = gr.Button("Refresh", scale=1, size="sm")
            gr.Markdown("**Compare** — from score reports (`nanoeval score`), else the checkpoint's logged "
                        "metrics; rates with bootstrap 95% intervals over samples")
            table = gr.Markdown(first_table, elem_id="compare-table")
            with gr.Row():
                plots = [gr.LinePlot(first_curves[name], x="step", y="value", color="run", title=title,
                                     label=title, min_width=300)
                         for name, title in CURVE_METRICS.items()]

        def on_generate(choices, prompt_text, temp, k, p, n, s, bypass_on):
            try:
                settings = SamplingSettings.from_ui(temp, k, p, n, s)
                stream = backend.generate(choices, prompt_text or "", settings, bool(bypass_on))
                for panels in stream:
                    yield _render(panels)
            except UserError as e:
                raise gr.Error(str(e), print_exception=False) from None

        def on_select(choices):
            n = max(1, min(len(choices or []), MAX_PANELS))
            return [gr.Column(visible=i < n) for i in range(MAX_PANELS)]

        def on_rescan(current):
            names = [e.name for e in backend.checkpoints()]
            keep = [c for c in (current or []) if c in names]
            return gr.Dropdown(choices=names, value=keep)

        def on_rescan_runs(current):
            names = list_runs(runs_dir)
            return gr.Dropdown(choices=names, value=[r for r in (current or []) if r in names])

        def on_metrics(selected):
            try:
                table_df, curves = metrics_view(runs_dir, list(selected or []))
                return [table_df, *curves.values()]
            except UserError as e:
                raise gr.Error(str(e), print_exception=False) from None

        go.click(on_generate, [ckpts, prompt, temperature, top_k, top_p, max_tokens, seed, bypass],
                 [*outputs, raw], api_name="generate")
        ckpts.change(on_select, ckpts, columns, api_name=False, queue=False)
        refresh.click(on_rescan, ckpts, ckpts, api_name=False)
        runs.change(on_metrics, runs, [table, *plots], api_name="metrics")
        refresh_metrics.click(on_rescan_runs, runs, runs, api_name=False).then(
            on_metrics, runs, [table, *plots], api_name=False)
        demo.load(on_rescan, ckpts, ckpts, api_name=False)
        demo.load(on_metrics, runs, [table, *plots], api_name=False)

    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    return demo


def _render(panels: list[Panel]) -> list[Any]:
    out: list[Any] = []
    for i in range(MAX_PANELS):
        if i < len(panels):
            p = panels[i]
            out += [p.header_md(), p.text, p.stats_md()]
        else:
            out += ["", "", ""]
    out.append([p.result() for p in panels])
    return out


def launch(runs_dir: Path, *, host: str = "127.0.0.1", port: int = 7860, cache_size: int = 4,
           concurrency: int = 2, max_queue: int = 32, block: bool = True, verify: bool = True,
           validator: str = "tree-sitter", rustc: Any = None) -> gr.Blocks:
    """Build and serve the app on host:port (127.0.0.1 by default: not exposed unless asked)."""
    if not Path(runs_dir).is_dir():
        raise UserError(f"--runs {runs_dir}: no such folder")
    demo = build_app(Path(runs_dir), cache_size=cache_size, concurrency=concurrency, max_queue=max_queue,
                     verify=verify, validator=validator, rustc=rustc)
    try:
        demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, ssr_mode=False,
                    show_error=True, quiet=False, footer_links=["api", "settings"])
    except OSError as e:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e})") from None
    return demo


def build_parser() -> argparse.ArgumentParser:
    from nanoeval.load import add_verify_flag
    from nanoeval.rustc import add_validator_args

    p = argparse.ArgumentParser(
        prog="nanolab-demo",
        description=(
            "Serve a web page that streams completions from 2-4 checkpoints side by side, scores each with "
            "tree-sitter, and shows the runs' score reports and training curves. Only checkpoints under --runs "
            "(<run>/final, <run>/step_N) can be opened. Listens on 127.0.0.1 unless --host says otherwise; "
            "Gradio analytics are off. Start it as `python -m apps.demo` or `nanolab-demo`."
        ),
    )
    p.add_argument("--runs", type=Path, default=None,
                   help="runs folder to serve checkpoints from (default: $NANOLAB_RUNS or ./runs)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; use 0.0.0.0 to expose it on the network)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    p.add_argument("--concurrency", type=int, default=2,
                   help="generations served at once; more requests wait in the queue (default 2)")
    p.add_argument("--max-queue", type=int, default=32, help="requests allowed to wait in the queue (default 32)")
    p.add_argument("--cache-size", type=int, default=4,
                   help="loaded checkpoints kept in memory, least recently used dropped first (default 4)")
    add_verify_flag(p)
    add_validator_args(p)
    p.set_defaults(func=serve)
    return p


def serve(args: argparse.Namespace) -> int:
    """Check the flags, then serve the app until interrupted."""
    from nanoeval.rustc import find_rustc
    from nanotrain.extras import require
    from nanotrain.paths import default_runs_dir

    require("gradio", "the demo")  # a missing extra is said before anything else
    runs = args.runs if args.runs is not None else default_runs_dir()
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: must be between 1 and 65535")
    for flag, value in (("--concurrency", args.concurrency), ("--max-queue", args.max_queue),
                        ("--cache-size", args.cache_size)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    if not runs.is_dir():
        raise UserError(f"--runs {runs}: no such folder (train a run first: nanotrain run RECIPE)")
    rustc = find_rustc(args.rustc) if args.validator != "tree-sitter" else None
    found = discover_checkpoints(runs)
    print(f"nanolab-demo: {len(found)} checkpoint(s) under {runs}"
          + ("" if found else " (none yet: the page can rescan once a run writes one)"))
    launch(runs, host=args.host, port=args.port, cache_size=args.cache_size, concurrency=args.concurrency,
           max_queue=args.max_queue, block=True, verify=args.verify, validator=args.validator, rustc=rustc)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m apps.demo` / `nanolab-demo`: user mistakes end with one line and exit code 2."""
    from nanotrain.cli import run_main

    return run_main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
