"""benchmarks/bench_quality.py: flag checks, the reference saved as a nanolab GPT, and a whole micro run.

The micro run shrinks the tiny scale (as tests/integration/test_train_cli.py does) and runs the real phases in
this process: `nanotrain run`, the reference with AdamW, `nanoeval score` of both, the results writer.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_train_cli import TEST_TRAIN, small_tiny  # noqa: F401  (fixture)
from test_train_corpus import fixture_dataset, one_thread  # noqa: F401  (fixtures)

from tests.unit.test_benchmarks import load


@pytest.fixture(scope="module")
def bq():
    return load("bench_quality")


def test_help_explains_the_phases(bq, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bq.build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "bpb_ratio" in out and "--phases" in out and "make data-quality" in out


@pytest.mark.parametrize("args, message", [
    (["--recipe", "nope"], "unknown recipe 'nope'"),
    (["--recipe", "engram-v2"], "--recipe engram-v2: it continues engram-v1's run"),
    (["--phases", "ours,train"], "--phases ours,train: expected a comma list of ours, reference, score"),
    (["--total-steps", "0"], "--total-steps 0: must be positive"),
    (["--ref-lr", "-1"], "--ref-lr -1.0: must be positive"),
    (["--data", "/nonexistent/ds"], "--data /nonexistent/ds: not a dataset folder (no meta.json)"),
])
def test_bad_flags_are_one_line_exit_2(bq, fixture_dataset, capsys, args, message):
    code = load("common").run_cli("bench_quality", bq.main, ["--data", str(fixture_dataset), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_device_slug_and_file_stem(bq):
    assert bq.device_slug({"type": "cuda", "name": "NVIDIA H200"}) == "h200"
    assert bq.device_slug({"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}) == "h100"
    assert bq.device_slug({"type": "cuda", "name": "Some Card"}) == "some-card"
    assert bq.device_slug({"type": "cpu", "name": "Intel(R) Xeon(R)"}) == "cpu"
    assert bq.results_stem("2026-12-02", "h200", "full") == "2026-12-02_h200_quality"
    assert bq.results_stem("2026-12-02", "cpu", "tiny") == "2026-12-02_cpu_quality_tiny"


def test_the_reference_as_a_nanolab_gpt_computes_the_same_logits(bq):
    import reference

    model_cfg = dataclasses.replace(bq.reference_model_config("tiny", 97), dim=32, n_layers=2, n_heads=4,
                                    n_kv_heads=2, ffn_multiple_of=16, max_seq_len=48)
    torch.manual_seed(0)
    ref = reference.RefGPT(reference.RefConfig.from_model_config(model_cfg)).eval()
    with torch.no_grad():
        for p in ref.parameters():  # norms away from 1, so a mixed-up weight shows
            p.add_(0.05 * torch.randn_like(p))
    gpt = bq.reference_as_gpt(ref, model_cfg).eval()
    idx = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(gpt(idx).logits, ref(idx)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="Missing key"):
        bq.reference_as_gpt(ref, dataclasses.replace(model_cfg, mhc_streams=2))


def test_micro_run_trains_scores_and_writes_both_files(bq, fixture_dataset, small_tiny, one_thread, tmp_path,
                                                       capsys):
    common = load("common")
    work, out_dir = tmp_path / "work", tmp_path / "results"
    base = ["--device", "cpu", "--data", str(fixture_dataset), "--work", str(work), "--out-dir", str(out_dir),
            "--recipe", "engram-v1", "--heldout-tokens", "2048", "--max-new-tokens", "24", "--no-progress"]
    assert common.run_cli("bench_quality", bq.main, [*base, "--phases", "ours"]) == 0
    assert "the results are written once all of ours, reference, score are" in capsys.readouterr().out
    assert not out_dir.exists()
    code = common.run_cli("bench_quality", bq.main, [*base, "--phases", "reference,score"])
    assert code == 0, capsys.readouterr().err[-2000:]
    files = sorted(out_dir.iterdir())
    assert [f.name for f in files] == [f"{files[0].stem}.json", f"{files[0].stem}.md"]
    assert files[0].stem.endswith("_cpu_quality_tiny")
    result = json.loads(files[0].read_text())
    md = files[1].read_text()
    assert md.startswith("**Smoke run at tiny scale") and result["note"].startswith("Smoke run at tiny scale")

    steps = TEST_TRAIN["total_steps"]
    assert result["tokens"]["per_model"] == steps * TEST_TRAIN["batch_size"] * TEST_TRAIN["seq_len"]
    ours, ref = result["models"]["ours"], result["models"]["reference"]
    assert ours["recipe"] == "engram-v1" and ref["recipe"] == bq.REFERENCE_NAME
    assert ours["steps"] == ref["steps"] == steps
    for key in ("n_tokens", "seq_len", "split"):  # the same held-out tokens
        assert ours["heldout"][key] == ref["heldout"][key]
    assert ours["heldout"]["split"] == "val" and ours["heldout"]["n_tokens"] > 0
    assert result["ratios"]["bpb_ratio"] == pytest.approx(ours["heldout"]["bpb"] / ref["heldout"]["bpb"])
    assert ours["n_samples"] == ref["n_samples"] > 0
    assert ours["valid_rate_ci95"] is None or ours["valid_rate_ci95"][0] <= ours["valid_rate"]
    assert result["device"]["type"] == "cpu" and result["torch"] == torch.__version__
    assert all(v > 0 for v in result["phases_s"].values())
    assert len(result["reference_run"]["curve"]["train_loss"]) == steps // TEST_TRAIN["log_every"]
    assert result["ours_run"]["curve"]["train_loss"][-1][0] == steps
    assert f"{result['ratios']['bpb_ratio']:.4f}" in md

    from nanoeval.load import load as load_ckpt

    loaded = load_ckpt(work / bq.REFERENCE_NAME / "final")
    assert loaded.model_cfg.mhc_streams == 1 and loaded.step == steps
    code = common.run_cli("bench_quality", bq.main, [*base, "--phases", "reference"])
    assert code == 2 and "already exists" in capsys.readouterr().err
