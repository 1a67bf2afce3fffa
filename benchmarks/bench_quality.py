"""Quality at equal tokens: a recipe trained by `nanotrain run` against the plain reference GPT trained with AdamW.

Phases, each timed, each leaving its result in --work so a later call can continue with the rest (--phases):
- `ours`: `nanotrain run RECIPE --scale S --data D` (the recipe's own schedule, batch and window; compile and CUDA
  graphs as `nanotrain run` chooses them), in this process.
- `reference`: `reference.py`'s plain GPT at the scale's shape (no MTP, no mHC/Engram/wavefield) with AdamW
  (betas 0.9/0.95), on the same dataset and the same batches (`WindowLoader` with the run's seed), for the same
  steps: the same training tokens. The LR follows the recipe's WSD schedule with peak --ref-lr. It is saved as a
  nanolab `GPT` checkpoint (the `baseline` shape with `mhc_streams=1`, which computes exactly this model).
- `score`: `nanoeval score` on both checkpoints with the same settings: held-out CE/bpb on the same val tokens,
  valid rate and bracket balance with the score command's defaults; rates get bootstrap intervals.
Writes benchmarks/results/<date>_<device>_quality.{json,md} (a `_<scale>` suffix below full scale).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

SCHEMA = "nanolab.bench_quality/1"
PHASES = ("ours", "reference", "score")
REFERENCE_NAME = "reference-adamw"
REF_LR = {"full": 6e-4, "small": 6e-4, "tiny": 2e-3}
BPB_TARGET = 0.95

EPILOG = """\
examples:
  make data-quality        # the dataset (24.1M training tokens, 49 MiB)
  python benchmarks/bench_quality.py --device cuda --recipe engram-v1                 # full scale on a GPU
  python benchmarks/bench_quality.py --device cpu --total-steps 60 --threads 1       # tiny smoke run, minutes
  python benchmarks/bench_quality.py --device cuda --phases reference,score --work W # finish a cut run

