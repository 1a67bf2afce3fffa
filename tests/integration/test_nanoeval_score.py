"""`nanoeval score` end to end on real tiny checkpoints; pins the score report's public field names."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from nanoeval.cli import main
from nanoeval.prompts import SEED_PROMPTS

FAST = ["--max-new-tokens", "16", "--samples-per-prompt", "1", "--heldout-tokens", "512", "--prompts", "seed"]

TOP_LEVEL = {"schema", "created", "nanoeval_version", "wall_seconds", "checkpoint", "model", "heldout", "generation",
             "samples"}
CHECKPOINT = {"path", "run", "recipe", "step", "train_loss", "val_ce"}
MODEL = {"params", "param_counts", "causal", "inference_mode", "noncausal_layers"}
HELDOUT = {"split", "ce", "bpb", "ppl", "entropy", "n_tokens", "seq_len", "inference_mode", "train_mode_ce",
           "train_mode_gap", "dataset", "n_docs", "ce_ci", "bpb_ci", "tokens_sha256", "selection", "doc_tokens",
           "doc_nll"}
GENERATION = {"n_samples", "valid_rate", "bracket_balance", "error_density", "distinct_3", "compile_rate",
              "tok_per_s", "n_tokens", "seconds", "finish", "prompts", "samples_per_prompt", "decode",
              "metrics", "sampling", "validator", "valid_rate_tree_sitter", "valid_rate_rustc",
              "validator_agreement", "validator_disagreements", "rustc", "intervals", "interval_method"}
SAMPLING = {"max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "stop", "seed"}
SAMPLE = {"prompt", "text", "finish", "n_tokens", "prompt_truncated", "valid", "valid_tree_sitter", "valid_rustc",
          "rustc_errors", "bracket_balance", "error_density", "distinct_3", "n_errors", "first_error_line",
          "compiles"}


@pytest.fixture(scope="module")
def engram_report(tiny_checkpoint_factory, fixture_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("score") / "engram.json"
    rc = main(["score", "--ckpt", str(tiny_checkpoint_factory("engram-v1")), "--data", str(fixture_dataset),
               "--out", str(out), *FAST])
    assert rc == 0
    return out, json.loads(out.read_text())


def test_report_fields_are_pinned(engram_report):
    _, r = engram_report
    assert set(r) == TOP_LEVEL
    assert r["schema"] == "nanoeval.score/1"
    assert set(r["checkpoint"]) == CHECKPOINT
    assert set(r["model"]) == MODEL
    assert set(r["heldout"]) == HELDOUT
    assert set(r["generation"]) == GENERATION
    assert set(r["generation"]["sampling"]) == SAMPLING
    assert all(set(s) == SAMPLE for s in r["samples"])


def test_report_values_are_consistent(engram_report, fixture_dataset):
    from nanotrain.data.shards import Dataset

    _, r = engram_report
    g, h, samples = r["generation"], r["heldout"], r["samples"]
    assert r["checkpoint"]["recipe"] == "engram-v1" and r["checkpoint"]["step"] == 4
    assert r["model"] == {**r["model"], "causal": True, "inference_mode": "causal", "noncausal_layers": []}
    assert r["model"]["params"] == r["model"]["param_counts"]["total"] > 0
    assert [s["prompt"] for s in samples] == list(SEED_PROMPTS)
    assert g["n_samples"] == len(samples) == 15
    assert g["valid_rate"] == pytest.approx(sum(s["valid"] for s in samples) / 15)
    assert g["bracket_balance"] == pytest.approx(sum(s["bracket_balance"] for s in samples) / 15)
    assert g["distinct_3"] == pytest.approx(sum(s["distinct_3"] for s in samples) / 15)
    assert sum(g["finish"].values()) == 15
    assert all(s["n_tokens"] <= 16 for s in samples)
    assert g["n_tokens"] == sum(s["n_tokens"] for s in samples) and g["tok_per_s"] > 0
    assert g["sampling"]["temperature"] == 0.7 and g["sampling"]["top_k"] == 40
    assert g["compile_rate"] is None and all(s["compiles"] is None for s in samples)
    assert g["validator"] == "tree-sitter" and g["valid_rate_tree_sitter"] == g["valid_rate"]
    assert g["valid_rate_rustc"] is None and g["validator_agreement"] is None and g["rustc"] is None
    assert all(s["valid_tree_sitter"] == s["valid"] and s["valid_rustc"] is None for s in samples)
    assert h["bpb"] == pytest.approx(h["ce"] / math.log(2) / Dataset(fixture_dataset).bytes_per_token("val"))
    assert h["ppl"] == pytest.approx(math.exp(h["ce"])) and 0 < h["n_tokens"] <= 512


def test_default_out_is_next_to_the_checkpoint(tiny_checkpoint_factory, fixture_dataset, tmp_path, capsys):
    ckpt = tmp_path / "run" / "final"
    shutil.copytree(tiny_checkpoint_factory("baseline-v1"), ckpt)
    assert main(["score", "--ckpt", str(tmp_path / "run"), "--data", str(fixture_dataset), *FAST]) == 0
    report = json.loads((ckpt / "score.json").read_text())
    assert report["checkpoint"]["run"] == "run"
    printed = capsys.readouterr().out
    assert "held-out bits/byte" in printed and str(ckpt / "score.json") in printed


def test_noncausal_checkpoint_needs_bypass(tiny_checkpoint_factory, fixture_dataset, tmp_path, capsys):
    ckpt = str(tiny_checkpoint_factory("haar-v5"))
    out = tmp_path / "haar.json"
    assert main(["score", "--ckpt", ckpt, "--data", str(fixture_dataset), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "--inference-mode bypass" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["score", "--ckpt", ckpt, "--data", str(fixture_dataset), "--out", str(out),
                 "--inference-mode", "bypass", *FAST]) == 0
    r = json.loads(out.read_text())
    assert r["model"]["causal"] is False and r["model"]["inference_mode"] == "bypass"
    assert r["model"]["noncausal_layers"]
    assert r["heldout"]["inference_mode"] == "bypass"
    assert r["heldout"]["train_mode_gap"] == pytest.approx(r["heldout"]["ce"] - r["heldout"]["train_mode_ce"])


def test_validator_both_carries_both_verdicts_and_their_agreement(tiny_checkpoint_factory, fixture_dataset,
                                                                   tmp_path, rustc, capsys):
    out = tmp_path / "both.json"
    rc = main(["score", "--ckpt", str(tiny_checkpoint_factory("engram-v1")), "--data", str(fixture_dataset),
               "--validator", "both", "--rustc", rustc.path, "--out", str(out), *FAST])
    assert rc == 0
    r = json.loads(out.read_text())
    g, samples = r["generation"], r["samples"]
    assert g["validator"] == "both" and g["rustc"]["path"] == rustc.path
    ts, rc_ = [s["valid_tree_sitter"] for s in samples], [s["valid_rustc"] for s in samples]
    assert all(isinstance(v, bool) for v in ts + rc_)
    assert all(s["valid"] == s["valid_tree_sitter"] for s in samples)
    assert all(isinstance(s["rustc_errors"], list) for s in samples)
    differ = [i for i, (a, b) in enumerate(zip(ts, rc_)) if a != b]
    assert g["validator_disagreements"] == differ
    assert g["validator_agreement"] == pytest.approx(1 - len(differ) / len(samples))
    assert g["valid_rate_rustc"] == pytest.approx(sum(rc_) / len(samples))
    assert g["valid_rate"] == g["valid_rate_tree_sitter"] == pytest.approx(sum(ts) / len(samples))
    summary = capsys.readouterr().out
    assert "valid rate (rustc)" in summary and "validator agreement" in summary


def test_validator_rustc_makes_rustc_the_verdict(tiny_checkpoint_factory, fixture_dataset, tmp_path, rustc):
    out = tmp_path / "rustc.json"
    rc = main(["score", "--ckpt", str(tiny_checkpoint_factory("engram-v1")), "--data", str(fixture_dataset),
               "--validator", "rustc", "--out", str(out), *FAST])
    assert rc == 0
    r = json.loads(out.read_text())
    assert all(s["valid"] == s["valid_rustc"] and s["valid_tree_sitter"] is None for s in r["samples"])
    assert r["generation"]["valid_rate"] == r["generation"]["valid_rate_rustc"]
    assert r["generation"]["valid_rate_tree_sitter"] is None


def test_unfit_rustc_is_a_one_line_error(tiny_checkpoint_factory, fixture_dataset, tmp_path, capsys):
    fake = tmp_path / "rustc"
    fake.write_text("#!/bin/sh\necho 'rustc 1.63.0 (4b91a6ea7 2022-08-08)'\n")
    fake.chmod(0o755)
    rc = main(["score", "--ckpt", str(tiny_checkpoint_factory("engram-v1")), "--data", str(fixture_dataset),
               "--validator", "both", "--rustc", str(fake), *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"--rustc {fake}: {fake} is 1.63.0; need rustc >= 1.80" in err


def test_seed_metrics_compile_check_and_prompt_file(tiny_checkpoint_factory, fixture_dataset, tmp_path, rustc):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "fn add(a: i32, b: i32) -> i32 {"}\n\n{"prompt": "pub struct P {"}\n')
    out = tmp_path / "r.json"
    rc = main(["score", "--ckpt", str(tiny_checkpoint_factory("engram-v1")), "--data", str(fixture_dataset),
               *FAST, "--prompts", str(prompts), "--metrics", "seed", "--compile-check", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert [s["prompt"] for s in r["samples"]] == ["fn add(a: i32, b: i32) -> i32 {", "pub struct P {"]
    assert set(r["generation"]["seed_metrics"]) >= {"composite", "syntax", "brackets"}
    assert all("composite" in s["seed_metrics"] for s in r["samples"])
    assert all(isinstance(s["compiles"], bool) for s in r["samples"])
    assert r["generation"]["compile_rate"] == sum(s["compiles"] for s in r["samples"]) / 2


def test_completion_prompts_come_from_the_test_split(tiny_checkpoint_factory, fixture_dataset, tmp_path):
    out = tmp_path / "c.json"
    rc = main(["score", "--ckpt", str(tiny_checkpoint_factory("engram-v1")), "--data", str(fixture_dataset),
               "--prompts", "completions", "--n-prompts", "3", "--heldout-tokens", "0", "--out", str(out),
               "--max-new-tokens", "8", "--samples-per-prompt", "2"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["heldout"] is None
    assert len(r["samples"]) == 6 and all(s["prompt"].rstrip().endswith("{") for s in r["samples"])


@pytest.mark.parametrize("args,message", [
    (["--prompts", "/nonexistent/prompts.jsonl"], "file not found"),
    (["--samples-per-prompt", "0"], "--samples-per-prompt"),
    (["--top-p", "0"], "--top-p"),
    (["--heldout-tokens", "-1"], "--heldout-tokens"),
    (["--heldout-tokens", "most"], "--heldout-tokens"),
])
def test_bad_flags_are_one_line_errors(args, message, tiny_checkpoint_factory, fixture_dataset, capsys):
    rc = main(["score", "--ckpt", str(tiny_checkpoint_factory("engram-v1")), "--data", str(fixture_dataset),
               *FAST, *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_dataset_with_another_tokenizer_is_refused(tiny_checkpoint_factory, tmp_path, capsys):
    other = tmp_path / "other"
    src = Path(__file__).parents[1] / "fixtures" / "rust"
    assert main_build(["--src", str(src), "--out", str(other), "--vocab", "300", "--split", "70/15/15"]) == 0
    rc = main(["score", "--ckpt", str(tiny_checkpoint_factory("engram-v1")), "--data", str(other), *FAST])
    assert rc == 2 and "different tokenizer" in capsys.readouterr().err


def main_build(args: list[str]) -> int:
    from nanotrain.cli import main as nanotrain_main

    return nanotrain_main(["data", "build", *args, "--workers", "1"])
