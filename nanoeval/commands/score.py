"""`nanoeval score`: held-out loss + generation quality of one checkpoint, written as a score report (JSON)."""

from __future__ import annotations

from pathlib import Path

from nanoeval.commands.generate import add_model_args, add_sampling_args, load_model, sampling_config
from nanoeval.rustc import add_validator_args


def register(sub) -> None:
    p = sub.add_parser(
        "score",
        help="held-out CE/bpb + tree-sitter scoring of sampled Rust; writes a score report",
        description="Score a checkpoint: held-out CE, bits/byte, perplexity and entropy on the dataset's val split "
                    "(on the causal path sampling uses), then sample completions for a prompt set and score them "
                    "with tree-sitter (truncation-aware validity, error density), a Rust-aware bracket lexer and "
                    "distinct-3 (--validator rustc/both: also with the compiler's parser). Writes the score "
                    "report JSON (--out, default <ckpt>/score.json) and prints a summary. Checkpoints with "
                    "non-causal layers need --inference-mode bypass. --hf scores a local transformers causal LM "
                    "folder instead, on the same prompts and metrics (held-out text re-encoded with its tokenizer "
                    "when that differs from the dataset's).",
    )
    add_model_args(p)
    p.add_argument("--prompts", default="seed+completions",
                   help="seed+completions (default: the original's 15 prompts plus --n-prompts fn signatures cut "
                        "from the dataset's test split), seed, completions, or a JSONL file of {\"prompt\": ...} "
                        "lines")
    p.add_argument("--n-prompts", type=int, default=DEFAULT_N_PROMPTS,
                   help=f"how many completion prompts (default {DEFAULT_N_PROMPTS})")
    p.add_argument("--samples-per-prompt", type=int, default=2,
                   help="samples per prompt (default 2: with the defaults (15 + 120) x 2 = 270 samples, so a valid "
                        "rate near 0.2 has a 95%% interval of about +-0.05)")
    add_sampling_args(p, max_new_tokens=128)
    p.add_argument("--batch-size", type=int, default=128,
                   help="most samples decoded together; the samples split into equal batches (default 128)")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset folder for held-out loss and completion prompts (default: the default dataset of "
                        "the checkpoint's scale, if its tokenizer matches the checkpoint's)")
    p.add_argument("--heldout-tokens", default=None, metavar="N|all",
                   help="predicted tokens of the val split to score, from its start in windows of the run's seq_len "
                        "(default: the tokens the run's own validation measured, eval_batches x batch_size x "
                        "seq_len, so a checkpoint has one val CE; all: the whole split; 0: skip held-out loss)")
    p.add_argument("--out", type=Path, default=None, help="report path (default <ckpt>/score.json)")
    p.add_argument("--metrics", choices=("default", "seed"), default="default",
                   help="default, or also the original's heuristic coherence metrics (seed)")
    p.add_argument("--compile-check", action="store_true",
                   help="also compile each sample with `rustc --emit=metadata` and report a compile rate "
                        "(token-limit fragments rarely compile; the rate is strict)")
    add_validator_args(p, compile_check=True)
    p.set_defaults(func=_run)


DEFAULT_N_PROMPTS = 120


def parse_heldout_tokens(text: str | None) -> int | None:
    """--heldout-tokens: None (the run's validation tokens), a count >= 0, or `all` (-1)."""
    from nanotrain.errors import UserError

    if text is None:
        return None
    if text == "all":
        return -1
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise UserError(f"--heldout-tokens {text}: expected a token count >= 0 (0 = skip held-out loss) or 'all'")
    return n


def heldout_plan(heldout_tokens: int | None, config_json: dict) -> tuple[int | None, int | None]:
    """(max tokens, window length) for `evaluate_heldout` from --heldout-tokens and the checkpoint's config:
    None (default) = the run's validation tokens; -1 = the whole split. Windows are the run's seq_len."""
    from nanoeval.heldout import validation_tokens

    trained = validation_tokens(config_json.get("train") or (config_json.get("nanolab") or {}).get("train") or {})
    seq_len = trained[1] if trained else None
    if heldout_tokens is None:
        return (trained[0] if trained else None), seq_len
    return (None if heldout_tokens < 0 else heldout_tokens), seq_len


