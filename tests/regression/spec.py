"""What the regression checkpoints are and how they are measured: one definition shared by the tests and by
`python -m tests.regression.regenerate`, so the goldens and the checks can never drift apart.

Every step runs the real user path: `nanotrain data build` on the committed corpus
(tests/fixtures/rust), `nanotrain run RECIPE --scale tiny` with the tiny scale's tables swapped for
the micro shape below (the CLI has no shape flags), and `nanoeval score` with greedy decoding. Everything is fp32
on CPU with one intra-op thread, seeded, so the same torch on the same machine gives bit-identical numbers.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CORPUS = REPO / "tests" / "fixtures" / "rust"
GOLDENS = HERE / "goldens.json"
CKPT_V1 = HERE / "ckpt_v1"
CKPT_V1_PINNED = HERE / "ckpt_v1_pinned.json"

VOCAB = 512
# The micro shape every regression recipe is trained at (5 layers so LoopLM keeps one looped block).
SHAPE: dict[str, Any] = dict(vocab_size=VOCAB, dim=32, n_layers=5, n_heads=2, n_kv_heads=1, ffn_mult=2.0,
                             ffn_multiple_of=16, max_seq_len=96, engram_d_mem=8, engram_table_size=101,
                             engram_heads=2, wavefield_field_size=16, wavefield_haar_levels=2)
TRAIN: dict[str, Any] = dict(batch_size=4, seq_len=64, total_steps=12, warmup_steps=2, lr=0.02, lion_lr=1e-3,
                             log_every=4, eval_every=0, eval_batches=4, ckpt_every=0, dtype="fp32", seed=0,
                             wavefield_warmup_delay=2)
# Recipes in training order (engram-v2 continues engram-v1's final). haar-v5 is non-causal: scored in bypass mode.
RECIPES: tuple[str, ...] = ("baseline", "baseline-v1", "engram-v1", "engram-v2", "engram-mtp", "haar-causal",
                            "haar-v5", "looplm")
NONCAUSAL = {"haar-v5"}
# The corpus is small: no file lands in its test split, which the regression runs do not use. Split by file: its
# 36 files sit in a handful of folders (no Cargo.toml), too few crates for a crate split of 80/10/10.
BUILD_ARGS = ("--vocab", str(VOCAB), "--split", "80/10/10", "--split-by", "file", "--seed", "0", "--workers", "1",
              "--allow-empty-split")
SCORE_ARGS = ("--prompts", "seed", "--samples-per-prompt", "1", "--temperature", "0", "--max-new-tokens", "40",
              "--seed", "0", "--heldout-tokens", "4096", "--batch-size", "16")

# Tolerances (absolute). Losses: fp32 on the same torch is bit-identical run to run, and measured identical (to the
# 6 decimals stored) with 2 threads instead of 1 on this machine; another CPU (SIMD width) or torch build reorders
# float sums at the 1e-7 relative level, expected to stay far below 1e-3 after 12 tiny steps (not measured: one
# machine here). Real changes move CE by >1e-2 (measured
# on engram-v1: seed 1 instead of 0: -0.025; a schedule one step longer: -0.023), so 1e-3 catches them without
# flaking. bpb = CE / ln 2 / bytes-per-token (~2.1 bytes here) moves 0.69x as much as CE, so 1e-3 is a little looser
# for it. Greedy decoding is a pure function of the logits, so its rates, token counts and texts are compared
# exactly (on another CPU a near-tie could flip one greedy token: regenerate there and review the diff).
FLOAT_TOL: dict[str, float] = {"train_loss": 1e-3, "val_ce": 1e-3, "val_bpb": 1e-3, "val_entropy": 1e-3}
EXACT = ("params", "heldout_tokens", "valid_rate", "bracket_balance", "error_density", "distinct_3", "gen_tokens",
         "texts_sha256")


@contextlib.contextmanager
def micro_scale() -> Iterator[None]:
    """Make `--scale tiny` mean the micro SHAPE/TRAIN above for the duration (restored afterwards)."""
    from nanotrain import recipes

    saved = recipes.SCALE_MODEL["tiny"], recipes.SCALE_TRAIN["tiny"]
    recipes.SCALE_MODEL["tiny"], recipes.SCALE_TRAIN["tiny"] = dict(SHAPE), dict(TRAIN)
    try:
        yield
    finally:
        recipes.SCALE_MODEL["tiny"], recipes.SCALE_TRAIN["tiny"] = saved


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread: the reduction order (hence every float) does not depend on the core count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_cli(prog: str, *argv: Any) -> tuple[int, str, str]:
    """Run `nanotrain`/`nanoeval` in-process like the console script; returns (exit code, stdout, stderr). A usage
    error argparse exits on is returned as its code, as the console script would end."""
    if prog == "nanotrain":
        from nanotrain.cli import main
    else:
        from nanoeval.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def cli(prog: str, *argv: Any) -> str:
    """`run_cli` that raises on a non-zero exit; returns stdout."""
    code, out, err = run_cli(prog, *argv)
    if code != 0:
        raise RuntimeError(f"{prog} {' '.join(map(str, argv))} exited {code}:\n{err[-2000:]}")
    return out


def build_dataset(out: Path) -> Path:
    """`nanotrain data build` of the committed regression corpus into `out`."""
    cli("nanotrain", "data", "build", "--src", CORPUS, "--out", out, *BUILD_ARGS)
    return out


def train(recipe: str, dataset: Path, runs: Path, *extra: Any) -> Path:
    """`nanotrain run RECIPE` at the micro shape (plus `extra` flags); returns its final/ checkpoint."""
    with micro_scale():
        cli("nanotrain", "run", recipe, "--scale", "tiny", "--data", dataset, "--out", runs, "--no-progress", *extra)
    return runs / recipe / "final"


def score(recipe: str, ckpt: Path, dataset: Path, out: Path) -> dict[str, Any]:
    """`nanoeval score` with greedy decoding; returns the score report."""
    mode = ("--inference-mode", "bypass") if recipe in NONCAUSAL else ()
    cli("nanoeval", "score", "--ckpt", ckpt, "--data", dataset, "--out", out, *SCORE_ARGS, *mode)
    return json.loads(out.read_text())


def metrics_of(report: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The golden fields of one recipe: losses from training and the score report, exact generation facts."""
    import hashlib

    train_rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last_train = [r for r in train_rows if r["kind"] == "train"][-1]
    h, g = report["heldout"], report["generation"]
    texts = "\x1e".join(s["prompt"] + "\x1f" + s["text"] for s in report["samples"])
    return {
        "params": report["model"]["params"],
        "train_loss": round(last_train["loss"], 6),
        "val_ce": round(h["ce"], 6),
        "val_bpb": round(h["bpb"], 6),
        "val_entropy": round(h["entropy"], 6),
        "heldout_tokens": h["n_tokens"],
        "valid_rate": g["valid_rate"],
        "bracket_balance": g["bracket_balance"],
        "error_density": g["error_density"],
        "distinct_3": g["distinct_3"],
        "gen_tokens": g["n_tokens"],
        "texts_sha256": hashlib.sha256(texts.encode("utf-8")).hexdigest(),
    }


