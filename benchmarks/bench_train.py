"""Training-step throughput: nanotrain's model + optimisers against the plain reference, in one process.

Variants, all at the same shapes, batch and dtype, on the same random batch:
- `nanotrain`: our GPT for the recipe, objective, backward, global-norm clip, Muon+Lion step, post-step clamps,
  exactly the Trainer's per-step work (`nanotrain.train` step function when the trainer exposes one).
- `reference-adamw`: benchmarks/reference.py's plain GPT with AdamW (fused on CUDA).
- `reference-muon`: the same plain GPT with batched Newton-Schulz Muon + AdamW (the same optimiser family as ours).
`--recipes` instead times our step for several recipes and reports each one's ratio to the baseline recipe.

Results: a table on stdout and JSON (device, versions, settings, tok/s, step ms, MFU, peak memory, ratios) under
benchmarks/results/. MFU uses FLOPs/token = 6·N_matmul + 12·L·H·hd·T against the GPU's dense bf16 peak; on CPU it
is null.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_train.py",
        description="Time nanotrain's training step against a plain reference GPT (AdamW and batched Muon) at the "
                    "same shapes, in the same process; print a table and write JSON to benchmarks/results/.",
        epilog="CPU default: tiny scale, the recipe's tiny batch; a few minutes at most. "
               "GPU: see benchmarks/gpu_check.sh.")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default cpu)")
    p.add_argument("--recipe", default="baseline-v1", help="recipe whose shapes are timed (default baseline-v1)")
    p.add_argument("--scale", choices=["tiny", "small", "full"], default=None,
                   help="recipe scale (default: tiny on cpu, full on cuda)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: the recipe's)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the recipe's)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 8 cpu, 20 cuda)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 cpu, 5 cuda)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile our forward and loss (as the Trainer's compile option does) and the "
                        "reference's forward+loss; compile time is untimed")
    p.add_argument("--compile-mode", default=None,
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="torch.compile mode (implies --compile); reduce-overhead captures CUDA graphs, which is "
                        "what small batches need on a GPU")
    p.add_argument("--reference-compile-mode", default=None,
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="compile mode of the reference variants when it should differ from --compile-mode, e.g. "
                        "ours with CUDA graphs (nanotrain run's default at small batch) against the reference "
                        "compiled without them (the yardstick of the targets)")
    p.add_argument("--compile-regional", action="store_true",
                   help="compile each of our transformer blocks on its own instead of the whole model (implies "
                        "--compile; with --compile-mode, that mode): one graph per block kind, so far less compile "
                        "time; the reference is still compiled whole")
    p.add_argument("--fwd-bwd-only", action="store_true",
                   help="time forward + loss + backward only (no clip, no optimiser step): the model's own "
                        "throughput, without the optimiser update")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="autocast dtype (default bf16)")
    p.add_argument("--recipes", nargs="?", const="all", default=None, metavar="LIST",
                   help="instead of the reference comparison, time our step for each recipe in the comma list "
                        "(bare --recipes: every recipe that trains from scratch, baseline first) and report each "
                        "one's tok/s ratio to the first")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ModelConfig field, e.g. --set dim=64 (repeatable; for micro runs)")
    p.add_argument("--mhc-forms", default="auto", metavar="LIST",
                   help="comma list of mHC forms for our step (auto, plain, per-row; see nanotrain/model/mhc.py): "
                        "one nanotrain variant per form, e.g. auto,plain to compare them in one run "
                        "(default auto; with --recipes a single form)")
    p.add_argument("--only", default=None, metavar="LIST",
                   help="comma list of variants to run (nanotrain or nanotrain[FORM], reference-adamw, reference-muon)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default benchmarks/results/bench_train_<device>[_recipes].json)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own choice; 1 is steadier on a busy machine)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and the batch")
    return p


def recipe_list(spec: str) -> list[str]:
    """The --recipes list; "all" = every recipe that does not resume another (engram-v2 has engram-v1's shapes)."""
    from nanotrain.recipes import RECIPES, get_recipe

    if spec == "all":
        names = [n for n, r in RECIPES.items() if r.resume_from is None]
        return sorted(names, key=lambda n: n != "baseline")
    names = [n for n in spec.split(",") if n]
    for n in names:
        get_recipe(n)
    return names


def form_list(spec: str) -> list[str]:
    """The --mhc-forms list, as named (main checks the names; check_flags reads them for --only)."""
    return [f for f in spec.split(",") if f]


def our_name(form: str) -> str:
    """The variant name of our step in mHC form `form`: nanotrain for auto, else nanotrain[FORM]."""
    return "nanotrain" if form == "auto" else f"nanotrain[{form}]"


def check_flags(args) -> None:
    """The checks of flags that need neither torch nor a device (UserError names the flag). main runs them first;
    tests/unit/test_gpu_check.py runs them on every step of the GPU set, on the CPU."""
    from nanotrain.errors import UserError

    if args.recipes:
        try:
            recipe_list(args.recipes)
        except UserError as e:
            raise UserError(f"--recipes {args.recipes}: {e}") from None
    if args.only:
        known = {"reference-adamw", "reference-muon", *(our_name(f) for f in form_list(args.mhc_forms))}
        unknown = set(args.only.split(",")) - known
        if unknown:
            raise UserError(f"--only {args.only}: unknown variant(s) {', '.join(sorted(unknown))}")


def build_model_cfg(recipe: str, scale: str, overrides: list[str]):
    from nanotrain.recipes import get_recipe

    model_cfg, train_cfg = get_recipe(recipe).build(scale)
    common.parse_overrides(overrides, model_cfg)
    return model_cfg, train_cfg


def random_batch(vocab: int, batch_size: int, seq_len: int, device, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, vocab, (batch_size, seq_len + 1), generator=g)
    return tokens[:, :-1].contiguous().to(device), tokens[:, 1:].contiguous().to(device)


def model_info(model, cfg, seq_len: int) -> dict[str, Any]:
    from nanotrain.mfu import flops_per_token, matmul_params

    n_matmul = matmul_params(model)
    head_dim = cfg.dim // cfg.n_heads
    return {"params": sum(p.numel() for p in model.parameters()), "matmul_params": n_matmul,
            "flops_per_token": flops_per_token(n_matmul, cfg.n_layers, cfg.n_heads, head_dim, seq_len)}


def our_variant(recipe: str, scale: str, overrides: list[str], args, device, name: str,
                mhc_form: str = "auto") -> common.Variant:
    """Our model and optimisers, stepping exactly as the Trainer does (mHC in `mhc_form`)."""
    def build():
        import torch

        from nanotrain.model.gpt import GPT
        from nanotrain.model.mhc import set_mhc_form
        from nanotrain.optim.groups import build_optimizers

        model_cfg, train_cfg = build_model_cfg(recipe, scale, overrides)
        torch.manual_seed(args.seed)
        model = GPT(model_cfg).to(device)
        set_mhc_form(model, mhc_form)
        model.train()
        opts = build_optimizers(model, train_cfg)
        fwd = compile_regions(model, args) if args.compile_regional else compile_fn(model, args)
        x, y = random_batch(model_cfg.vocab_size, args.batch_size, args.seq_len, device, args.seed)
        from nanotrain.train import objective

        step = make_our_step(fwd, compile_fn(objective, args), model, opts, train_cfg, x, y,
                             common.autocast_dtype(args.dtype), args.fwd_bwd_only,
                             cuda_graphs=args.compile_mode == "reduce-overhead")
        info = {"recipe": recipe, "scale": scale, "mhc_form": mhc_form, **model_info(model, model_cfg, args.seq_len)}
        return step, info
    return common.Variant(name, build)


def torch_mode(mode: str | None) -> str | None:
    """A --compile-mode value as torch.compile's `mode` (None for the default)."""
    return None if mode in (None, "default") else mode


def compile_fn(fn, args, mode: str | None = None):
    """`fn` compiled as --compile asks, in `mode` (default: --compile-mode), else `fn` itself."""
    import torch

    if not args.compile:
        return fn
    return torch.compile(fn, mode=torch_mode(mode or args.compile_mode))


def compile_regions(model, args):
    """Regional compilation: each transformer block compiled on its own (`nn.Module.compile`), the rest eager. The
    blocks share their code, so Dynamo and Inductor build one graph (per block kind) instead of the whole unrolled
    model: on a 2-core Intel Xeon VM (baseline-v1 at tiny widths, 20 layers, fresh compile caches) it built in
    52-61 s against 163-165 s, at 9-15% more step time. Returns the model, to be called as is."""
    from nanotrain.errors import UserError

    if not hasattr(model, "blocks"):
        raise UserError("--compile-regional: this model has no `blocks` list (LoopLM recipes)")
    for block in model.blocks:
        block.compile(mode=torch_mode(args.compile_mode))
    return model


def make_our_step(fwd, objective, model, opts, train_cfg, x, y, amp, fwd_bwd_only: bool = False,
                  cuda_graphs: bool = False) -> Callable[[], Any]:
    """One update as `nanotrain.train.Trainer._train_step` does it, from the same public parts.

    LR scale, autocast forward, `nanotrain.train.objective`, backward, then `nanotrain.train.apply_update` (the
    Trainer's own: clip over all params, the NaN guard's finite flag kept on the device, the gated optimiser
    step, post-step clamps, metric accumulation), zero grads. Nothing is read back to the host, as in the
    Trainer between its log points. Batches come ready on the device (the loader is not timed).
    `fwd` and `objective` are the model and `nanotrain.train.objective`, each compiled with --compile as the
    Trainer does. `fwd_bwd_only`: forward, objective, backward, zero grads; nothing else. `cuda_graphs`: they
    were compiled with mode reduce-overhead, so each step starts with `cudagraph_mark_step_begin()`, as the
    Trainer's `--cuda-graphs` does.
    """
    import torch

    from nanotrain.train import apply_update

    params = opts.parameters()
    acc = torch.zeros(6, device=x.device)

    def step():
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        opts.set_lr_scale(1.0)
        with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = fwd(x)
        loss, parts = objective(out, y, train_cfg.label_smoothing, model.cfg.mtp_weight)
        loss.backward()
        if not fwd_bwd_only:
            apply_update(model, opts, params, loss, parts, train_cfg.grad_clip, acc)
        opts.zero_grad()
        return loss.detach()
    return step


def reference_variant(recipe: str, scale: str, overrides: list[str], args, device, optimiser: str) -> common.Variant:
    """The plain reference GPT at our recipe's shapes, with AdamW or batched Muon + AdamW."""
    def build():
        import reference
        import torch

        model_cfg, train_cfg = build_model_cfg(recipe, scale, overrides)
        cfg = reference.RefConfig.from_model_config(model_cfg, label_smoothing=train_cfg.label_smoothing)
        torch.manual_seed(args.seed)
        model = reference.RefGPT(cfg).to(device)
        opt = reference.adamw(model.parameters()) if optimiser == "adamw" else reference.BatchedMuon(model)
        loss_fn = compile_fn(model.loss, args, args.reference_compile_mode)
        x, y = random_batch(cfg.vocab_size, args.batch_size, args.seq_len, device, args.seed)
        amp = common.autocast_dtype(args.dtype)

        def step():
            if args.fwd_bwd_only:
                return reference.forward_backward(loss_fn, model, x, y, amp)
            return reference.train_step(loss_fn, model, opt, x, y, amp, train_cfg.grad_clip)
        info = {"recipe": recipe, "scale": scale, "optimiser": optimiser, **model_info(model, cfg, args.seq_len)}
        return step, info
    return common.Variant(f"reference-{optimiser}", build)


def summarise(measurements: list[common.Measurement], tokens_per_step: int, peak: float | None) -> list[dict]:
    from nanotrain.mfu import mfu

    rows = []
    for m in measurements:
        ms = m.median_ms
        tok_s = tokens_per_step / (ms / 1e3)
        cpu = m.median_cpu_ms
        rows.append({"name": m.name, **m.info, "step_ms": round(ms, 3), "step_ms_all": [round(t, 3) for t in m.step_ms],
                     "tok_per_s": round(tok_s, 1), "mfu": mfu(tok_s, m.info["flops_per_token"], peak),
                     "peak_mem_gib": common.gib(m.peak_mem_bytes),
                     "cpu_step_ms": None if cpu is None else round(cpu, 3),
                     "tok_per_cpu_s": None if cpu is None else round(tokens_per_step / (cpu / 1e3), 1)})
    return rows


def ratios(rows: list[dict], key: str, first_is_denominator: bool) -> dict[str, float]:
    """"A/B" = throughput of A over B: each of our variants over each reference, or (recipes mode) each recipe
    over the first."""
    if first_is_denominator:
        pairs = [(r, rows[0]) for r in rows[1:]]
    else:
        ours = [r for r in rows if r["name"].startswith("nanotrain")]
        pairs = [(a, b) for a in ours for b in rows if b not in ours]
    return {f"{a['name']}/{b['name']}": round(a[key] / b[key], 3) for a, b in pairs}


def resolve_settings(args) -> None:
    """Fill device-dependent defaults and check the numbers (UserError names the flag)."""
    from nanotrain.errors import UserError

    cuda = args.device == "cuda"
    args.scale = args.scale or ("full" if cuda else "tiny")
    args.compile = (args.compile or args.compile_mode is not None or args.reference_compile_mode is not None
                    or args.compile_regional)
    args.steps = args.steps if args.steps is not None else (20 if cuda else 8)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    first = args.recipes[0] if args.recipes else args.recipe
    _, train_cfg = build_model_cfg(first, args.scale, args.set)
    args.batch_size = args.batch_size or train_cfg.batch_size
    args.seq_len = args.seq_len or train_cfg.seq_len
    for flag, value, low in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0),
                             ("--batch-size", args.batch_size, 1), ("--seq-len", args.seq_len, 2)):
        if value < low:
            raise UserError(f"{flag} {value}: must be at least {low}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from nanotrain.errors import UserError

    check_flags(args)
    device = common.resolve_device(args.device)
    common.set_threads(args.threads)
    malloc_tuned = common.training_process_setup(device)
    if args.recipes:
        args.recipes = recipe_list(args.recipes)
    resolve_settings(args)
    model_cfg, _ = build_model_cfg(args.recipes[0] if args.recipes else args.recipe, args.scale, args.set)
    if args.seq_len > model_cfg.max_seq_len:
        raise UserError(f"--seq-len {args.seq_len}: longer than the model's context ({model_cfg.max_seq_len})")
    from nanotrain.model.mhc import MHC_FORMS

    forms = form_list(args.mhc_forms)
    bad = [f for f in forms if f not in MHC_FORMS]
    if bad or not forms or len(set(forms)) != len(forms):
        raise UserError(f"--mhc-forms {args.mhc_forms}: expected distinct forms from {', '.join(MHC_FORMS)}")
    torch.manual_seed(args.seed)
    if args.recipes:
        if len(forms) != 1:
            raise UserError(f"--mhc-forms {args.mhc_forms}: --recipes takes a single form")
        variants = [our_variant(r, args.scale, args.set, args, device, r, forms[0]) for r in args.recipes]
    else:
        variants = [*(our_variant(args.recipe, args.scale, args.set, args, device, our_name(f), f) for f in forms),
                    reference_variant(args.recipe, args.scale, args.set, args, device, "adamw"),
                    reference_variant(args.recipe, args.scale, args.set, args, device, "muon")]
        if args.only:
            wanted = set(args.only.split(","))
            variants = [v for v in variants if v.name in wanted]
    settings = {k: getattr(args, k) for k in ("recipe", "scale", "batch_size", "seq_len", "steps", "warmup",
                                              "compile", "compile_mode", "reference_compile_mode", "compile_regional",
                                              "fwd_bwd_only", "dtype", "seed")}
    settings["recipes"] = args.recipes
    settings["mhc_forms"] = forms
    settings["overrides"] = args.set
    settings["malloc_tuned"] = malloc_tuned
    result = common.run_header(device, settings, "nanolab.bench_train/1")
    peak = result["device"]["peak_bf16_flops"]
    tokens = args.batch_size * args.seq_len
    rows = summarise(common.measure(variants, device, args.warmup, args.steps, "train"), tokens, peak)
    result["results"] = rows
    result["ratios"] = ratios(rows, "tok_per_s", args.recipes is not None)
    if device.type == "cpu":
        result["ratios_cpu_time"] = ratios(rows, "tok_per_cpu_s", args.recipes is not None)
    if device.type == "cpu":
        result["process_peak_rss_gib"] = round(common.process_peak_rss_gib(), 3)
    suffix = "_recipes" if args.recipes else ""
    out = args.out or common.RESULTS_DIR / f"bench_train_{device.type}{suffix}.json"
    common.write_json(out, result)
    dev = result["device"]
    print(f"device: {dev['name']} ({dev['type']}{', %s threads' % dev['threads'] if 'threads' in dev else ''}), "
          f"torch {result['torch']}, {args.scale} scale, B={args.batch_size} T={args.seq_len}, {args.dtype}"
          f"{', compiled' if args.compile else ''}{' (%s)' % args.compile_mode if args.compile_mode else ''}"
          f"{', reference (%s)' % args.reference_compile_mode if args.reference_compile_mode else ''}"
          f"{', ours compiled per block' if args.compile_regional else ''}"
          f"{', forward+backward only' if args.fwd_bwd_only else ''}, median of {args.steps} steps")
    print(common.format_table(rows, [("name", "variant"), ("params", "params"), ("step_ms", "step ms"),
                                     ("tok_per_s", "tok/s"), ("cpu_step_ms", "CPU-time ms"), ("mfu", "MFU"),
                                     ("peak_mem_gib", "peak GiB")]))
    for k, v in result["ratios"].items():
        extra = f", by CPU time: {result['ratios_cpu_time'][k]}" if "ratios_cpu_time" in result else ""
        print(f"ratio {k} (tok/s): {v}{extra}")
    print(f"load average (1 min) at start: {result['load_avg_1m_start']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(common.run_cli("bench_train.py", main))
