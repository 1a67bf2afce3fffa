"""The benchmark scripts run at micro size and write valid JSON; the reference model and harness are correct.

Micro runs override the recipe's shapes (`--set dim=32 ...`) so each script finishes in a few seconds on CPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
MICRO = ["--set", "dim=32", "--set", "n_layers=2", "--set", "n_heads=4", "--set", "n_kv_heads=2",
         "--set", "max_seq_len=64"]


def load(name: str):
    """Import a benchmark script as a module (they live outside the packages)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"nanolab_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    return load("reference")


@pytest.fixture(scope="module")
def common():
    return load("common")


def tiny_ref_cfg(reference, **kw):
    base = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=48)
    return reference.RefConfig(**{**base, **kw})


def test_reference_kv_decode_matches_recompute(reference):
    torch.manual_seed(0)
    model = reference.RefGPT(tiny_ref_cfg(reference)).eval()
    prompt = torch.randint(0, 97, (2, 5))
    fast = reference.generate_greedy(model, prompt, 12)
    seq = prompt
    with torch.no_grad():
        for _ in range(12):
            logits, _ = model(seq)
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(fast, seq[:, 5:])


def test_reference_chunked_prefill_matches_full_forward(reference):
    """A multi-token chunk at start_pos > 0 sees exactly the keys a full causal forward would."""
    torch.manual_seed(1)
    model = reference.RefGPT(tiny_ref_cfg(reference)).eval()
    idx = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        full, _ = model(idx)
        model.setup_cache(1, 20)
        first, _ = model(idx[:, :8], start_pos=0)
        second, _ = model(idx[:, 8:], start_pos=8)
    torch.testing.assert_close(torch.cat([first, second], 1), full, rtol=1e-5, atol=1e-5)


def test_batched_newton_schulz_matches_per_matrix_and_orthogonalises(reference):
    torch.manual_seed(2)
    stack = torch.randn(3, 16, 40)
    batched = reference.newton_schulz(stack)
    for i in range(3):
        torch.testing.assert_close(batched[i], reference.newton_schulz(stack[i:i + 1])[0], rtol=1e-5, atol=1e-5)
    # The quintic drives singular values into roughly [0.7, 1.2] (it is not an exact polar factor).
    sv = torch.linalg.svdvals(batched)
    assert sv.min() > 0.5 and sv.max() < 1.3
    tall = reference.newton_schulz(stack.mT)
    torch.testing.assert_close(tall, batched.mT, rtol=1e-5, atol=1e-5)


def test_reference_muon_trains_and_groups_by_shape(reference):
    torch.manual_seed(3)
    model = reference.RefGPT(tiny_ref_cfg(reference, mtp_heads=2))
    opt = reference.BatchedMuon(model)
    shapes = sorted(tuple(g[0].shape) for g in opt.groups)
    assert shapes == sorted([(32, 32), (16, 32), (64, 32), (32, 64)])  # wq+wo, wk+wv, gate+up, down
    x = torch.randint(0, 97, (4, 24))
    losses = [reference.train_step(model.loss, model, opt, x, x.roll(-1, 1), None).item() for _ in range(6)]
    assert losses[-1] < losses[0]


def test_reference_loss_includes_weighted_mtp(reference):
    torch.manual_seed(4)
    cfg = tiny_ref_cfg(reference, mtp_heads=2, mtp_weight=0.2)
    model = reference.RefGPT(cfg)
    x, y = torch.randint(0, 97, (2, 10)), torch.randint(0, 97, (2, 10))
    logits, mtp = model(x)
    expected = torch.nn.functional.cross_entropy(logits.view(-1, 97), y.view(-1), label_smoothing=0.1)
    for i, head in enumerate(mtp):
        expected = expected + 0.2 * 0.5 ** i * torch.nn.functional.cross_entropy(
            head[:, :-(i + 1)].reshape(-1, 97), y[:, i + 1:].reshape(-1))
    torch.testing.assert_close(model.loss(x, y), expected)


def test_peak_table_and_flops(common):
    assert common.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert common.peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert common.peak_bf16_flops("NVIDIA H200") == 989e12
    assert common.peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert common.peak_bf16_flops("NVIDIA GeForce RTX 4090") == 165.2e12
    assert common.peak_bf16_flops("Intel(R) Xeon(R) Processor") is None
    assert common.flops_per_token(1000, 2, 4, 8, 16) == 6 * 1000 + 12 * 2 * 4 * 8 * 16
    assert common.mfu(100.0, 10, None) is None
    assert math.isclose(common.mfu(100.0, 10, 1000.0), 1.0)