def measure_all(work: Path, recipes: tuple[str, ...] = RECIPES, progress: bool = False) -> dict[str, dict]:
    """Build, train and score every recipe under `work`; {recipe: metrics}."""
    measured: dict[str, dict] = {}
    with one_thread():
        dataset = build_dataset(work / "dataset")
        for recipe in recipes:
            if progress:
                print(f"  {recipe}: training and scoring", flush=True)
            ckpt = train(recipe, dataset, work / "runs")
            report = score(recipe, ckpt, dataset, work / "scores" / f"{recipe}.json")
            measured[recipe] = metrics_of(report, work / "runs" / recipe)
    return measured


def compare(golden: dict[str, Any], measured: dict[str, Any]) -> list[str]:
    """Human-readable differences beyond tolerance between a golden and a measured metrics dict."""
    problems = []
    for key in sorted(set(golden) | set(measured)):
        if key not in golden or key not in measured:
            want, got = golden.get(key, "<absent>"), measured.get(key, "<absent>")
            problems.append(f"{key}: golden {want!r}, measured {got!r}")
            continue
        want, got = golden[key], measured[key]
        if key in FLOAT_TOL:
            ok = isinstance(got, (int, float)) and math.isfinite(got) and abs(got - want) <= FLOAT_TOL[key]
            if not ok:
                problems.append(f"{key}: golden {want}, measured {got} (|diff| > {FLOAT_TOL[key]})")
        elif want != got:
            problems.append(f"{key}: golden {want!r}, measured {got!r} (must match exactly)")
    return problems


