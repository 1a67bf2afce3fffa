"""Decode throughput at 256 new tokens, batch 1 and batch N: nanoeval's inference engine against a plain loop.

Variants (the same prompt in every row, same shapes, random weights, timed end to end incl. prefill):
- `engine`: `nanoeval.engine.Engine.generate`, greedy, as the commands run it (eager on a CPU; on CUDA the decode
  step compiled with CUDA graphs): prompt encoding, prefill, decode, on-device sampling, incremental
  detokenization and stop checks included;
- `engine-sample`: the same engine drawing with temperature 0.7 and top-k 40 (nanoeval's defaults);
- `engine-compiled` (CPU, with --compile): the engine with its decode step compiled by Inductor's CPU backend;
- `reference-kv`: benchmarks/reference.py's plain GPT in a bare greedy loop with its own KV cache (no sampling,
  no text).

Where the recipe's context is shorter than prompt + new tokens (tiny: 256), the RoPE table/cache length is
extended to fit (recorded as `context`; no weight changes shape). The weights are random, so the `<eos>` embedding
row is zeroed: a greedy row then never picks `<eos>` (some other logit is always positive) and every row decodes
all its tokens. The tokenizer only matters through its encode/decode cost; by default one is trained in a
fraction of a second on nanotrain's own source text (or pass --tokenizer). Results: a table and JSON under
benchmarks/results/; ratio keys `B<batch>:engine/reference-kv` (tokens per second, higher is better for the
engine).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

MAX_CONTEXT = 4096
PROMPT = "use std::collections::HashMap;\n\n/// Count how often each word occurs.\npub fn word_counts(text: &str) -> "


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_decode.py",
        description="Time decoding (256 new tokens) through nanoeval's inference engine, as the commands run it, "
                    "against a plain reference decode loop; print a table and write JSON to benchmarks/results/.",
        epilog="CPU default: tiny baseline-v1, batch 1 and 8, ~1 minute. GPU: see benchmarks/gpu_check.sh.")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default cpu)")
    p.add_argument("--recipe", default="baseline-v1", help="recipe whose shapes are timed (default baseline-v1)")
    p.add_argument("--scale", choices=["tiny", "small", "full"], default=None,
                   help="recipe scale (default: tiny on cpu, full on cuda)")
    p.add_argument("--batch-sizes", default=None, metavar="LIST",
                   help="comma list of batch sizes (default 1,8 on cpu, 1,64 on cuda)")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens generated per row (default 256)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default 3 cpu, 5 cuda)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed runs per variant first (default 0 cpu: a run is 256 steps; 1 cuda)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                   help="weight dtype (default fp32 on cpu, bf16 on cuda)")
    p.add_argument("--no-sample", action="store_true", help="skip the engine-sample variant")
    p.add_argument("--compile", action="store_true",
                   help="on CPU, also time the engine with its decode step compiled (Inductor CPU; slow to build)")
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json to use (default: trained here)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ModelConfig field, e.g. --set dim=64 (repeatable; for micro runs)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default benchmarks/results/bench_decode_<device>.json)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own choice; 1 is steadier on a busy machine)")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights")
    return p


def batch_list(spec: str) -> list[int]:
    """--batch-sizes as integers, each at least 1 (UserError otherwise)."""
    from nanotrain.errors import UserError

    try:
        batches = [int(b) for b in spec.split(",")]
    except ValueError:
        raise UserError(f"--batch-sizes {spec}: expected a comma list of integers") from None
    if min(batches) < 1:
        raise UserError(f"--batch-sizes {spec}: must be at least 1")
    return batches


def check_flags(args) -> None:
    """The checks of flags that need neither torch nor a device. main runs them first;
    tests/unit/test_gpu_check.py runs them on every step of the GPU set, on the CPU."""
    if args.batch_sizes:
        batch_list(args.batch_sizes)


def build_tokenizer(path: Path | None, vocab_size: int):
    """The given tokenizer, or a byte-level BPE trained on nanotrain's and nanoeval's Python sources."""
    from nanotrain.data.tokenizer import load_tokenizer, train_tokenizer

    if path is not None:
        return load_tokenizer(path)
    import nanoeval
    import nanotrain

    files = sorted(p for pkg in (nanotrain, nanoeval) for p in Path(pkg.__file__).parent.rglob("*.py"))
    return train_tokenizer((f.read_text(errors="replace") for f in files), vocab_size)


def our_model(args, model_cfg, device, dtype):
    import torch

    from nanotrain.data.tokenizer import EOS_ID
    from nanotrain.model.gpt import GPT

    torch.manual_seed(args.seed)
    model = GPT(model_cfg).to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        model.tok_embed.weight[EOS_ID].zero_()
    return model


SAMPLE_TEMPERATURE, SAMPLE_TOP_K = 0.7, 40  # nanoeval's sampling defaults


def engine_variant(name: str, model, tokenizer, batch: int, new_tokens: int, *, sample: bool = False,
                   compile: bool | None = None) -> common.Variant:
    """The product's decoder: `Engine.generate` on `batch` copies of the prompt (greedy, or sampled with
    nanoeval's defaults)."""
    def build():
        from nanoeval.engine import Engine, SamplingConfig

        config = SamplingConfig(max_new_tokens=new_tokens, temperature=SAMPLE_TEMPERATURE if sample else 0.0,
                                top_k=SAMPLE_TOP_K if sample else 0)
        engine = Engine(model, tokenizer, inference_mode="refuse" if model.is_causal else "bypass",
                        compile=compile, batch_size=batch)
        if engine.compile:
            engine.generate([PROMPT] * batch, config)  # compile (and record the graph) outside the timing

        def run():
            gen = engine.generate([PROMPT] * batch, config)
            if not sample and gen.n_tokens != batch * new_tokens:
                raise RuntimeError(f"{name}: generated {gen.n_tokens} tokens, expected {batch * new_tokens}")
            return gen
        return run, {"batch": batch, "inference_mode": engine.mode, "compiled": engine.compiled,
                     "cuda_graphs": engine.cuda_graphs, "fallback_reason": engine.fallback_reason,
                     "sampling": {"temperature": SAMPLE_TEMPERATURE, "top_k": SAMPLE_TOP_K} if sample else None}
    return common.Variant(name, build)


