"""`nanoeval load`, `generate` and `compare` on real tiny checkpoints, including the user-error paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import nanoeval
from nanoeval.cli import main
from nanoeval.engine import Engine, SamplingConfig
from nanotrain.data.tokenizer import train_tokenizer
from nanotrain.errors import UserError

FIXTURE_RUST = Path(__file__).parents[1] / "fixtures" / "rust"


# ---------------------------------------------------------------------------------------------- load


def test_load_gives_an_eval_model_with_configs(tiny_checkpoint_factory):
    final = tiny_checkpoint_factory("engram-v1")
    loaded = nanoeval.load(final)
    assert not loaded.model.training
    assert loaded.recipe == "engram-v1" and loaded.step == 4 and loaded.folder == final
    assert loaded.model_cfg.engram_layers and loaded.train_cfg.total_steps == 4
    assert loaded.run_name == final.parent.name
    assert nanoeval.load(final.parent).folder == final  # a run folder resolves to its final/


def test_missing_and_corrupt_checkpoints_are_user_errors(tiny_checkpoint_factory, tmp_path):
    with pytest.raises(UserError, match="no such checkpoint"):
        nanoeval.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no complete checkpoint"):
        nanoeval.load(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint_factory("engram-v1"), broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="model.safetensors"):
        nanoeval.load(broken)


def test_tokenizer_bigger_than_the_model_vocab_is_refused(tiny_checkpoint_factory, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint_factory("engram-v1"), folder)
    vocab = nanoeval.load(folder).model_cfg.vocab_size
    texts = [p.read_text() for p in sorted(FIXTURE_RUST.rglob("*.rs"))]
    bigger = train_tokenizer(texts, vocab + 200)
    assert bigger.get_vocab_size() > vocab
    bigger.save(str(folder / "tokenizer.json"))
    with pytest.raises(UserError, match="tokenizer.json: .* manifest.json says"):  # the manifest catches it first
        nanoeval.load(folder)
    with pytest.raises(UserError, match="does not fit the model's vocab_size"):
        nanoeval.load(folder, verify=False)


# ---------------------------------------------------------------------------------------------- generate


def test_generate_streams_the_same_text_as_the_library(tiny_checkpoint_factory, capsys):
    final = tiny_checkpoint_factory("engram-v1")
    loaded = nanoeval.load(final)
    expected = Engine(loaded.model, loaded.tokenizer).generate(
        ["fn main() {"], SamplingConfig(max_new_tokens=12, seed=5)).samples[0].text
    outputs = []
    for extra in ([], ["--no-stream"]):
        rc = main(["generate", "--ckpt", str(final), "--prompt", "fn main() {", "--max-new-tokens", "12",
                   "--seed", "5", *extra])
        captured = capsys.readouterr()
        assert rc == 0
        outputs.append(captured.out)
        assert "tok/s" in captured.err
    assert outputs[0] == "fn main() {" + expected + "\n"
    assert outputs[1] == outputs[0]


def test_generate_refuses_noncausal_without_bypass(tiny_checkpoint_factory, capsys):
    final = str(tiny_checkpoint_factory("haar-v5"))
    assert main(["generate", "--ckpt", final, "--prompt", "fn", "--max-new-tokens", "4"]) == 2
    assert "--inference-mode bypass" in capsys.readouterr().err
    assert main(["generate", "--ckpt", final, "--prompt", "fn", "--max-new-tokens", "4",
                 "--inference-mode", "bypass"]) == 0
    assert "mode=bypass" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def two_reports(tiny_checkpoint_factory, fixture_dataset, tmp_path_factory):
    base = tmp_path_factory.mktemp("compare")
    paths = []
    for recipe in ("engram-v1", "baseline-v1"):
        out = base / f"{recipe}.json"
        assert main(["score", "--ckpt", str(tiny_checkpoint_factory(recipe)), "--data", str(fixture_dataset),
                     "--out", str(out), "--max-new-tokens", "12", "--heldout-tokens", "256"]) == 0
        paths.append(out)
    return paths


def test_compare_reports_and_checkpoint_folder(two_reports, tiny_checkpoint_factory, tmp_path, capsys):
    md = tmp_path / "table.md"
    rc = main(["compare", *map(str, two_reports), str(tiny_checkpoint_factory("haar-v5")), "--md", str(md)])
    printed = capsys.readouterr().out
    assert rc == 0
    table = md.read_text()
    assert table in printed
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["run", "engram-v1", "baseline-v1", "haar-v5"]
    reports = [json.loads(p.read_text()) for p in two_reports]
    for row, report in zip(rows[1:3], reports):
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[4] == f"{report['heldout']['ce']:.4f}"
        assert cells[6].startswith(f"{report['generation']['valid_rate']:.3f} [")  # with a bootstrap interval
        assert cells[9] == "30" and cells[10] == "yes" and cells[11] == "causal"
    haar = [c.strip() for c in rows[3].split("|")[1:-1]]
    assert haar[6] == "-" and haar[9] == "0"  # no score report for it: training metrics only
    assert haar[10] == "no" and haar[1].endswith("M")  # causality and size from its config


def test_compare_bad_input_is_a_user_error(tmp_path, capsys):
    bogus = tmp_path / "x.json"
    bogus.write_text('{"schema": "something else"}')
    assert main(["compare", str(bogus)]) == 2
    assert "not a nanoeval score report" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "missing.json")]) == 2


def test_compare_shows_and_ranks_on_either_validator(two_reports, tmp_path, capsys):
    legacy = json.loads(two_reports[0].read_text())
    for s in legacy["samples"]:  # a report written before the validator choice: `valid` is tree-sitter's
        for key in ("valid_tree_sitter", "valid_rustc", "rustc_errors"):
            s.pop(key)
    legacy["generation"].pop("validator")
    paths = []
    for name, rustc_valid in (("legacy", None), ("none", False), ("all", True)):
        report = json.loads(json.dumps(legacy))
        report["checkpoint"]["run"] = name
        if rustc_valid is not None:
            report["generation"]["validator"] = "both"
            for s in report["samples"]:
                s.update(valid_tree_sitter=s["valid"], valid_rustc=rustc_valid, rustc_errors=[])
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))

    def table(*flags):
        assert main(["compare", *map(str, paths), *flags]) == 0
        lines = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and "---" not in r]
        return [[c.strip() for c in r.split("|")[1:-1]] for r in lines]

    ts = f"{legacy['generation']['valid_rate']:.3f} ["
    rows = table()
    assert rows[0][6] == "valid rate (tree-sitter)" and all(r[6].startswith(ts) for r in rows[1:])
    rows = table("--validator", "rustc", "--rank")
    assert rows[0][6] == "valid rate (rustc)"
    assert [(r[0], r[6][:5]) for r in rows[1:]] == [("all", "1.000"), ("none", "0.000"), ("legacy", "-")]
    rows = table("--validator", "both")
    assert rows[0][6:8] == ["valid rate (tree-sitter)", "valid rate (rustc)"] and rows[1][7] == "-"


# ---------------------------------------------------------------------------------------------- exit statuses


def test_console_exit_statuses_as_ci_sees_them(tiny_checkpoint_factory, tmp_path):
    """The process exit status of `python -m nanoeval`: 0 ok, 1 the check found a problem, 2 a user error."""
    import subprocess
    import sys

    good, bad = tmp_path / "good.rs", tmp_path / "bad.rs"
    good.write_text("fn main() {}\n")
    bad.write_text("fn main() { let = ; }\n")

    def status(*argv) -> tuple[int, str]:
        proc = subprocess.run([sys.executable, "-m", "nanoeval", *map(str, argv)], capture_output=True, text=True,
                              timeout=120)
        return proc.returncode, proc.stderr

    assert status("check-rust", good)[0] == 0
    assert status("check-rust", good, bad)[0] == 1
    code, err = status("check-rust", tmp_path / "missing.rs")
    assert code == 2 and err.strip() == f"nanoeval: error: no such file: {tmp_path / 'missing.rs'}"
    haar = tiny_checkpoint_factory("haar-v5")
    assert status("causality", "--ckpt", haar, "--seq-len", 32)[0] == 1
    code, err = status("causality", "--ckpt", haar, "--device", "tpu")
    assert code == 2 and "argument --device: invalid choice: 'tpu'" in err and "Traceback" not in err