The training tokens of each model are total_steps x batch x seq_len of the recipe at the scale (full: 10,000 x 2 x
1,024 = 20.5M), so --data should hold at least that many in its train split (a run says when it repeats them).
"""


def build_parser() -> argparse.ArgumentParser:
    from nanotrain.paths import data_root

    p = argparse.ArgumentParser(
        prog="bench_quality.py",
        description="Train a recipe with `nanotrain run` and the plain reference GPT with AdamW on the same "
                    "tokens, score both with `nanoeval score`, and write the two models' metrics and their ratios "
                    "(bpb_ratio = ours / reference held-out bits per byte) to benchmarks/results/.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="engram-v1", help="recipe trained by `nanotrain run` (default engram-v1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where both models train and are scored (default: cuda if visible, else cpu)")
    p.add_argument("--scale", choices=["full", "small", "tiny"], default=None,
                   help="recipe scale of both models (default: full on cuda, tiny on cpu)")
    p.add_argument("--data", type=Path, default=data_root() / "datasets" / "rust-quality",
                   help="dataset folder; its val split is the held-out set of both (default: "
                        "$NANOLAB_DATA/datasets/rust-quality, built by `make data-quality`)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for both runs, their score reports and the phase records "
                        "(default: runs/quality-<recipe>-<scale>)")
    p.add_argument("--phases", default=",".join(PHASES),
                   help="comma list of phases to run now: ours, reference, score (default: all three); the "
                        "results files are written once --work holds all three")
    p.add_argument("--total-steps", type=int, default=None,
                   help="steps of both models (default: the recipe's at the scale); for short smoke runs")
    p.add_argument("--ref-lr", type=float, default=None,
                   help="peak AdamW LR of the reference (default: 6e-4 at full and small scale, 2e-3 at tiny)")
    p.add_argument("--ref-weight-decay", type=float, default=0.1, help="AdamW weight decay (default 0.1)")
    p.add_argument("--heldout-tokens", type=int, default=None,
                   help="held-out tokens scored per model (default: nanoeval score's)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens sampled per completion (default: nanoeval score's)")
    p.add_argument("--no-compile", action="store_true",
                   help="train both eagerly (default: each compiles as `nanotrain run` decides for its length)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR,
                   help="folder of the results files (default benchmarks/results)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def phase_list(spec: str) -> list[str]:
    return [x for x in spec.split(",") if x]


def check_flags(args) -> None:
    """Checks that need neither torch nor a device (UserError names the flag)."""
    from nanotrain.errors import UserError
    from nanotrain.recipes import get_recipe

    recipe = get_recipe(args.recipe)
    if recipe.resume_from:
        raise UserError(f"--recipe {args.recipe}: it continues {recipe.resume_from}'s run; pick a recipe that "
                        "trains from scratch")
    phases = phase_list(args.phases)
    unknown = sorted(set(phases) - set(PHASES))
    if unknown or not phases:
        raise UserError(f"--phases {args.phases}: expected a comma list of {', '.join(PHASES)}")
    for flag in ("total_steps", "ref_lr", "heldout_tokens", "max_new_tokens", "threads"):
        v = getattr(args, flag)
        if v is not None and v <= 0:
            raise UserError(f"--{flag.replace('_', '-')} {v}: must be positive")
    if args.ref_weight_decay < 0:
        raise UserError(f"--ref-weight-decay {args.ref_weight_decay}: must not be negative")
    if not (args.data / "meta.json").is_file():
        raise UserError(f"--data {args.data}: not a dataset folder (no meta.json); build it with "
                        "`make data-quality` or `nanotrain data build`")


def device_slug(info: dict[str, Any]) -> str:
    """A short device name for the results file: h200, h100, a100, ... on a GPU, cpu on a CPU."""
    if info["type"] != "cuda":
        return "cpu"
    m = re.search(r"\b([A-Z]\d{2,4})\b", info["name"])
    return m.group(1).lower() if m else re.sub(r"[^a-z0-9]+", "-", info["name"].lower()).strip("-")


def results_stem(date: str, slug: str, scale: str) -> str:
    return f"{date}_{slug}_quality" + ("" if scale == "full" else f"_{scale}")


# ---------------------------------------------------------------------------------------------------------------
# phases


def run_ours(args, scale: str, device: str, work: Path) -> dict[str, Any]:
    """`nanotrain run` of the recipe; returns the phase record (wall time, checkpoint, its logged curves)."""
    from nanotrain.cli import main as nanotrain_main
    from nanotrain.errors import UserError

    argv = ["run", args.recipe, "--scale", scale, "--data", str(args.data), "--out", str(work), "--device", device]
    if args.total_steps:
        argv += ["--total-steps", str(args.total_steps)]
    if args.no_compile:
        argv.append("--no-compile")
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.no_progress:
        argv.append("--no-progress")
    print("phase ours: nanotrain " + " ".join(argv), flush=True)
    t0 = time.perf_counter()
    code = nanotrain_main(argv)
    seconds = time.perf_counter() - t0
    final = work / args.recipe / "final"
    if code != 0 or not final.is_dir():
        raise UserError(f"phase ours: `nanotrain {' '.join(argv)}` ended with exit code {code} and no {final}")
    return {"phase": "ours", "seconds": round(seconds, 1), "argv": ["nanotrain", *argv], "checkpoint": str(final),
            "curve": run_curve(work / args.recipe / "metrics.jsonl")}


def run_curve(path: Path) -> dict[str, list]:
    """[step, loss] of the train lines and [step, val_ce, val_bpb] of the val lines of a metrics.jsonl."""
    from nanotrain.files import read_metrics

    train, val = read_metrics(path)
    return {"train_loss": [[r["step"], r["loss"]] for r in train if r.get("loss") is not None],
            "val": [[r["step"], r["val_ce"], r.get("val_bpb")] for r in val if r.get("val_ce") is not None]}


def reference_model_config(scale: str, vocab_size: int):
    """The nanolab ModelConfig that computes reference.py's GPT: the baseline shape with one residual stream."""
    from nanotrain.recipes import get_recipe

    model_cfg, _ = get_recipe("baseline").build(scale)
    return dataclasses.replace(model_cfg, vocab_size=vocab_size, mhc_streams=1, mtp_heads=0)


def reference_as_gpt(ref_model, model_cfg):
    """`reference.RefGPT` weights in a nanolab `GPT` of `model_cfg` (same parameter names; strict load)."""
    from nanotrain.model.gpt import GPT

    gpt = GPT(model_cfg)
    gpt.load_state_dict(ref_model.state_dict(), strict=True)
    return gpt


