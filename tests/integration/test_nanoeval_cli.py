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
                     "--out", str(out), "--max-new-tokens", "12", "--heldout-tokens", "all", "--prompts", "seed"]) == 0
        paths.append(out)
    return paths


def test_compare_reports_and_checkpoint_folder(two_reports, tiny_checkpoint_factory, tmp_path, capsys):
    md = tmp_path / "table.md"
    rc = main(["compare", *map(str, two_reports), str(tiny_checkpoint_factory("haar-v5")), "--md", str(md)])
    printed = capsys.readouterr().out
    assert rc == 0
    table = md.read_text()
    assert table in printed
    rows = _tables(table)[0]
    assert [r.split("|")[1].strip() for r in rows] == ["run", "engram-v1", "baseline-v1", "haar-v5"]
    reports = [json.loads(p.read_text()) for p in two_reports]
    for row, report in zip(rows[1:3], reports):
        cells = [c.strip() for c in row.split("|")[1:-1]]
        lo, hi = report["heldout"]["ce_ci"]
        assert cells[4] == f"{report['heldout']['ce']:.4f} [{lo:.3f}, {hi:.3f}]"  # bootstrap over documents
        assert cells[6].startswith(f"{report['generation']['valid_rate']:.3f} [")  # with a Wilson interval
        assert cells[9] == "30" and cells[10] == "yes" and cells[11] == "causal"
    haar = [c.strip() for c in rows[3].split("|")[1:-1]]
    assert haar[6] == "-" and haar[9] == "0"  # no score report for it: training metrics only
    assert haar[10] == "no" and haar[1].endswith("M")  # causality and size from its config
    settings, pairs = _tables(table)[1:]
    assert settings[1].split("|")[1:-1] == [" engram-v1 ", " 4 ", " 12 ", " 0.700 ", " 40 ", " 1.000 ", " 30 ",
                                            " seed ", f" {reports[0]['heldout']['n_tokens']:,} "]
    assert "warning" not in table  # both reports were made with the same settings
    assert [p.split("|")[1].strip() for p in pairs[1:]] == ["engram-v1 vs baseline-v1"]


def _tables(text: str) -> list[list[str]]:
    """The rows (header included, separator left out) of each markdown table in `text`."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("| "):
            current.append(line)
        elif line.startswith("|---"):
            continue
        elif current:
            tables.append(current)
            current = []
    return tables


def _report(name: str, valid: list[bool], doc_nll: list[float] | None, max_new_tokens: int = 64) -> dict:
    """A score report with the given per-sample verdicts and per-document losses (10 tokens per document)."""
    from nanoeval.report import SCHEMA, sample_intervals

    samples = [{"prompt": f"fn p{i}() {{", "text": "", "finish": "eos", "valid": v, "valid_tree_sitter": v,
                "valid_rustc": None, "bracket_balance": 1.0, "error_density": 0.0, "distinct_3": 1.0}
               for i, v in enumerate(valid)]
    heldout = None
    if doc_nll is not None:
        ce = sum(doc_nll) / (10 * len(doc_nll))
        heldout = {"ce": ce, "bpb": ce / 2, "n_tokens": 10 * len(doc_nll), "doc_tokens": [10] * len(doc_nll),
                   "doc_nll": doc_nll, "tokens_sha256": "ab" * 32, "ce_ci": None, "bpb_ci": None}
    return {"schema": SCHEMA,
            "checkpoint": {"run": name, "recipe": "baseline-v1", "step": 100, "train_loss": 3.0, "val_ce": None},
            "model": {"params": 1000, "causal": True, "inference_mode": "causal"}, "heldout": heldout,
            "generation": {"n_samples": len(valid), "valid_rate": sum(valid) / len(valid), "bracket_balance": 1.0,
                           "distinct_3": 1.0, "prompts": "seed", "intervals": sample_intervals(samples),
                           "sampling": {"max_new_tokens": max_new_tokens, "temperature": 0.7, "top_k": 40,
                                        "top_p": 1.0}},
            "samples": samples}


def test_compare_names_a_winner_only_when_the_interval_excludes_zero(tmp_path, capsys):
    good = [i % 2 == 0 for i in range(200)]  # 0.5
    reports = {
        "strong": _report("strong", good, [20.0 + (i % 3) for i in range(40)]),
        "twin": _report("twin", [not v for v in good], [20.0 + (i % 3) + (0.5 if i % 2 else -0.5) for i in range(40)]),
        "weak": _report("weak", [i % 10 == 0 for i in range(200)], [30.0 + (i % 3) for i in range(40)]),
        "legacy": _report("legacy", good, None, max_new_tokens=32),
    }
    paths = []
    for name, report in reports.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))
    assert main(["compare", *map(str, paths)]) == 0
    out = capsys.readouterr().out
    cells = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in _tables(out)[2][1:]}
    # val CE: strong 2.0x vs weak 3.0x over the same 40 documents -> strong; twin is +-0.05 per document, 0 on
    # average.
    assert cells["strong vs weak"][0].endswith(": strong")
    assert cells["strong vs twin"][0].endswith(": not distinguishable")
    assert cells["strong vs legacy"][0].startswith("no interval")
    # valid rate: 0.5 vs 0.1 over 200 paired samples -> strong; 0.5 vs 0.5 (other samples) -> no winner.
    assert cells["strong vs weak"][2].endswith(": strong") and cells["strong vs weak"][2].startswith("+0.400 [")
    assert cells["strong vs twin"][2].startswith("+0.000 [") and cells["strong vs twin"][2].endswith(
        ": not distinguishable")
    main_rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in _tables(out)[0][1:]}
    assert main_rows["legacy"][3] == "-"  # no held-out loss in that report
    assert main_rows["strong"][5].startswith("0.500 [0.43, 0.57]")  # Wilson interval of 100/200
    assert "**warning**: the reports were made with different max new tokens" in out
    assert "legacy 32" in out


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
        lines = _tables(capsys.readouterr().out)[0]
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