def test_matmul_params_counts_tied_head_once_and_skips_tables(common):
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.proj = torch.nn.Linear(4, 4, bias=True)
            self.engram = torch.nn.Module()
            self.engram.tables = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(7, 3))])

    assert common.matmul_params(Toy()) == 10 * 4 + 4 * 4


def test_write_json_is_atomic_and_leaves_no_temp(common, tmp_path):
    out = common.write_json(tmp_path / "sub" / "r.json", {"a": 1})
    assert json.loads(out.read_text()) == {"a": 1}
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]
    with pytest.raises(TypeError):
        common.write_json(out, {"bad": object()})
    assert json.loads(out.read_text()) == {"a": 1}
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]


def test_measure_interleaves_on_cpu(common):
    calls = []
    variants = [common.Variant(n, lambda n=n: (lambda: calls.append(n), {"n": n})) for n in "abc"]
    ms = common.measure(variants, torch.device("cpu"), warmup=1, steps=3)
    assert [m.name for m in ms] == ["a", "b", "c"] and all(len(m.step_ms) == 3 for m in ms)
    assert calls[:3] == ["a", "b", "c"]               # warm-up
    assert calls[3:] == list("abc" "bca" "cab")        # rounds rotate the order


def micro_ref_matmul_params(vocab: int = 4096, dim: int = 32, layers: int = 2, mtp: int = 3) -> int:
    """Matmul weights of the MICRO shapes, counted by hand: wq, wk, wv, wo, 3 SwiGLU (hidden 128), tied head, MTP."""
    per_layer = dim * dim + 2 * (16 * dim) + dim * dim + 3 * dim * 128
    return vocab * dim + layers * per_layer + mtp * vocab * dim