def train_reference(args, scale: str, device_name: str, work: Path) -> dict[str, Any]:
    """Train the plain GPT with AdamW on the batches `nanotrain run` draws; save it as a GPT checkpoint."""
    import reference
    import torch
    from tqdm import tqdm

    from nanotrain.checkpoint import save_checkpoint
    from nanotrain.commands.run import AUTO_COMPILE_MIN_STEPS, GRAPHS_AUTO_MAX_BATCH
    from nanotrain.data.default import repeat_note
    from nanotrain.data.loader import WindowLoader
    from nanotrain.data.shards import Dataset
    from nanotrain.errors import UserError
    from nanotrain.optim.schedule import wsd
    from nanotrain.recipes import get_recipe

    folder = work / REFERENCE_NAME / "final"
    if folder.exists():
        raise UserError(f"{folder}: already exists; pass another --work, or --phases without reference")
    device = torch.device(device_name)
    dataset = Dataset(args.data)
    _, train_cfg = get_recipe(args.recipe).build(scale)
    if args.total_steps:
        train_cfg.total_steps = args.total_steps
    model_cfg = reference_model_config(scale, dataset.vocab_size)
    cfg = reference.RefConfig.from_model_config(model_cfg, label_smoothing=train_cfg.label_smoothing)
    lr = args.ref_lr or REF_LR[scale]
    steps, batch, seq_len = train_cfg.total_steps, train_cfg.batch_size, train_cfg.seq_len
    note = repeat_note(steps * batch * seq_len, len(dataset.tokens("train")), dataset.folder)
    if note:
        print(note)
    compiled = not args.no_compile and (device.type == "cuda" or steps >= AUTO_COMPILE_MIN_STEPS)
    graphs = compiled and device.type == "cuda" and batch <= GRAPHS_AUTO_MAX_BATCH
    print(f"phase reference: {REFERENCE_NAME} [{scale}], AdamW peak LR {lr:g}, weight decay "
          f"{args.ref_weight_decay:g}, batch {batch} x {seq_len}, {steps} steps, compile "
          f"{'with CUDA graphs' if graphs else 'on' if compiled else 'off'}", flush=True)

    t0 = time.perf_counter()
    torch.manual_seed(train_cfg.seed)
    model = reference.RefGPT(cfg).to(device)
    model.train()
    opt = reference.adamw(model.parameters(), lr=lr, weight_decay=args.ref_weight_decay)
    loss_fn = torch.compile(model.loss, mode="reduce-overhead" if graphs else None) if compiled else model.loss
    loader = WindowLoader(dataset.tokens("train"), seq_len, batch, train_cfg.seed)
    amp = common.autocast_dtype(train_cfg.dtype)
    total = torch.zeros((), device=device)
    curve, since = [], 0
    for step in tqdm(range(steps), desc=REFERENCE_NAME, unit="step", disable=args.no_progress, file=sys.stderr):
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        for group in opt.param_groups:
            group["lr"] = lr * wsd(step, train_cfg)
        if device.type == "cuda":
            rows = loader.windows(step).pin_memory().to(device, non_blocking=True)
            x, y = rows[:, :-1], rows[:, 1:]
        else:
            x, y = loader.batch(step)
        total += reference.train_step(loss_fn, model, opt, x, y, amp, train_cfg.grad_clip)
        since += 1
        if (step + 1) % train_cfg.log_every == 0 or step + 1 == steps:
            curve.append([step + 1, float(total) / since])
            total.zero_()
            since = 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if not all(math.isfinite(loss) for _, loss in curve):
        raise UserError(f"phase reference: the loss became non-finite (curve {curve[-3:]}); try a lower --ref-lr")
    gpt = reference_as_gpt(model, model_cfg)
    save_checkpoint(folder, model=gpt, model_cfg=model_cfg, train_cfg=train_cfg, recipe=REFERENCE_NAME,
                    tokenizer_path=dataset.tokenizer_path, step=steps, metrics={"train_loss": curve[-1][1]},
                    scale=scale)
    return {"phase": "reference", "seconds": round(seconds, 1), "checkpoint": str(folder),
            "optimizer": {"name": "adamw", "peak_lr": lr, "betas": [0.9, 0.95],
                          "weight_decay": args.ref_weight_decay, "schedule": "wsd of the recipe",
                          "warmup_steps": train_cfg.warmup_steps},
            "compile": "reduce-overhead" if graphs else ("default" if compiled else "off"),
            "curve": {"train_loss": curve, "val": []}}


def score_both(args, device: str, work: Path, records: dict[str, dict]) -> dict[str, Any]:
    """`nanoeval score` of both checkpoints with the same flags; returns the phase record."""
    from nanoeval.cli import main as nanoeval_main
    from nanotrain.errors import UserError

    out: dict[str, Any] = {"phase": "score", "seconds": {}, "reports": {}}
    for name in ("ours", "reference"):
        report = work / f"score_{name}.json"
        argv = ["score", "--ckpt", records[name]["checkpoint"], "--data", str(args.data), "--device", device,
                "--out", str(report)]
        for flag in ("heldout_tokens", "max_new_tokens"):
            if getattr(args, flag):
                argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        print(f"phase score ({name}): nanoeval " + " ".join(argv), flush=True)
        t0 = time.perf_counter()
        code = nanoeval_main(argv)
        if code != 0:
            raise UserError(f"phase score: `nanoeval {' '.join(argv)}` ended with exit code {code}")
        out["seconds"][name] = round(time.perf_counter() - t0, 1)
        out["reports"][name] = str(report)
        out.setdefault("argv", {})[name] = ["nanoeval", *argv]
    return out


