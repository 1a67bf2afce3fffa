"""`nanoeval generate`: sample a completion from a checkpoint, streamed to the terminal as tokens arrive."""

from __future__ import annotations

import argparse
import sys

from nanoeval.load import add_verify_flag
from nanotrain.cli import add_device_arg

# `--inference-mode` of every nanoeval command (the engine's `INFERENCE_MODES`; not imported here, so that
# building the parser does not import torch).
INFERENCE_MODES = ("refuse", "bypass")
INFERENCE_MODE_HELP = ("what to do with non-causal (bidirectional wavefield) layers: refuse (default) runs every "
                       "layer and refuses a model that has them; bypass skips them, as the original's generator did")


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """The sampling flags shared by `generate` and `score`."""
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help=f"tokens to generate per sample (default {max_new_tokens})")
    g.add_argument("--temperature", type=float, default=0.7, help="softmax temperature; 0 = greedy (default 0.7)")
    g.add_argument("--top-k", type=int, default=40, help="keep exactly the k most likely tokens; 0 = off (default 40)")
    g.add_argument("--top-p", type=float, default=1.0,
                   help="keep the smallest set of tokens with probability >= p; 1 = off (default 1.0)")
    g.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="penalise tokens already present (CTRL style); 1 = off (default 1.0)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop a sample when its completion contains TEXT (repeatable)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed: same seed, same text (default 0)")
    g.add_argument("--inference-mode", choices=INFERENCE_MODES, default="refuse", help=INFERENCE_MODE_HELP)
    add_device_arg(g, default="cpu")
    add_verify_flag(p)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model to run: a nanolab checkpoint (--ckpt) or a local transformers folder (--hf), one of the two."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ckpt", help="checkpoint folder (runs/<run>/final) or a run folder")
    g.add_argument("--hf", metavar="HFDIR",
                   help="a local Hugging Face transformers causal LM folder (e.g. one `nanoeval export` wrote)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="with --hf: allow the folder's own modelling code (nanolab exports need none of theirs)")


def load_model(args, dtype=None):
    """(loaded model, engine token ids) for --ckpt or --hf: a `nanoeval.load.LoadedModel` and {}, or a
    `nanoeval.hf.LoadedHF` and its tokenizer's eos/pad ids."""
    import torch

    if args.hf is not None:
        from nanoeval.hf import load_hf

        loaded = load_hf(args.hf, device=args.device, dtype=dtype or torch.float32,
                         trust_remote_code=args.trust_remote_code)
        return loaded, {"eos_id": loaded.eos_id, "pad_id": loaded.pad_id}
    from nanoeval.load import load

    return load(args.ckpt, device=args.device, dtype=dtype, verify=args.verify), {}


def sampling_config(args):
    """The sampling configuration of the flags (`SamplingConfig` checks the numbers), stop strings checked as
    UTF-8 text."""
    from nanoeval.engine import SamplingConfig
    from nanoeval.inputs import check_text

    for s in args.stop:
        check_text(s, "--stop")
    return SamplingConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, stop=tuple(args.stop), seed=args.seed,
    )


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate a completion for one prompt",
        description="Generate a completion for --prompt from a checkpoint (or a transformers folder, --hf) with "
                    "nanoeval's inference engine. The prompt is echoed, then the completion streams in as it is "
                    "sampled. Prompt escapes like \\n are NOT interpreted: use real newlines (e.g. $'fn main() {\\n').",
    )
    add_model_args(p)
    p.add_argument("--prompt", required=True, help="text to continue ('' starts from <eos>, a new file)")
    add_sampling_args(p, max_new_tokens=128)
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                   help="print tokens as they arrive (default) or only the finished completion")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from nanoeval.engine import Engine
    from nanoeval.inputs import check_text
    from nanotrain.dist import resolve_device

    check_text(args.prompt, "--prompt")
    config = sampling_config(args)
    args.device = str(resolve_device(args.device))
    loaded, ids = load_model(args)
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    shown = [0]
    # Hold back what could still turn out to be the start of a stop string, or half of a multi-byte character.
    hold = max((len(s) for s in config.stop), default=1) - 1

    def on_token(_index: int, _token: int, text: str) -> None:
        ready = min(len(text.rstrip("\ufffd")), len(text) - hold)
        if ready > shown[0]:
            out.write(text[shown[0]:ready])
            out.flush()
            shown[0] = ready

    engine = Engine(loaded.model, loaded.tokenizer, inference_mode=args.inference_mode, **ids)
    result = engine.generate([args.prompt], config, on_token=on_token if args.stream else None)
    sample = result.samples[0]
    out.write(sample.text[shown[0]:] + "\n")
    note = " (prompt cut from the left to fit the context)" if sample.prompt_truncated else ""
    print(f"[{sample.n_tokens} tokens, finish={sample.finish}, {result.tok_per_s:.1f} tok/s, "
          f"mode={result.inference_mode}, {'compiled' if result.compiled else 'eager'}]{note}",
          file=sys.stderr)
    return 0
