"""`nanotrain run RECIPE`: train one named recipe, resumable, single process or under torchrun (DDP)."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import signal
from pathlib import Path
from typing import Any

from nanotrain.cli import add_device_arg
from nanotrain.errors import UserError

AUTO_COMPILE_MIN_STEPS = 200

EPILOG = """\
examples:
  nanotrain run engram-v1                      # auto scale: full on a GPU, tiny on CPU
  nanotrain run engram-v1 --steps 100          # pause after 100 steps (schedule unchanged)
  nanotrain run engram-v1 --resume auto        # continue from the newest checkpoint of runs/engram-v1
  nanotrain run engram-v2                      # resume runs/engram-v1/final and extend (LR re-warms)
  nanotrain run engram-v2 --resume-lr jump     # ... reproducing the original's LR jump
  torchrun --nproc_per_node 2 -m nanotrain run engram-v1   # one run across 2 processes (DDP)
  torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST0:29500 --rdzv-id RUN \\
      -m nanotrain run engram-v1               # the same on every machine: one run across 2 x 8 processes

Checkpoints go to OUT/NAME/step_<N>/ every --ckpt-every steps and OUT/NAME/final/ at the end; one JSON line
per log step goes to OUT/NAME/metrics.jsonl (with --logger tensorboard also to TensorBoard event files there;
`nanotrain plot OUT/NAME ...` draws the curves). Ctrl-C or SIGTERM saves a checkpoint and exits (130 or 143);
--resume auto continues it. One run at a time may write a run folder (a second one exits 2 naming the first's
PID). Checkpoints are checked against their manifest.json before resuming (--no-verify skips that).
--batch-size is the global batch (rows per step over all processes), so a run resumes at any world size.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="train a recipe (resumable; DDP under torchrun)",
        description="Train one named recipe (see `nanotrain recipes`) on a dataset folder and write checkpoints.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="recipe name, e.g. engram-v1, baseline-v1, haar-v5, engram-v2")
    p.add_argument("--scale", choices=["auto", "full", "small", "tiny"], default="auto",
                   help="model/schedule size: auto = full on a GPU, tiny on CPU (default: auto)")
    p.add_argument("--data", type=Path,
                   help="dataset folder (default, built on first use: at full scale the full Debian corpus, "
                        "$NANOLAB_DATA/datasets/rust-full; else the popular crates, .../rust-default)")
    p.add_argument("--out", type=Path, help="runs folder (default: $NANOLAB_RUNS or ./runs)")
    p.add_argument("--name", help="run name, i.e. the folder under --out (default: the recipe name; no '/')")
    p.add_argument("--steps", type=int, help="stop after N steps in this invocation (the schedule is unchanged)")
    p.add_argument("--total-steps", type=int, help="schedule length; larger than a checkpoint's extends the run")
    p.add_argument("--batch-size", type=int, help="global batch size (rows per step, over all processes)")
    p.add_argument("--seq-len", type=int, help="training window length in tokens")
    p.add_argument("--seed", type=int, help="seed for initialisation and the data order")
    add_device_arg(p, default="auto")
    p.add_argument("--compile", dest="compile", action="store_const", const=True, default=None,
                   help="torch.compile the model (default: auto = on for invocations of at least "
                        f"{AUTO_COMPILE_MIN_STEPS} steps, enough to pay back the time compiling takes)")
    p.add_argument("--no-compile", dest="compile", action="store_const", const=False, help="never torch.compile")
    p.add_argument("--cuda-graphs", dest="cuda_graphs", action="store_const", const=True, default=None,
                   help="compile with CUDA graphs (torch.compile mode reduce-overhead): each step replays "
                        "recorded kernels instead of launching them one by one. Default: auto = on for a "
                        f"compiled run at batch <= {GRAPHS_AUTO_MAX_BATCH} in one CUDA process (the recipes' "
                        "B=2 step is host-bound without it; benchmarks/README.md has the measured step times). "
                        "Given explicitly it implies --compile and needs one CUDA process")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_const", const=False,
                   help="never record CUDA graphs (plain --compile)")
    p.add_argument("--resume", metavar="PATH|auto",
                   help="checkpoint folder to continue from, or 'auto' for the newest one of this run")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="resume from a checkpoint without checking its files against manifest.json")
    p.add_argument("--resume-lr", choices=["rewarm", "jump"],
                   help="when the schedule changes on resume: ramp from the checkpoint's LR (rewarm, default) "
                        "or jump straight to the new schedule's LR (the original's behaviour)")
    p.add_argument("--rewarm-steps", type=int, help="length of the re-warm ramp (default 200)")
    p.add_argument("--log-every", type=int, help="steps between log lines")
    p.add_argument("--eval-every", type=int, help="steps between validations (0 = only at the end)")
    p.add_argument("--ckpt-every", type=int, help="steps between step_<N>/ checkpoints (0 = only final)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], help="autocast bf16 (default) or plain fp32")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="stop (and checkpoint) after this many minutes of training")
    p.add_argument("--threads", type=int,
                   help="CPU threads per process (default: torch's choice); 1 is faster when other jobs share the "
                        "cores")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.add_argument("--logger", choices=["jsonl", "tensorboard"], default="jsonl",
                   help="where metrics go besides metrics.jsonl, which is always written: nowhere (jsonl, default) "
                        "or TensorBoard event files in the run folder (tensorboard; `tensorboard --logdir OUT`)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from nanotrain.dist import init_distributed, shutdown

    info = init_distributed(args.device)
    if info.device.type == "cpu":
        from nanotrain.malloc import keep_freed_memory

        keep_freed_memory()
    try:
        return run(args, info)
    finally:
        shutdown(info)


def check_numbers(args: argparse.Namespace) -> None:
    """UserError for a numeric flag out of range (`nanotrain session` checks a session file's overrides here too)."""
    for flag in ("steps", "total_steps", "batch_size", "seq_len", "rewarm_steps", "log_every", "time_budget",
                 "threads"):
        v = getattr(args, flag)
        if v is not None and v <= 0:
            raise UserError(f"--{flag.replace('_', '-')} {v}: must be positive")
    if args.time_budget is not None and not math.isfinite(args.time_budget):
        raise UserError(f"--time-budget {args.time_budget}: must be a finite number of minutes")
    for flag in ("eval_every", "ckpt_every", "seed"):
        v = getattr(args, flag)
        if v is not None and v < 0:
            raise UserError(f"--{flag.replace('_', '-')} {v}: must not be negative")


def _check_name(name: str | None) -> None:
    """A run name is one folder name under --out: no path separator, not `.` or `..`."""
    if name is None:
        return
    if not name or name in (".", "..") or "/" in name or "\x00" in name or (os.altsep and os.altsep in name):
        raise UserError(f"--name {name!r}: must be a plain folder name under --out (no '/', not '.' or '..')")


def _resolve_resume(args: argparse.Namespace, recipe: Any, out: Path, run_dir: Path,
                    say: Any = print) -> Path | None:
    """The checkpoint this invocation continues from, or None for a fresh run; UserError on conflicts.
    With `args.verify`, the checkpoint's files must match its manifest (auto skips one that does not)."""
    from nanotrain import checkpoint as ckpt

    if args.resume == "auto":
        latest = ckpt.find_latest(run_dir, verify=args.verify)
        folders = [p for _, p in ckpt.checkpoint_dirs(run_dir)]
        if latest is not None:
            newer = folders[:folders.index(latest)]
            if newer:
                say(f"--resume auto: skipping {', '.join(p.name for p in newer)} (incomplete or damaged)")
            return latest
        if folders:
            raise UserError(f"--resume auto: {run_dir} holds checkpoint folders but none is complete and intact "
                            "(--resume FOLDER names what is wrong with one)")
    elif args.resume is not None:
        folder = Path(args.resume)
        ckpt.read_config(folder)
        if args.verify:
            ckpt.verify_manifest(folder)
        ckpt.load_trainer_state(folder)
        return folder
    else:
        existing = ckpt.checkpoint_dirs(run_dir)
        if existing:
            what = "a finished run (final/)" if any(p.name == "final" for _, p in existing) else "checkpoints"
            raise UserError(f"{run_dir}: already holds {what}; pass --resume auto to continue it, "
                            "or --name NEW to start another run")
    if recipe.resume_from:
        source = out / recipe.resume_from / "final"
        if not source.exists():
            raise UserError(f"recipe {recipe.name} continues {source}, which does not exist: run "
                            f"`nanotrain run {recipe.resume_from}` first or pass --resume PATH")
        ckpt.read_config(source)
        if args.verify:
            ckpt.verify_manifest(source)
        ckpt.load_trainer_state(source)
        return source
    return None


def _apply_overrides(args: argparse.Namespace, train_cfg: Any) -> None:
    for flag, key in (("total_steps", "total_steps"), ("batch_size", "batch_size"), ("seq_len", "seq_len"),
                      ("seed", "seed"), ("log_every", "log_every"), ("eval_every", "eval_every"),
                      ("ckpt_every", "ckpt_every"), ("dtype", "dtype"), ("resume_lr", "resume_lr"),
                      ("rewarm_steps", "rewarm_steps")):
        v = getattr(args, flag)
        if v is not None:
            setattr(train_cfg, key, v)
    if args.compile is not None:
        train_cfg.compile = args.compile


def _auto_compile(args: argparse.Namespace, train_cfg: Any, device_type: str, start_step: int) -> str | None:
    """Turn compile on for long runs when neither --compile nor --no-compile was given; say why, or None.

    Compiling takes a minute or two and makes each step faster on a CPU and on a GPU alike, so it pays back
    within a few hundred steps (the measured step times, compiled and eager, are in benchmarks/README.md).
    """
    if args.compile is not None or train_cfg.compile:
        return None
    remaining = train_cfg.total_steps - start_step
    if args.steps is not None:
        remaining = min(remaining, args.steps)
    if remaining < AUTO_COMPILE_MIN_STEPS:
        return None
    train_cfg.compile = True
    return f"compile: on (auto: {remaining} {device_type.upper()} steps to run; --no-compile turns it off)"


GRAPHS_AUTO_MAX_BATCH = 4


def _auto_cuda_graphs(args: argparse.Namespace, train_cfg: Any, device_type: str,
                      world_size: int) -> tuple[bool, str | None]:
    """Whether to record CUDA graphs, and a line saying why when the default (neither flag) turned them on.

    Auto = on for a compiled run in one CUDA process at batch <= GRAPHS_AUTO_MAX_BATCH, where the compiled step
    waits on the host. A whole run with graphs logs the same losses as one without (bf16 noise) and resumes from
    its checkpoints (benchmarks/check_run_graphs.py checks both; the step times are in benchmarks/README.md).
    Larger batches keep the GPU busy and have not been timed with graphs, so they stay plain."""
    if args.cuda_graphs is not None:
        return bool(args.cuda_graphs), None
    if device_type != "cuda" or world_size != 1 or not train_cfg.compile:
        return False, None
    if train_cfg.batch_size > GRAPHS_AUTO_MAX_BATCH:
        return False, None
    return True, (f"cuda graphs: on (auto: compiled, batch {train_cfg.batch_size} on one GPU; "
                  "--no-cuda-graphs turns them off)")


def _lock_run(run_dir: Path, info: Any, stack: contextlib.ExitStack) -> None:
    """Hold the run folder's lock (rank 0) for the rest of the run; every rank fails together if it is taken."""
    from nanotrain.runlock import RunLock

    error = None
    if info.is_main:
        try:
            stack.enter_context(RunLock(run_dir))
        except UserError as e:
            error = e
    if info.enabled:
        import torch

        from nanotrain.dist import all_reduce_

        flag = all_reduce_(torch.tensor([int(error is not None)], device=info.device), info, "max")
        if flag.item() and error is None:
            error = UserError(f"{run_dir}: rank 0 could not lock the run folder")
    if error is not None:
        raise error


def _start_clean(run_dir: Path, source: Path | None, say: Any) -> None:
    """Under the run folder's lock: delete the temp folders of saves that never finished, and on a fresh start
    the metrics.jsonl rows of an attempt that left no checkpoint (a resume trims rows past its step itself)."""
    from nanotrain import checkpoint as ckpt

    stale = ckpt.remove_temp_folders(run_dir)
    if stale:
        say(f"removed {len(stale)} unfinished checkpoint folder(s) of a stopped run: "
            f"{', '.join(p.name for p in stale)}")
    log = run_dir / "metrics.jsonl"
    if source is None and log.is_file():
        rows = len(log.read_text().splitlines())
        log.unlink()
        if rows:
            say(f"fresh start: removed {rows} metrics.jsonl row(s) of an earlier attempt that saved no checkpoint")


def _check_memory(model_cfg: Any, train_cfg: Any, info: Any) -> None:
    """UserError when the lower-bound memory estimate of one step exceeds what the device has free."""
    import torch

    from nanotrain.model.gpt import GPT
    from nanotrain.train import available_memory, step_memory_bytes

    avail = available_memory(info.device)
    if avail is None:
        return
    with torch.device("meta"):  # shapes only: the parameter count without allocating
        n_params = sum(p.numel() for p in GPT(model_cfg).parameters())
    local = train_cfg.batch_size // info.world_size
    need = step_memory_bytes(n_params, model_cfg, local, train_cfg.seq_len, train_cfg.dtype == "bf16")
    if info.device.type == "cpu":
        need *= info.world_size  # the processes share the machine's RAM
    free, what = avail
    if need > free:
        gib = 2**30
        raise UserError(
            f"--batch-size {train_cfg.batch_size}: one step needs at least {need / gib:.1f} GiB ({local} x "
            f"{train_cfg.seq_len} tokens per process, vocab {model_cfg.vocab_size}, "
            f"{n_params / 1e6:.1f}M params), more than the {free / gib:.1f} GiB of {what}; lower --batch-size "
            "or --seq-len")


def _continue_command(recipe: str, scale: str, dataset: Path, out: Path, run_dir: Path, args: argparse.Namespace
                      ) -> str:
    """The command line that continues this run: every flag that decides what it resumes and on what data."""
    argv = ["nanotrain", "run", recipe, "--resume", "auto", "--scale", scale, "--data", str(dataset),
            "--out", str(out), "--name", run_dir.name]
    if args.device != "auto":
        argv += ["--device", args.device]
    return shlex.join(argv)


def run(args: argparse.Namespace, info: Any) -> int:
    """Resolve recipe, scale, data and resume point; train; print where the result is. The run folder is
    locked for the whole invocation (`_lock_run`)."""
    with contextlib.ExitStack() as stack:
        return _run_locked(args, info, stack)


def _run_locked(args: argparse.Namespace, info: Any, stack: contextlib.ExitStack) -> int:
    import filecmp

    from nanotrain import checkpoint as ckpt
    from nanotrain.config import ModelConfig, TrainConfig
    from nanotrain.data.default import ensure_default_dataset, repeat_note
    from nanotrain.data.shards import Dataset
    from nanotrain.metrics import TensorBoardLog, summary_writer_class
    from nanotrain.paths import default_runs_dir
    from nanotrain.recipes import get_recipe
    from nanotrain.train import Trainer, check_cuda_graphs

    say = print if info.is_main else (lambda *a, **k: None)
    check_numbers(args)
    if args.logger == "tensorboard":
        summary_writer_class()  # a missing package is said before any work
    _check_name(args.name)
    if args.cuda_graphs and args.compile is False:
        raise UserError("--cuda-graphs with --no-compile: CUDA graphs are recorded by compiling; drop one of them")
    if args.cuda_graphs:
        check_cuda_graphs(info.device, info.world_size)  # before anything is read or written, not in the Trainer
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    recipe = get_recipe(args.recipe)
    out = args.out or default_runs_dir()
    run_dir = out / (args.name or recipe.name)
    _lock_run(run_dir, info, stack)
    source = _resolve_resume(args, recipe, out, run_dir, say)
    if info.is_main:
        _start_clean(run_dir, source, say)
    if source is None and args.resume == "auto":
        say(f"--resume auto: no checkpoint in {run_dir}; starting a fresh run")
    saved = ckpt.read_config(source) if source is not None else None

    if saved is not None and saved.get("scale") and args.scale not in ("auto", saved["scale"]):
        raise UserError(f"--scale {args.scale}: checkpoint {source} was trained at scale {saved['scale']}")
    if saved is not None and saved.get("scale"):
        scale = saved["scale"]
    elif args.scale == "auto":
        scale = "full" if info.device.type == "cuda" else "tiny"
        say(f"scale: {scale} (auto: {'GPU found' if scale == 'full' else 'no GPU, training on CPU'})")
    else:
        scale = args.scale
    model_cfg, train_cfg = recipe.build(scale)
    if saved is not None:
        saved_model = ModelConfig.from_dict(saved["model"])
        if saved["recipe"] == recipe.name:
            train_cfg = TrainConfig.from_dict(saved["train"])
        elif saved_model != model_cfg:
            diff = [k for k, v in model_cfg.to_dict().items() if saved["model"].get(k) != v]
            raise UserError(f"{source}: its model ({saved['recipe']}) differs from recipe {recipe.name} at scale "
                            f"{scale} in {', '.join(diff)}")
        model_cfg = saved_model
    _apply_overrides(args, train_cfg)
    why = _auto_compile(args, train_cfg, info.device.type, int(saved["step"]) if saved is not None else 0)
    if why:
        say(why)
    cuda_graphs, why = _auto_cuda_graphs(args, train_cfg, info.device.type, info.world_size)
    if why:
        say(why)
    if train_cfg.seq_len > model_cfg.max_seq_len:
        raise UserError(f"--seq-len {train_cfg.seq_len}: longer than the model's max_seq_len {model_cfg.max_seq_len}")
    _check_memory(model_cfg, train_cfg, info)

    if args.data is not None:
        dataset = Dataset(args.data)
    else:
        dataset = Dataset(ensure_default_dataset(scale=scale))
    if dataset.vocab_size != model_cfg.vocab_size:
        raise UserError(f"dataset {dataset.folder}: tokenizer vocab {dataset.vocab_size} does not match recipe "
                        f"{recipe.name}'s vocab_size {model_cfg.vocab_size}")
    if source is not None and not filecmp.cmp(source / ckpt.TOKENIZER_FILE, dataset.tokenizer_path, shallow=False):
        raise UserError(f"dataset {dataset.folder}: its tokenizer.json differs from the one {source} was trained with")
    note = repeat_note(train_cfg.total_steps * train_cfg.batch_size * train_cfg.seq_len,
                       len(dataset.tokens("train")), dataset.folder)
    if note:
        say(note)

    trainer = Trainer(model_cfg=model_cfg, train_cfg=train_cfg, dataset=dataset, run_dir=run_dir,
                      recipe=recipe.name, scale=scale, dist=info, progress=not args.no_progress,
                      cuda_graphs=cuda_graphs)
    if source is not None:
        trainer.resume(source)
        say(f"resumed from {source} at step {trainer.step}"
            + (f" (LR re-warms over {train_cfg.rewarm_steps} steps)" if trainer.resume_step == trainer.step
               and trainer.start_mult is not None else ""))
    if args.logger == "tensorboard" and info.is_main:
        board = TensorBoardLog(run_dir, trainer.step)
        stack.callback(board.close)
        trainer.log_sinks.append(board.write)
        say(f"tensorboard: event files in {run_dir} (tensorboard --logdir {out})")
    counts = trainer.model.param_counts()
    say(f"{recipe.name} [{scale}]: {counts['total'] / 1e6:.2f}M params ({counts['excl_tables'] / 1e6:.2f}M excl. "
        f"tables), {info.world_size} process(es) on {info.device.type}, batch {train_cfg.batch_size} x "
        f"{train_cfg.seq_len} tokens, {train_cfg.total_steps} steps, {train_cfg.dtype} -> {run_dir}")
    budget = args.time_budget * 60.0 if args.time_budget else None
    try:
        result = trainer.fit(max_steps=args.steps, time_budget_s=budget)
    except OSError as e:  # a full disk or a vanished run folder while logging
        where = f" {e.filename}" if e.filename else ""
        raise UserError(f"{run_dir}: cannot write{where} ({e.strerror or e})") from None
    val = ""
    if result.val:
        val = f"; val CE {result.val['val_ce']:.4f} nats/token, {result.val['val_bpb']:.4f} bits/byte"
    if result.finished:
        say(f"done: {result.checkpoint} (step {result.step}){val}")
        return 0
    why = result.reason
    if result.stop_signal is not None:
        why = "Ctrl-C" if result.stop_signal == signal.SIGINT else signal.Signals(result.stop_signal).name
    say(f"stopped at step {result.step} of {train_cfg.total_steps} ({why}): {result.checkpoint}{val}; "
        f"continue with: {_continue_command(recipe.name, scale, dataset.folder, out, run_dir, args)}")
    if result.reason != "interrupted":
        return 0
    return 128 + (result.stop_signal or signal.SIGINT)