# ---------------------------------------------------------------------------------------------------------------
# report


def model_metrics(row: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """One model's metrics from its score report and its `nanoeval compare` row (rates with 95% intervals)."""
    h, g = report["heldout"] or {}, report["generation"]
    return {
        "checkpoint": report["checkpoint"]["path"], "recipe": report["checkpoint"]["recipe"],
        "params": report["model"]["params"], "steps": report["checkpoint"]["step"],
        "heldout": {k: h.get(k) for k in ("ce", "bpb", "ppl", "entropy", "n_tokens", "seq_len", "split")},
        "valid_rate": g["valid_rate"], "valid_rate_ci95": row["ci"].get("valid_rate"),
        "bracket_balance": g["bracket_balance"], "bracket_balance_ci95": row["ci"].get("bracket_balance"),
        "distinct_3": g["distinct_3"], "distinct_3_ci95": row["ci"].get("distinct_3"),
        "n_samples": g["n_samples"], "gen_tok_per_s": g["tok_per_s"],
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def build_result(header: dict[str, Any], records: dict[str, dict], dataset_info: dict[str, Any],
                 tokens: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The results JSON and its markdown, from the three phase records and the two score reports."""
    from nanoeval.report import compare_row, compare_table, read_score_report

    score = records["score"]
    rows = {n: compare_row(score["reports"][n]) for n in ("ours", "reference")}
    models = {n: model_metrics(rows[n], read_score_report(score["reports"][n])) for n in ("ours", "reference")}
    ours, ref = models["ours"], models["reference"]
    ratios = {
        "bpb_ratio": ratio(ours["heldout"]["bpb"], ref["heldout"]["bpb"]),
        "ce_ratio": ratio(ours["heldout"]["ce"], ref["heldout"]["ce"]),
        "valid_rate_diff": None if ours["valid_rate"] is None or ref["valid_rate"] is None
        else ours["valid_rate"] - ref["valid_rate"],
        "bracket_balance_diff": None if ours["bracket_balance"] is None or ref["bracket_balance"] is None
        else ours["bracket_balance"] - ref["bracket_balance"],
    }
    target = {"bpb_ratio_max": BPB_TARGET,
              "bpb_met": ratios["bpb_ratio"] is not None and ratios["bpb_ratio"] <= BPB_TARGET,
              "valid_rate_met": ratios["valid_rate_diff"] is not None and ratios["valid_rate_diff"] >= 0}
    phases = {"ours_train_s": records["ours"]["seconds"], "reference_train_s": records["reference"]["seconds"],
              "score_ours_s": score["seconds"]["ours"], "score_reference_s": score["seconds"]["reference"]}
    result = {**header, "dataset": dataset_info, "tokens": tokens, "phases_s": phases, "models": models,
              "ratios": ratios, "target": target,
              "ours_run": {"argv": records["ours"]["argv"], "curve": records["ours"]["curve"]},
              "reference_run": {k: records["reference"][k] for k in ("optimizer", "compile", "curve")}}
    s = header["settings"]
    dev = header["device"]
    lines = []
    if s["scale"] != "full":
        result["note"] = (f"Smoke run at {s['scale']} scale: it checks the script end to end; it measures nothing "
                          "about the full-scale models.")
        lines += [f"**{result['note']}**", ""]
    lines += [f"# Quality at equal tokens: {s['recipe']} vs the plain reference (AdamW), {s['scale']} scale", "",
              f"{header['date']} · {dev['name']} ({dev['type']}) · torch {header['torch']} · dataset "
              f"`{dataset_info['path']}` ({dataset_info['train_tokens'] / 1e6:.2f}M train / "
              f"{dataset_info['val_tokens'] / 1e3:.0f}k val tokens)", "",
              f"Each model: {tokens['steps']:,} steps x {tokens['batch_size']} x {tokens['seq_len']} = "
              f"{tokens['per_model'] / 1e6:.2f}M training tokens ({tokens['epochs']:.2f} epochs).", "",
              compare_table([rows["ours"], rows["reference"]]).rstrip(), "",
              "| | ours | reference | ratio / difference |", "|---|---|---|---|",
              f"| held-out bits/byte | {_f(ours['heldout']['bpb'])} | {_f(ref['heldout']['bpb'])} | "
              f"bpb_ratio {_f(ratios['bpb_ratio'])} (target <= {BPB_TARGET}: "
              f"{'met' if target['bpb_met'] else 'not met'}) |",
              f"| held-out CE (nats/token) | {_f(ours['heldout']['ce'])} | {_f(ref['heldout']['ce'])} | "
              f"{_f(ratios['ce_ratio'])} |",
              f"| valid rate | {_f(ours['valid_rate'])} | {_f(ref['valid_rate'])} | "
              f"{_f(ratios['valid_rate_diff'], signed=True)} (target >= 0: "
              f"{'met' if target['valid_rate_met'] else 'not met'}) |",
              f"| bracket balance | {_f(ours['bracket_balance'])} | {_f(ref['bracket_balance'])} | "
              f"{_f(ratios['bracket_balance_diff'], signed=True)} |",
              f"| training wall time (s) | {phases['ours_train_s']} | {phases['reference_train_s']} | |",
              f"| scoring wall time (s) | {phases['score_ours_s']} | {phases['score_reference_s']} | |", "",
              f"Held-out: the first {ours['heldout']['n_tokens']:,} predicted tokens of the val split, windows of "
              f"{ours['heldout']['seq_len']}. Ours: `{' '.join(records['ours']['argv'])}` (wall time in-process, "
              "compile included). Reference: `benchmarks/reference.py` with AdamW "
              f"(peak LR {records['reference']['optimizer']['peak_lr']:g}, the recipe's WSD schedule), compile "
              f"{records['reference']['compile']}, on the same batches."]
    return result, "\n".join(lines) + "\n"


def _f(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_flags(args)
    import torch

    from nanoeval.report import write_text
    from nanotrain.data.shards import Dataset
    from nanotrain.errors import UserError
    from nanotrain.recipes import get_recipe

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dev = common.resolve_device(device)
    common.set_threads(args.threads)
    common.training_process_setup(dev)
    scale = args.scale or ("full" if dev.type == "cuda" else "tiny")
    work = args.work or Path("runs") / f"quality-{args.recipe}-{scale}"
    work.mkdir(parents=True, exist_ok=True)
    phases = phase_list(args.phases)
    records: dict[str, dict] = {}
    for name in PHASES:
        path = work / f"phase_{name}.json"
        if name in phases:
            if name == "ours":
                records[name] = run_ours(args, scale, device, work)
            elif name == "reference":
                records[name] = train_reference(args, scale, device, work)
            else:
                missing = [n for n in ("ours", "reference") if n not in records]
                if missing:
                    raise UserError(f"--phases {args.phases}: score needs the {' and '.join(missing)} phase(s) "
                                    f"done in {work} first (no {work}/phase_{missing[0]}.json)")
                records[name] = score_both(args, device, work, records)
            common.write_json(path, records[name])
        elif path.is_file():
            records[name] = json.loads(path.read_text())
    if set(records) != set(PHASES):
        print(f"phases done in {work}: {', '.join(records)}; the results are written once all of "
              f"{', '.join(PHASES)} are")
        return 0

    dataset = Dataset(args.data)
    _, train_cfg = get_recipe(args.recipe).build(scale)
    steps = args.total_steps or train_cfg.total_steps
    per_model = steps * train_cfg.batch_size * train_cfg.seq_len
    train_tokens = len(dataset.tokens("train"))
    dataset_info = {"path": str(args.data), "train_tokens": train_tokens, "val_tokens": len(dataset.tokens("val")),
                    "val_bytes_per_token": dataset.bytes_per_token("val"),
                    "tokenizer_sha256": dataset.meta.get("tokenizer_sha256")}
    tokens = {"steps": steps, "batch_size": train_cfg.batch_size, "seq_len": train_cfg.seq_len,
              "per_model": per_model, "epochs": per_model / train_tokens}
    settings = {"recipe": args.recipe, "scale": scale, "work": str(work), "total_steps": steps,
                "ref_lr": records["reference"]["optimizer"]["peak_lr"], "ref_weight_decay": args.ref_weight_decay,
                "heldout_tokens": args.heldout_tokens, "max_new_tokens": args.max_new_tokens,
                "no_compile": args.no_compile, "threads": args.threads}
    header = common.run_header(dev, settings, SCHEMA)
    result, md = build_result(header, records, dataset_info, tokens)
    stem = results_stem(header["date"][:10], device_slug(header["device"]), scale)
    common.write_json(args.out_dir / f"{stem}.json", result)
    md_path = args.out_dir / f"{stem}.md"
    write_text(md_path, md)
    print(md)
    print(f"wrote {args.out_dir / f'{stem}.json'} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(common.run_cli("bench_quality", main))
