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
                                      "--warmup", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["schema"] == "nanolab.bench_decode/1"
    names = [(r["name"], r["batch"]) for r in result["results"]]
    assert names == [("engine", 1), ("engine-sample", 1), ("reference-kv", 1),
                     ("engine", 2), ("engine-sample", 2), ("reference-kv", 2)]
    assert all(r["tok_per_s"] > 0 for r in result["results"])
    engine = [r for r in result["results"] if r["name"].startswith("engine")]
    assert all(r["compiled"] is False and r["cuda_graphs"] is False and r["fallback_reason"] is None
               for r in engine)
    assert [r["sampling"] for r in engine] == [None, {"temperature": 0.7, "top_k": 40}] * 2
    assert result["settings"]["context"] >= result["settings"]["prompt_tokens"] + 6
    assert set(result["ratios"]) == {"B1:engine/reference-kv", "B1:engine-sample/reference-kv",
                                     "B2:engine/reference-kv", "B2:engine-sample/reference-kv"}


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_bench_linear_micro_counts_the_model_layers_and_writes_ratios(tmp_path):
    out = tmp_path / "linear.json"
    assert load("bench_linear").main(MICRO + ["--rows", "1,3", "--iters", "2", "--rounds", "1",
                                              "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["schema"] == "nanolab.bench_linear/1"
    # dim 32, 2 layers, 4 heads of 8, 2 KV heads: wqkv 32->64, wo 32->32, gate/up 32->2h, down h->32, the head
    shapes = {(s["in"], s["out"]): s["layers"] for s in result["shapes"]}
    assert shapes[(32, 64)] == 2 and shapes[(32, 32)] == 2 and shapes[(32, result["settings"]["vocab"])] == 1
    assert sum(shapes.values()) == 2 * 4 + 1
    assert [r["rows"] for r in result["results"]] == [1, 3]
    assert all(r["plain_ms"] > 0 and r["packed_ms"] > 0 for r in result["results"])
    assert set(result["ratios"]) == {"rows1:packed/plain", "rows3:packed/plain"}


@pytest.mark.parametrize("script, args, message", [
    ("bench_linear", ["--rows", "1,x"], "--rows 1,x: expected a comma list of integers"),
    ("bench_linear", ["--rows", "0"], "--rows 0: every row count must be at least 1"),
    ("bench_train", ["--steps", "0"], "--steps 0: must be at least 1"),
    ("bench_train", ["--set", "no_such_field=1"], "--set 'no_such_field=1'"),
    ("bench_train", ["--recipe", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
    ("bench_train", ["--seq-len", "100000"], "--seq-len 100000: longer than the model's context"),
    ("bench_train", ["--seq-len", "16", "--only", "nanotrain,bogus"],
     "--only nanotrain,bogus: unknown variant(s) bogus"),
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
