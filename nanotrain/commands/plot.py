"""`nanotrain plot RUN_DIR... --out FILE.png`: training curves of one or more runs from their metrics.jsonl."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from nanotrain.errors import UserError

# (row kind, field, panel title) of each panel, left to right and top to bottom.
PANELS = (
    ("train", "loss", "train loss (objective)"),
    ("train", "ce", "train CE (nats/token)"),
    ("val", "val_ce", "val CE (nats/token)"),
    ("val", "val_bpb", "val bits/byte"),
)


def register(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="draw training curves of runs (train loss, CE, val CE and bits/byte) to an image",
        description="Draw the training curves of one or more run folders from their metrics.jsonl into one "
                    "figure: train loss, train CE, val CE and val bits/byte against training tokens (or steps), "
                    "one line per run. Rows a resumed run left behind from a lost timeline are dropped, as "
                    "everywhere metrics.jsonl is read. Needs matplotlib (the `plot` extra).",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders (runs/<name>)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="image to write (.png, .svg or .pdf)")
    p.add_argument("--x", choices=("tokens", "step"), default="tokens",
                   help="x axis: training tokens (step x global batch x sequence length, from the run's newest "
                        "checkpoint; default) or step")
    p.set_defaults(func=_run)


@dataclass
class Curves:
    """One run's rows and how many tokens one of its steps trains on (None when unknown)."""

    label: str
    train: list[dict]
    val: list[dict]
    tokens_per_step: int | None


def load_curves(run_dir: Path, label: str, need_tokens: bool) -> Curves:
    """The metrics of `run_dir`; UserError when it has no metrics.jsonl rows (or, with `need_tokens`, no
    checkpoint config to turn steps into tokens)."""
    from nanotrain import checkpoint as ckpt
    from nanotrain.files import read_metrics
    from nanotrain.metrics import METRICS_FILE

    path = run_dir / METRICS_FILE
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if not path.is_file():
        raise UserError(f"{run_dir}: no {METRICS_FILE}; not a nanotrain run folder")
    train, val = read_metrics(path)
    if not train and not val:
        raise UserError(f"{path}: no train or val rows to plot")
    tokens_per_step = None
    for _, folder in ckpt.checkpoint_dirs(run_dir):
        try:
            cfg = ckpt.read_config(folder)["train"]
            tokens_per_step = int(cfg["batch_size"]) * int(cfg["seq_len"])
            break
        except (UserError, KeyError, TypeError, ValueError):
            continue
    if need_tokens and tokens_per_step is None:
        raise UserError(f"{run_dir}: no readable checkpoint to take batch size x sequence length from; "
                        "pass --x step to plot against steps")
    return Curves(label, train, val, tokens_per_step)


def labels(runs: list[Path]) -> list[str]:
    """Each run's folder name, or its whole path where two runs share a name."""
    names = [p.resolve().name for p in runs]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, runs)]


def plot_runs(curves: list[Curves], path: Path, x: str) -> None:
    """Draw the PANELS of every run to `path`."""
    from nanotrain.plots import pyplot, save_figure

    plt = pyplot("nanotrain plot")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for ax, (kind, key, title) in zip(axes.flat, PANELS):
        for c in curves:
            rows = [r for r in (c.train if kind == "train" else c.val) if isinstance(r.get(key), (int, float))]
            scale = c.tokens_per_step if x == "tokens" else 1
            xs = [r["step"] * scale for r in rows]
            ax.plot(xs, [r[key] for r in rows], label=c.label, marker="o" if kind == "val" else None,
                    markersize=3)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("training tokens" if x == "tokens" else "step")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, path)


def _run(args: argparse.Namespace) -> int:
    from nanotrain.plots import check_figure_path

    out = check_figure_path(args.out, "--out", "nanotrain plot")
    curves = [load_curves(run, label, args.x == "tokens") for run, label in zip(args.runs, labels(args.runs))]
    plot_runs(curves, out, args.x)
    points = sum(len(c.train) + len(c.val) for c in curves)
    print(f"wrote {out} ({len(curves)} run(s), {points} rows)")
    return 0