def test_bench_train_micro_writes_valid_json(tmp_path):
    bench_train = load("bench_train")
    out = tmp_path / "train.json"
    assert bench_train.main(MICRO + ["--batch-size", "2", "--seq-len", "16", "--steps", "2", "--warmup", "1",
                                     "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["schema"] == "nanolab.bench_train/1"
    assert result["device"]["type"] == "cpu" and result["device"]["peak_bf16_flops"] is None
    assert result["torch"] == torch.__version__
    rows = {r["name"]: r for r in result["results"]}
    assert list(rows) == ["nanotrain", "reference-adamw", "reference-muon"]
    expected_matmul = micro_ref_matmul_params()
    for r in rows.values():
        assert r["matmul_params"] == expected_matmul
        assert r["flops_per_token"] == 6 * expected_matmul + 12 * 2 * 4 * 8 * 16
        assert len(r["step_ms_all"]) == 2 and r["step_ms"] > 0 and r["mfu"] is None
        assert math.isclose(r["tok_per_s"], 2 * 16 / (r["step_ms"] / 1e3), rel_tol=1e-3)
    assert all(r["build_s"] >= 0 for r in rows.values())
    ours = rows["nanotrain"]["tok_per_s"]
    for ref in ("reference-adamw", "reference-muon"):
        assert math.isclose(result["ratios"][f"nanotrain/{ref}"], ours / rows[ref]["tok_per_s"], abs_tol=2e-3)


def test_compile_regions_wraps_each_block_and_refuses_a_model_without_blocks():
    """--compile-regional compiles each block on its own (its forward is Dynamo-wrapped, nothing is compiled until
    the first call); a model without a block list (LoopLM) is refused in one line."""
    import argparse

    from nanotrain.model.gpt import GPT
    from nanotrain.recipes import get_recipe

    bench_train = load("bench_train")
    cfg, _ = get_recipe("baseline-v1").build("tiny")
    cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.n_layers = 32, 4, 2, 2
    model = GPT(cfg)
    assert bench_train.compile_regions(model, argparse.Namespace(compile_mode=None)) is model
    assert all(b._compiled_call_impl is not None for b in model.blocks)
    assert model._compiled_call_impl is None
    common = load("common")
    assert common.run_cli("bench_train.py", bench_train.main, MICRO + ["--recipe", "looplm", "--compile-regional",
                                                                       "--only", "nanotrain"]) == 2


@pytest.mark.slow
def test_bench_train_compiled_per_block_trains(tmp_path):
    """The whole --compile-regional path on the CPU (~40 s of compiling): the step runs and the JSON says so."""
    bench_train = load("bench_train")
    out = tmp_path / "regional.json"
    assert bench_train.main(MICRO + ["--batch-size", "2", "--seq-len", "16", "--steps", "1", "--warmup", "1",
                                     "--compile-regional", "--only", "nanotrain", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["compile_regional"] is True and result["settings"]["compile"] is True
    assert result["results"][0]["step_ms"] > 0 and result["results"][0]["build_s"] > 0


def test_bytes_moved_per_layer_is_the_slope_over_depth():
    bytes_moved = load("bytes_moved")
    assert bytes_moved.per_layer(1_000, 1_600, 2, 4) == (300.0, 400.0)
    assert bytes_moved.per_layer(50, 50, 1, 3) == (0.0, 50.0)


@pytest.mark.slow
def test_bytes_moved_counts_the_second_mhc_stream(tmp_path):
    """Inductor's byte count at micro size (four compiles, ~1 minute): traffic grows with depth, and our step with
    mHC's two residual streams moves more per layer than the same model with one (a plain residual)."""
    bytes_moved = load("bytes_moved")
    per_layer = {}
    for streams in (2, 1):
        out = tmp_path / f"streams{streams}.json"
        micro = [x for kv in zip(MICRO[::2], MICRO[1::2]) if kv[1] != "n_layers=2" for x in kv]
        assert bytes_moved.main(micro + ["--scale", "tiny", "--layers", "1,2", "--batch-size", "2", "--seq-len",
                                         "16", "--only", "nanotrain", "--set", f"mhc_streams={streams}",
                                         "--out", str(out)]) == 0
        row = json.loads(out.read_text())["results"][0]
        assert row["bytes_total"]["2"] > row["bytes_total"]["1"] > 0 and row["mb_outside_layers"] > 0
        per_layer[streams] = row["mb_per_layer"]
    assert per_layer[2] > 1.05 * per_layer[1], per_layer


def test_profile_step_micro_reports_device_and_host_time_per_phase(tmp_path, capsys):
    """profile_step.py (the diagnostic the GPU set runs at B=2 and B=16) runs end to end: every phase of ours and
    of the reference, each with the host's own time (on a GPU: how long Python took to issue it)."""
    profile_step = load("profile_step")
    out = tmp_path / "profile.json"
    assert profile_step.main(MICRO + ["--batch-size", "2", "--seq-len", "16", "--steps", "2", "--warmup", "1",
                                      "--top", "3", "--isolate", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["isolate"] is True
    ours, ref = result["nanotrain"], result["reference"]
    phases = ["forward", "objective+backward", "clip", "optimiser step (gated by the flag)", "zero grads"]
    assert all(ours[p] > 0 and ours["host_ms"][p] > 0 for p in phases)
    assert set(ref["host_ms"]) == {k for k in ref if k not in ("wall per step", "host_ms")}
    assert ours["sum of phases"] == pytest.approx(sum(v for k, v in ours.items()
                                                      if k not in ("sum of phases", "wall per step", "host_ms")),
                                                  abs=0.01)
    assert result["nanotrain_profile"]["aten_calls"] > 0
    assert "host" in capsys.readouterr().out


def test_bench_train_recipes_mode(tmp_path):
    bench_train = load("bench_train")
    out = tmp_path / "recipes.json"
    args = ["--set", "dim=32", "--set", "n_heads=4", "--set", "n_kv_heads=2", "--set", "engram_table_size=61",
            "--recipes", "baseline,engram-v1,haar-v5", "--batch-size", "1", "--seq-len", "16", "--steps", "1",
            "--warmup", "0", "--out", str(out)]
    assert bench_train.main(args) == 0
    result = json.loads(out.read_text())
    assert [r["name"] for r in result["results"]] == ["baseline", "engram-v1", "haar-v5"]
    assert set(result["ratios"]) == {"engram-v1/baseline", "haar-v5/baseline"}
    assert result["results"][1]["params"] > result["results"][0]["params"]  # the Engram tables


def test_bench_decode_micro_writes_valid_json(tmp_path):
    bench_decode = load("bench_decode")
    out = tmp_path / "decode.json"
    assert bench_decode.main(MICRO + ["--new-tokens", "6", "--batch-sizes", "1,2", "--repeats", "1",
                                      "--warmup", "0", "--fastdecode", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["schema"] == "nanolab.bench_decode/1"
    names = [(r["name"], r["batch"]) for r in result["results"]]
    assert names == [("sampler-kv", 1), ("sampler-recompute", 1), ("reference-kv", 1), ("fastdecode", 1),
                     ("fastdecode-sample", 1), ("sampler-kv", 2), ("reference-kv", 2), ("fastdecode", 2),
                     ("fastdecode-sample", 2)]
    assert all(r["tok_per_s"] > 0 for r in result["results"])
    fast = [r for r in result["results"] if r["name"].startswith("fastdecode")]
    assert all(r["compiled"] is False and r["cuda_graphs"] is False and r["fallback_reason"] is None for r in fast)
    assert [r["sampling"] for r in fast] == [None, {"temperature": 0.7, "top_k": 40}] * 2
    assert result["settings"]["context"] >= result["settings"]["prompt_tokens"] + 6
    assert set(result["ratios"]) == {"B1:sampler-kv/sampler-recompute", "B1:sampler-kv/reference-kv",
                                     "B1:fastdecode/sampler-kv", "B1:fastdecode-sample/sampler-kv",
                                     "B2:sampler-kv/reference-kv", "B2:fastdecode/sampler-kv",
                                     "B2:fastdecode-sample/sampler-kv"}


@pytest.mark.parametrize("script, args, message", [
    ("bench_train", ["--steps", "0"], "--steps 0: must be at least 1"),
    ("bench_train", ["--set", "no_such_field=1"], "--set 'no_such_field=1'"),
    ("bench_train", ["--recipe", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
    ("bench_train", ["--seq-len", "100000"], "--seq-len 100000: longer than the model's context"),
    ("bench_train", ["--seq-len", "16", "--only", "nanotrain,bogus"], "--only nanotrain,bogus: unknown variant(s) bogus"),
    ("bench_train", ["--mhc-forms", "plain", "--only", "nanotrain"], "--only nanotrain: unknown variant(s) nanotrain"),
    ("bench_train", ["--recipes", "baseline-v1,nope"], "--recipes baseline-v1,nope: unknown recipe 'nope'"),
    ("bench_decode", ["--batch-sizes", "1,x"], "--batch-sizes 1,x: expected a comma list of integers"),
    ("bytes_moved", ["--layers", "4,2"], "--layers 4,2: expected two depths A,B with 1 <= A < B"),
    ("bytes_moved", [], "--set n_layers: the depths come from --layers"),
    ("bytes_moved", ["--only", "nanotrain,foo"], "--only nanotrain,foo: unknown variant(s) foo"),
    ("bench_decode", ["--tokenizer", "/nonexistent/tokenizer.json"], "tokenizer file not found"),
    ("bench_decode", ["--new-tokens", "100000"], "exceed the largest context"),
])
def test_user_mistakes_are_one_line_exit_2(script, args, message, capsys):
    module = load(script)
    common = load("common")
    assert common.run_cli(f"{script}.py", module.main, MICRO + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{script}.py: error: ") and message in err[0], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_is_a_user_error(capsys):
    common = load("common")
    assert common.run_cli("bench_train.py", load("bench_train").main, ["--device", "cuda"]) == 2
    assert "--device cuda: no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("recipe, static", [("baseline-v1", True), ("haar-v5", True), ("engram-v1", True),
                                            ("haar-causal", False), ("looplm", False)])
def test_fastdecode_matches_incremental_forward(recipe, static):
    """The static tensor-position step decodes exactly what GPT.forward(start_pos=...) decodes (fp32, CPU); the
    models it does not support decode through the eager path. A 1-token prompt makes the first steps read Engram
    history and conv inputs from before position 0 (zeros). The prefill runs in chunks of 4 positions: 7 tokens
    end in a padded chunk, 8 in a full one, and 25 of 27 positions move the last chunk back to end at position
    27 (it writes 23 again)."""
    from nanoeval.fastdecode import FastDecoder
    from nanotrain.model.gpt import GPT
    from nanotrain.recipes import get_recipe

    cfg, _ = get_recipe(recipe).build("tiny")
    cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.max_seq_len, cfg.vocab_size = 32, 4, 2, 64, 300
    cfg.engram_table_size = 61
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    bypass = not model.is_causal
    decoder = FastDecoder(model, 3, 27, bypass_noncausal=bypass, prefill_chunk=4)
    assert decoder.static is static and decoder.compiled is False
    assert (decoder.fallback_reason is None) is static
    for prompt_len, new in ((7, 20), (1, 20), (8, 19), (25, 2)):
        prompt = torch.randint(2, 300, (3, prompt_len))
        got = decoder.generate_greedy(prompt, new)
        assert torch.equal(got, incremental_greedy(model, prompt, new, 27, bypass)), prompt_len
    with pytest.raises(ValueError, match="built for batch 3"):
        decoder.generate_greedy(prompt[:2], 4)
    with pytest.raises(ValueError, match="at least 1 token"):
        decoder.generate_greedy(prompt[:, :0], 4)


@pytest.mark.parametrize("recipe", ["baseline-v1", "engram-v1"])
def test_chunked_prefill_writes_the_caches_gpt_forward_writes(recipe):
    """The static prefill (chunks of 4 positions here) leaves the same logits and, at every prompt position, the same
    keys, values, token ids and Engram conv inputs in the caches as one GPT.forward(start_pos=0) over the prompt.
    Engram's tables are scaled up so that its conv reads matter to the numbers compared."""
    from nanoeval.fastdecode import FastDecoder
    from nanotrain.model.gpt import GPT
    from nanotrain.recipes import get_recipe

    cfg, _ = get_recipe(recipe).build("tiny")
    cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.max_seq_len, cfg.vocab_size = 32, 4, 2, 64, 300
    cfg.engram_table_size = 61
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".tables." in name:
                p.mul_(50.0)
    decoder = FastDecoder(model, 2, 27, prefill_chunk=4)
    for t0 in (1, 7, 8, 25):
        prompt = torch.randint(2, 300, (2, t0))
        with torch.inference_mode():
            got = decoder._prefill(prompt)
            cached = [buf[:, :t0].clone() if buf.dim() < 4 else buf[:, :, :t0].clone() for buf in decoder._caches]
            model.setup_cache(2, 27)
            want = model(prompt, start_pos=0).logits[:, -1]
            expect = [buf[:, :t0] if buf.dim() < 4 else buf[:, :, :t0] for buf in decoder._decode_buffers()]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"logits, prompt of {t0}")
        assert len(cached) == len(expect) and len(cached) >= 2 * cfg.n_layers
        for a, b in zip(cached, expect):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"cache, prompt of {t0}")
        decoder._setup_caches()  # the decoder's own caches again (setup_cache above replaced them)


@pytest.mark.parametrize("temperature, top_k", [(0.7, 0), (1.3, 3)])
def test_pick_tokens_draws_from_the_tempered_top_k_softmax(temperature, top_k):
    """20,000 rows of the same logits, one draw each: the frequencies match softmax(logits / T) over the top-k
    logits (the rest never drawn) to within 0.015, ~4 standard deviations; temperature 0 and top-k 1 pick the
    argmax."""
    from nanoeval.fastdecode import pick_tokens

    logits = torch.tensor([[2.0, 0.5, -1.0, 1.5, 0.0, -3.0]]).expand(20_000, -1)
    keep = logits[0].topk(top_k).indices if top_k else torch.arange(6)
    want = torch.zeros(6)
    want[keep] = torch.softmax(logits[0, keep] / temperature, dim=0)
    got = pick_tokens(logits, temperature, top_k, torch.Generator().manual_seed(0))
    freq = torch.bincount(got, minlength=6).float() / got.numel()
    assert (freq - want).abs().max() < 0.015, (freq, want)
    assert freq[[i for i in range(6) if i not in keep.tolist()]].sum() == 0
    assert torch.equal(pick_tokens(logits, 0.0, top_k), torch.zeros(20_000, dtype=torch.long))
    assert torch.equal(pick_tokens(logits, temperature, 1), torch.zeros(20_000, dtype=torch.long))


def test_fastdecode_samples_what_the_incremental_forward_samples():
    """Sampling (temperature, top-k, a seeded generator) through the static step draws the same tokens as the same
    draws over GPT.forward(start_pos=...); the same seed repeats them, another seed does not."""
    from nanoeval.fastdecode import FastDecoder, pick_tokens
    from nanotrain.model.gpt import GPT
    from nanotrain.recipes import get_recipe

    cfg, _ = get_recipe("engram-v1").build("tiny")
    cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.max_seq_len, cfg.vocab_size = 32, 4, 2, 64, 300
    cfg.engram_table_size = 61
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    decoder = FastDecoder(model, 3, 30, prefill_chunk=4)
    prompt = torch.randint(2, 300, (3, 6))
    got = decoder.generate(prompt, 20, temperature=0.9, top_k=20, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    model.setup_cache(3, 30)
    with torch.inference_mode():
        token = pick_tokens(model(prompt, start_pos=0).logits[:, -1], 0.9, 20, g)
        want = [token]
        for i in range(19):
            token = pick_tokens(model(token[:, None], start_pos=6 + i).logits[:, -1], 0.9, 20, g)
            want.append(token)
    assert torch.equal(got, torch.stack(want, 1))
    again = decoder.generate(prompt, 20, temperature=0.9, top_k=20, generator=torch.Generator().manual_seed(5))
    other = decoder.generate(prompt, 20, temperature=0.9, top_k=20, generator=torch.Generator().manual_seed(6))
    assert torch.equal(again, got) and not torch.equal(other, got)
    assert not torch.equal(got, decoder.generate_greedy(prompt, 20))
    with pytest.raises(ValueError, match="must be >= 0"):
        decoder.generate(prompt, 4, temperature=-1.0)


def incremental_greedy(model, prompt, new_tokens: int, max_len: int, bypass: bool = False):
    """Greedy ids from GPT.forward(start_pos=...) one token at a time (what the static step must reproduce)."""
    b, t0 = prompt.shape
    model.setup_cache(b, max_len)
    with torch.inference_mode():
        token = model(prompt, start_pos=0, bypass_noncausal=bypass).logits[:, -1].argmax(-1)
        out = [token]
        for i in range(new_tokens - 1):
            token = model(token[:, None], start_pos=t0 + i, bypass_noncausal=bypass).logits[:, -1].argmax(-1)
            out.append(token)
    return torch.stack(out, 1)


@pytest.mark.parametrize("quant", ["none", "ternary"])
def test_fastdecode_fused_projections_follow_the_weights(quant):
    """q/k/v and gate/up run as one product each over copied weights (plain layers only); after the weights
    change in place (an optimizer step, load_state_dict) the next call copies them again and decodes what the
    model now decodes."""
    from nanoeval.fastdecode import FastDecoder
    from nanotrain.model.gpt import GPT
    from nanotrain.recipes import get_recipe

    cfg, _ = get_recipe("baseline-v1").build("tiny")
    cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.max_seq_len, cfg.vocab_size, cfg.n_layers = 32, 4, 2, 64, 300, 2
    cfg.quant = quant
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    decoder = FastDecoder(model, 2, 24)
    fused = {name for name, _ in decoder._static_step.named_buffers() if name.startswith("fused_")}
    assert fused == (set() if quant == "ternary" else {"fused_qkv0", "fused_qkv1", "fused_gate_up0",
                                                         "fused_gate_up1"})
    prompt = torch.randint(2, 300, (2, 6))
    before = decoder.generate_greedy(prompt, 16)
    assert torch.equal(before, incremental_greedy(model, prompt, 16, 24))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.wk.weight.mul_(-3.0)
            block.ffn.w_up.weight.copy_(torch.randn_like(block.ffn.w_up.weight) * 0.5)
    after = decoder.generate_greedy(prompt, 16)
    if quant == "none":  # (the tiny random ternary model greedily repeats one token either way)
        assert not torch.equal(after, before)
    assert torch.equal(after, incremental_greedy(model, prompt, 16, 24))
    assert decoder._static_step.refresh_fused() is False  # nothing changed since the last call
    for block in model.blocks:  # a `.data` assignment bumps no version; the new data pointer shows it
        block.ffn.w_gate.weight.data = torch.randn_like(block.ffn.w_gate.weight) * 0.5
    assert torch.equal(decoder.generate_greedy(prompt, 16), incremental_greedy(model, prompt, 16, 24))


@pytest.mark.parametrize("recipe", ["baseline-v1", "engram-v1"])
def test_compiled_fastdecode_decodes_what_the_eager_step_does(recipe):
    """The compiled static step (what CUDA runs, with CUDA graphs) compiled here for the CPU: same greedy tokens as
    the eager step; `cuda_graphs` stays False off CUDA (Inductor skips the graph for a CPU device)."""
    from nanoeval.fastdecode import FastDecoder
    from nanotrain.model.gpt import GPT
    from nanotrain.recipes import get_recipe

    cfg, _ = get_recipe(recipe).build("tiny")
    cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.max_seq_len, cfg.vocab_size, cfg.n_layers = 32, 4, 2, 64, 300, 2
    cfg.engram_layers, cfg.engram_table_size = [0, 1] if cfg.engram_layers else [], 61
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    prompt = torch.randint(2, 300, (2, 5))
    eager = FastDecoder(model, 2, 20, compile=False).generate_greedy(prompt, 12)
    decoder = FastDecoder(model, 2, 20, compile=True, prefill_chunk=4)  # prefill: one full chunk, one padded
    assert decoder.compiled and decoder.fallback_reason is None and decoder.cuda_graphs is False
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert torch.equal(decoder.generate_greedy(prompt, 12), eager)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # the warm-up compiled what decodes
    with torch.no_grad():  # the compiled step reads the refreshed fused weights too
        for block in model.blocks:
            block.attn.wk.weight.mul_(-3.0)
            block.ffn.w_up.weight.copy_(torch.randn_like(block.ffn.w_up.weight) * 0.5)
    changed = FastDecoder(model, 2, 20, compile=False).generate_greedy(prompt, 12)
    assert not torch.equal(changed, eager)
    assert torch.equal(decoder.generate_greedy(prompt, 12), changed)
    # the loop skips Dynamo's guards; a weight swapped for a new tensor (same dtype) is still read. The eager
    # reference decodes a copy, so the compiled decoder keeps its caches (new caches turn the guards back on)
    assert decoder.skips_guards() and not FastDecoder(model, 2, 20, compile=False).skips_guards()
    decoder.generate_greedy(prompt, 12)  # the eager decoder above replaced the caches: new caches, guarded call
    copy = __import__("copy").deepcopy(model)
    new_weight = torch.randn_like(model.norm_final.weight) + 1.0
    model.norm_final.weight.data, copy.norm_final.weight.data = new_weight.clone(), new_weight.clone()
    swapped = FastDecoder(copy, 2, 20, compile=False).generate_greedy(prompt, 12)
    assert not torch.equal(swapped, changed)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert decoder.skips_guards() and torch.equal(decoder.generate_greedy(prompt, 12), swapped)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    # should Dynamo want to compile again under the unguarded stance, it raises (the message below is its own);
    # the call then decodes again with the guards, and later calls keep them
    step = decoder._step

    def refuses_once(*args):
        if not getattr(refuses_once, "raised", False):
            refuses_once.raised = True
            raise RuntimeError("Recompilation triggered with skip_guard_eval_unsafe stance. This usually means ...")
        return step(*args)
    decoder._step = refuses_once
    assert decoder.skips_guards() and torch.equal(decoder.generate_greedy(prompt, 12), swapped)
    assert refuses_once.raised and not decoder.skips_guards()
    # sampling: the compiled step draws what the eager one draws, and a decode that starts over after such a
    # refusal draws the same numbers again (the generator's state is put back)
    sampled = FastDecoder(copy, 2, 20, compile=False).generate(prompt, 12, temperature=1.0, top_k=8,
                                                               generator=torch.Generator().manual_seed(3))
    decoder._compiled_for = decoder._tensor_signature()
    refuses_once.raised = False
    assert torch.equal(decoder.generate(prompt, 12, temperature=1.0, top_k=8,
                                        generator=torch.Generator().manual_seed(3)), sampled)
    assert refuses_once.raised
    decoder._step, decoder._compiled_for = step, decoder._tensor_signature()
    # a dtype change is what the guards are for: they stay on, and the step is compiled again for it
    model.norm_final.weight.data = model.norm_final.weight.data.double()
    assert not decoder.skips_guards()


def test_compiled_decoders_sharing_a_model_take_turns_without_recompiling():
    """Two compiled decoders of one model (batch 1 and 3) replace each other's caches on every call. The new caches
    are made as normal tensors, like those the warm-up compiled for, so taking turns compiles nothing new (caches
    made inside inference mode have another dispatch key set, and Dynamo compiled the step again for them)."""
    import copy

    from nanoeval.fastdecode import FastDecoder
    from nanotrain.model.gpt import GPT
    from nanotrain.recipes import get_recipe

    cfg, _ = get_recipe("baseline-v1").build("tiny")
    cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.max_seq_len, cfg.vocab_size, cfg.n_layers = 32, 4, 2, 64, 300, 2
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    twin = copy.deepcopy(model)
    p1, p3 = torch.randint(2, 300, (1, 5)), torch.randint(2, 300, (3, 5))
    e1 = FastDecoder(twin, 1, 20, compile=False).generate_greedy(p1, 8)
    e3 = FastDecoder(twin, 3, 20, compile=False).generate_greedy(p3, 8)
    d1, d3 = FastDecoder(model, 1, 20, compile=True), FastDecoder(model, 3, 20, compile=True)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for _ in range(2):
        assert torch.equal(d1.generate_greedy(p1, 8), e1) and torch.equal(d3.generate_greedy(p3, 8), e3)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_scripts_have_help():
    for script in ("bench_train", "bench_decode"):
        with pytest.raises(SystemExit) as exit_info:
            load(script).build_parser().parse_args(["--help"])
        assert exit_info.value.code == 0


REAL_DATASET = Path(__file__).resolve().parents[2] / "data" / "datasets" / "rust-default"


@pytest.mark.skipif(not (REAL_DATASET / "train.bin").is_file(),
                    reason="needs the default dataset (a vocab-4096 tokenizer; the test fixtures' corpus makes ~2.2k)")
def test_check_run_graphs_compares_real_runs_and_resumes(tmp_path, capsys):
    """The GPU whole-run check, driven on the CPU with plain flags: two identical variants agree exactly, a
    different seed is caught at --tol 0, and the last variant's run resumes for the extra steps."""
    out = tmp_path / "check.json"
    args = ["--scale", "tiny", "--data", str(REAL_DATASET), "--steps", "2", "--log-every", "1",
            "--resume-steps", "1", "--tol", "0", "--work", str(tmp_path / "runs"), "--out", str(out),
            "--run-flags", "--batch-size 2 --seq-len 32 --device cpu --threads 1 --no-compile",
            "--variant", "a=", "--variant", "b=", "--variant", "c=--seed 1"]
    common = load("common")
    assert common.run_cli("check_run_graphs.py", load("check_run_graphs").main, args) == 1
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["results"]}
    assert list(rows) == ["a", "b", "c", "c+resume"]
    assert rows["b"]["max_rel_diff_loss"] == 0 and rows["b"]["max_rel_diff_val_ce"] == 0
    assert rows["c"]["max_rel_diff_loss"] > 0
    assert [f.split(":")[0] for f in result["failures"]] == ["c", "c"]
    assert rows["c+resume"]["steps"] == 3 and [r["step"] for r in rows["a"]["train"]] == [1, 2]
    assert "FAIL c: max_rel_diff_loss" in capsys.readouterr().err


def test_check_run_graphs_bad_input_is_one_line(fixture_dataset, tmp_path, capsys):
    common = load("common")
    main = load("check_run_graphs").main
    # a failing `nanotrain run` (the fixture tokenizer's vocab is not the recipe's) is named with its log's end
    args = ["--scale", "tiny", "--data", str(fixture_dataset), "--steps", "1", "--work", str(tmp_path / "runs"),
            "--run-flags", "--device cpu --no-compile", "--variant", "a="]
    assert common.run_cli("check_run_graphs.py", main, args) == 2
    err = capsys.readouterr().err
    assert "check_run_graphs.py: error: `nanotrain run` failed (exit 2); last lines of " in err
    assert "does not match recipe engram-v1's vocab_size 4096" in err
    assert not (tmp_path / "runs" / "a" / "metrics.jsonl").exists()
    assert common.run_cli("check_run_graphs.py", main, ["--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"check_run_graphs.py: error: --data {tmp_path}: no train.bin " \
                                              "(build one with `nanotrain data build`)"
    (tmp_path / "train.bin").write_bytes(b"")
    assert common.run_cli("check_run_graphs.py", main, ["--data", str(tmp_path), "--variant", "x"]) == 2
    assert "--variant 'x': expected NAME=FLAGS" in capsys.readouterr().err