def resolve_dataset(data: Path | None, loaded, needed: bool):
    """The dataset for held-out loss: --data, else the default dataset of the checkpoint's scale (the one
    `nanotrain run` trains on without --data). Its tokenizer must be the checkpoint's."""
    from nanotrain.data.shards import Dataset
    from nanotrain.data.tokenizer import file_sha256
    from nanotrain.errors import UserError
    from nanotrain.paths import default_dataset_dir

    scale = loaded.config_json.get("scale") or (loaded.config_json.get("nanolab") or {}).get("scale") or "tiny"
    folder = data if data is not None else default_dataset_dir(scale)
    if data is None and not folder.is_dir():
        if not needed:
            return None
        raise UserError(f"no --data given and the default dataset {folder} does not exist; pass --data DIR "
                        "(or --heldout-tokens 0 with seed/file prompts to skip held-out loss)")
    dataset = Dataset(folder)
    if getattr(loaded, "model_type", None) is not None:  # a transformers folder (--hf): ids are matched later
        return dataset
    if file_sha256(dataset.tokenizer_path) != file_sha256(loaded.folder / "tokenizer.json"):
        flag = "--data" if data is not None else "the default dataset"
        raise UserError(f"{flag} {folder}: built with a different tokenizer than {loaded.folder}; its held-out "
                        "tokens would be meaningless to this model (pass the dataset the run was trained on)")
    return dataset


def check_args(args):
    """The sampling configuration of the flags, after checking the numbers; `args.heldout_tokens` becomes its count
    (`parse_heldout_tokens`). `nanotrain session` runs this on a session file's [score] table before it trains
    anything."""
    from nanotrain.errors import UserError

    config = sampling_config(args)
    if args.samples_per_prompt < 1:
        raise UserError(f"--samples-per-prompt {args.samples_per_prompt}: must be at least 1")
    args.heldout_tokens = parse_heldout_tokens(args.heldout_tokens)
    return config


def _run(args) -> int:
    import time

    import torch

    from nanoeval.engine import Engine
    from nanoeval.heldout import evaluate_heldout
    from nanoeval.prompts import resolve_prompts
    from nanoeval.report import build_score_report, compile_check, format_summary, score_samples, write_json
    from nanoeval.rustc import find_rustc
    from nanotrain.dist import resolve_device

    t0 = time.perf_counter()
    config = check_args(args)
    args.device = str(resolve_device(args.device))
    rustc = find_rustc(args.rustc) if args.validator != "tree-sitter" or args.compile_check else None
    loaded, ids = load_model(args, dtype=torch.float32)
    engine = Engine(loaded.model, loaded.tokenizer, inference_mode=args.inference_mode, batch_size=args.batch_size,
                    **ids)
    need_data = args.heldout_tokens != 0 or args.prompts in ("completions", "seed+completions")
    dataset = heldout_data = None
    if need_data:
        dataset = resolve_dataset(args.data, loaded, need_data)
        heldout_data = dataset
        if args.hf is not None and dataset is not None:
            from nanoeval.hf import RetokenizedSplits, same_tokenizer

            if not same_tokenizer(dataset.tokenizer, loaded.tokenizer):
                heldout_data = RetokenizedSplits(dataset, loaded.tokenizer, loaded.eos_id)
    prompts = resolve_prompts(args.prompts, dataset, n=args.n_prompts)
    heldout = None
    if args.heldout_tokens != 0:
        max_tokens, seq_len = heldout_plan(args.heldout_tokens, loaded.config_json)
        heldout = evaluate_heldout(loaded.model, heldout_data, split="val", max_tokens=max_tokens, seq_len=seq_len,
                                   inference_mode=args.inference_mode, progress=True)
    batch = [p for p in prompts for _ in range(args.samples_per_prompt)]
    generation = engine.generate(batch, config, progress=True)
    records = score_samples(generation.samples, args.metrics, args.validator, rustc, progress=True)
    compile_rate = compile_check(records, rustc, progress=True) if args.compile_check else None
    report = build_score_report(
        loaded=loaded, heldout=heldout, dataset_path=None if dataset is None else dataset.folder,
        generation=generation, records=records, prompts_spec=args.prompts,
        samples_per_prompt=args.samples_per_prompt, metrics=args.metrics, compile_rate=compile_rate,
        wall_seconds=time.perf_counter() - t0, validator=args.validator,
        rustc_info=None if rustc is None else rustc.to_dict(),
    )
    out = args.out if args.out is not None else loaded.folder / "score.json"
    write_json(out, report)
    print(format_summary(report))
    print(f"score report: {out}")
    return 0