def load_goldens() -> dict[str, Any]:
    return json.loads(GOLDENS.read_text())


# ------------------------------------------------------------------------------------------------ ckpt_v1
# The committed format-compatibility checkpoint: engram-mtp at the micro shape (Engram tables, MTP heads, mHC,
# GQA: most parameter families the format must carry), with its trainer state so resuming is covered too.
CKPT_RECIPE = "engram-mtp"
CKPT_STEPS = 300  # trained well past its init, so a loader that silently re-initialises weights cannot pass
PROBE_TEXT = "fn main() {\n    let mut total = 0u32;\n    for x in items {\n        total += x;\n    }\n}\n"
GREEDY_PROMPT = "pub fn parse(input: &str) -> Result<"
GREEDY_TOKENS = 24
LOGITS_ATOL = 1e-4  # fp32 forward of fixed weights: CPUs differ by ~1e-6; any change of the maths moves far more


def pin_checkpoint(folder: Path) -> dict[str, Any]:
    """What a loaded checkpoint must keep producing: logits statistics on a fixed input, the argmax at every
    position, the MTP logits' sum, and a greedy completion (through nanoeval.load and the inference engine)."""
    import torch

    from nanoeval.engine import Engine, SamplingConfig
    from nanoeval.load import load

    with one_thread():
        loaded = load(folder)
        ids = loaded.tokenizer.encode(PROBE_TEXT, add_special_tokens=False).ids
        with torch.inference_mode():
            out = loaded.model(torch.tensor([ids]))
        logits = out.logits[0].double()
        greedy = Engine(loaded.model, loaded.tokenizer).generate(
            [GREEDY_PROMPT], SamplingConfig(max_new_tokens=GREEDY_TOKENS, temperature=0.0))
    return {
        "format_version": loaded.config_json["format_version"],
        "recipe": loaded.recipe,
        "step": loaded.step,
        "params": loaded.model.param_counts(),
        "probe_tokens": len(ids),
        "logits_sum": round(float(logits.sum()), 6),
        "logits_abs_sum": round(float(logits.abs().sum()), 6),
        "logits_last_first8": [round(float(v), 6) for v in logits[-1, :8]],
        "argmax": logits.argmax(-1).tolist(),
        "mtp_logits_sum": [round(float(m.double().sum()), 6) for m in out.mtp_logits],
        "greedy_text": greedy.samples[0].text,
    }


def compare_pinned(pinned: dict[str, Any], measured: dict[str, Any]) -> list[str]:
    """Differences between the pinned and the measured behaviour of the committed checkpoint. Single logits
    within LOGITS_ATOL; sums over all logits within 1e-6 of the absolute sum (the float error of a sum grows with
    its length); everything else (argmax, greedy text, counts) exactly."""
    problems = []
    sum_tol = 1e-6 * float(pinned.get("logits_abs_sum") or 0.0) + LOGITS_ATOL
    for key in sorted(set(pinned) | set(measured)):
        want, got = pinned.get(key), measured.get(key)
        if key not in pinned or key not in measured:
            problems.append(f"{key}: pinned {want!r}, measured {got!r}")
        elif key in ("logits_sum", "logits_abs_sum", "mtp_logits_sum", "logits_last_first8"):
            tol = LOGITS_ATOL if key == "logits_last_first8" else sum_tol
            want_l = want if isinstance(want, list) else [want]
            got_l = got if isinstance(got, list) else [got]
            if len(want_l) != len(got_l) or any(not isinstance(b, (int, float)) or not abs(a - b) <= tol
                                                for a, b in zip(want_l, got_l)):
                problems.append(f"{key}: pinned {want}, measured {got} (tolerance {tol:.2g})")
        elif want != got:
            problems.append(f"{key}: pinned {want!r}, measured {got!r} (must match exactly)")
    return problems


def files_sha256(folder: Path) -> dict[str, str]:
    """sha256 of every file of a checkpoint folder (the committed bytes must never be regenerated silently)."""
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}
