"""`nanoeval export`: a nanolab checkpoint as a Hugging Face `transformers` model folder (`nanoeval.hf`)."""

from __future__ import annotations

from pathlib import Path

from nanoeval.load import add_verify_flag


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint as a transformers model folder (AutoModelForCausalLM / AutoTokenizer)",
        description="Write a folder that transformers loads with AutoModelForCausalLM.from_pretrained and "
                    "AutoTokenizer.from_pretrained: a native LlamaForCausalLM when the architecture is plain "
                    "Llama (one residual stream, no Engram, wavefield, LoopLM or QAT), else trust_remote_code "
                    "modelling code that wraps nanolab's model (nanolab must then be installed where it is "
                    "loaded). MTP heads are dropped. Also writes the tokenizer files (<eos>, <pad>) and a model "
                    "card (README.md) with the checkpoint's score report, and checks the exported logits against "
                    "nanolab's before the folder is moved into place.",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint folder (runs/<run>/final) or a run folder")
    p.add_argument("--out", required=True, type=Path, help="the model folder to write (must not exist or be empty)")
    p.add_argument("--force", action="store_true", help="replace --out if it holds files")
    p.add_argument("--inference-mode", choices=("refuse", "bypass"), default="refuse",
                   help="for checkpoints with non-causal (bidirectional wavefield) layers: refuse (default) or "
                        "export a model that bypasses those layers, as generation with bypass does")
    add_verify_flag(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from nanoeval.hf import export

    result = export(args.ckpt, args.out, inference_mode=args.inference_mode, verify=args.verify, force=args.force)
    kind = ("trust_remote_code (needs nanolab installed): " + "; ".join(result.blockers)
            if result.remote_code else "native transformers, no custom code")
    print(f"exported {args.ckpt} -> {result.out} as {result.architecture} ({kind})")
    for note in result.dropped:
        print(f"dropped: {note}")
    for note in result.notes:
        print(f"note: {note}")
    print(f"checked: max |logit difference| to nanolab's model {result.max_abs_diff:.2e} (fp32)")
    return 0