def reference_variant(model_cfg, prompt_ids: list[int], batch: int, new_tokens: int, device, dtype, seed: int
                      ) -> common.Variant:
    def build():
        import reference
        import torch

        cfg = reference.RefConfig.from_model_config(model_cfg)
        cfg.mtp_heads = 0
        torch.manual_seed(seed)
        model = reference.RefGPT(cfg).to(device=device, dtype=dtype).eval()
        prompt = torch.tensor([prompt_ids] * batch, device=device)

        def run():
            return reference.generate_greedy(model, prompt, new_tokens)
        return run, {"batch": batch}
    return common.Variant("reference-kv", build)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from nanotrain.errors import UserError
    from nanotrain.recipes import get_recipe

    check_flags(args)
    device = common.resolve_device(args.device)
    common.set_threads(args.threads)
    cuda = device.type == "cuda"
    args.scale = args.scale or ("full" if cuda else "tiny")
    args.repeats = args.repeats if args.repeats is not None else (5 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if cuda else 0)
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    batches = batch_list(args.batch_sizes or ("1,64" if cuda else "1,8"))
    for flag, value, low in (("--new-tokens", args.new_tokens, 1), ("--repeats", args.repeats, 1),
                             ("--warmup", args.warmup, 0)):
        if value < low:
            raise UserError(f"{flag} {value}: must be at least {low}")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model_cfg, _ = get_recipe(args.recipe).build(args.scale)
    common.parse_overrides(args.set, model_cfg)
    tokenizer = build_tokenizer(args.tokenizer, model_cfg.vocab_size)
    model_cfg.vocab_size = tokenizer.get_vocab_size()
    prompt_ids = tokenizer.encode(PROMPT, add_special_tokens=False).ids
    needed = len(prompt_ids) + args.new_tokens
    if needed > MAX_CONTEXT:
        raise UserError(f"--new-tokens {args.new_tokens}: prompt ({len(prompt_ids)}) + new tokens exceed the "
                        f"largest context this benchmark builds ({MAX_CONTEXT})")
    recipe_context = model_cfg.max_seq_len
    model_cfg.max_seq_len = max(recipe_context, -(-(needed + 1) // 64) * 64)
    model = our_model(args, model_cfg, device, dtype)
    settings = {"recipe": args.recipe, "scale": args.scale, "batch_sizes": batches, "new_tokens": args.new_tokens,
                "prompt_tokens": len(prompt_ids), "repeats": args.repeats, "warmup": args.warmup,
                "dtype": args.dtype, "vocab_size": model_cfg.vocab_size, "recipe_context": recipe_context,
                "context": model_cfg.max_seq_len, "overrides": args.set, "seed": args.seed,
                "decoding": "greedy (engine-sample: temperature 0.7, top-k 40)"}
    result = common.run_header(device, settings, "nanolab.bench_decode/1")
    rows: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    cpu_ratios: dict[str, float] = {}
    for batch in batches:
        variants = [engine_variant("engine", model, tokenizer, batch, args.new_tokens)]
        if not args.no_sample:
            variants.append(engine_variant("engine-sample", model, tokenizer, batch, args.new_tokens, sample=True))
        if args.compile and not cuda:
            variants.append(engine_variant("engine-compiled", model, tokenizer, batch, args.new_tokens,
                                           compile=True))
        variants.append(reference_variant(model_cfg, prompt_ids, batch, args.new_tokens, device, dtype,
                                          args.seed))
        measured = common.measure(variants, device, args.warmup, args.repeats, f"decode B={batch}")
        by_name: dict[str, dict[str, float]] = {}
        for m in measured:
            tokens = batch * args.new_tokens
            tok_s = tokens / (m.median_ms / 1e3)
            cpu = m.median_cpu_ms
            by_name[m.name] = {"tok_per_s": tok_s, "tok_per_cpu_s": None if cpu is None else tokens / (cpu / 1e3)}
            rows.append({"name": m.name, **m.info, "run_ms": round(m.median_ms, 2),
                         "run_ms_all": [round(t, 2) for t in m.step_ms], "tok_per_s": round(tok_s, 1),
                         "cpu_run_ms": None if cpu is None else round(cpu, 2),
                         "peak_mem_gib": common.gib(m.peak_mem_bytes)})
        for key, out_ratios in (("tok_per_s", ratios), ("tok_per_cpu_s", cpu_ratios)):
            ref = by_name["reference-kv"][key]
            if ref is None:
                continue
            for other, value in by_name.items():
                if other != "reference-kv":
                    out_ratios[f"B{batch}:{other}/reference-kv"] = round(value[key] / ref, 3)
    result["results"] = rows
    result["ratios"] = ratios
    if not cuda:
        result["ratios_cpu_time"] = cpu_ratios
        result["process_peak_rss_gib"] = round(common.process_peak_rss_gib(), 3)
    out = args.out or common.RESULTS_DIR / f"bench_decode_{device.type}.json"
    common.write_json(out, result)
    dev = result["device"]
    print(f"device: {dev['name']} ({dev['type']}), torch {result['torch']}, {args.recipe} {args.scale}, "
          f"{args.dtype} weights, greedy (engine-sample: T=0.7, top-k 40), {len(prompt_ids)}-token prompt + "
          f"{args.new_tokens} new, median of {args.repeats}")
    print(common.format_table(rows, [("name", "variant"), ("batch", "batch"), ("run_ms", "ms/run"),
                                     ("tok_per_s", "tok/s"), ("cpu_run_ms", "CPU-time ms"),
                                     ("peak_mem_gib", "peak GiB")]))
    for k, v in ratios.items():
        extra = f", by CPU time: {cpu_ratios[k]}" if k in cpu_ratios else ""
        print(f"ratio {k} (tok/s): {v}{extra}")
    print(f"load average (1 min) at start: {result['load_avg_1m_start']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(common.run_cli("bench_decode.py", main))
