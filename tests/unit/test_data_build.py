"""`nanotrain data build`: bad files are skipped and counted, the split is by crate (or deterministic by file), the
round trip is exact, and an existing dataset is never overwritten (or half-written) without --force."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nanotrain.data import corpus
from nanotrain.data.shards import Dataset, build_dataset
from nanotrain.data.tokenizer import EOS_ID, PAD_ID, load_tokenizer
from nanotrain.errors import UserError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "rust"


def _fixture_files() -> list[Path]:
    return sorted(FIXTURES.rglob("*.rs"))


def _read_listing(folder: Path) -> list[dict]:
    lines = (folder / "files.tsv").read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, line.split("\t"))) for line in lines[1:]]


@pytest.fixture(scope="module")
def messy_src(tmp_path_factory) -> Path:
    """The fixtures plus one file of every kind the builder must skip."""
    src = tmp_path_factory.mktemp("messy") / "src"
    shutil.copytree(FIXTURES, src / "good")
    bad = src / "bad"
    bad.mkdir()
    (bad / "binary.rs").write_bytes(b"fn main() {}\n" + b"\x00\x01\x02" * 40)
    (bad / "latin1.rs").write_bytes("// caf\xe9 au lait\nfn main() { println!(\"hello, world\"); }\n".encode("latin-1"))
    (bad / "empty.rs").write_bytes(b"")
    (bad / "tiny.rs").write_text("fn f() {}\n")
    (bad / "huge.rs").write_text("// generated\n" + "pub const X: u32 = 1;\n" * 25_000)
    (bad / "broken.rs").write_text("fn main() {\n    let x = ;\n    println!(\"{}\", x);\n}\n")
    (bad / "copy_of_ring_buffer.rs").write_bytes((FIXTURES / "collections" / "ring_buffer.rs").read_bytes())
    for skipped_dir in ("target/debug/build", "vendor/somecrate/src", "library/stdarch/crates"):
        d = bad / skipped_dir
        d.mkdir(parents=True)
        (d / "gen.rs").write_text("pub fn generated() -> u32 {\n    42 // a perfectly fine file in a skipped dir\n}\n")
    (bad / "notes.txt").write_text("not rust\n" * 20)
    return src


@pytest.fixture(scope="module")
def messy_dataset(tmp_path_factory, messy_src) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("messy-out") / "ds"
    meta = build_dataset([messy_src], out, vocab_size=512, split="70/15/15", workers=1, progress=False)
    return out, meta


def test_bad_files_are_skipped_and_counted(messy_dataset):
    out, meta = messy_dataset
    n_good = len(_fixture_files())
    assert meta["skipped"]["binary"] == 1
    assert meta["skipped"]["non_utf8"] == 1
    assert meta["skipped"]["empty"] == 1
    assert meta["skipped"]["too_small"] == 1
    assert meta["skipped"]["too_large"] == 1
    assert meta["skipped"]["excluded_path"] == 3
    assert meta["duplicates_dropped"] == 1
    assert meta["parse_filter_rejects"] == 1
    assert meta["files_seen"] == n_good + 10
    assert meta["files_kept"] == n_good
    kept = {row["path"] for row in _read_listing(out)}
    # Of two identical files the first path (sorted) is kept: here the copy under bad/.
    assert [p for p in kept if "/bad/" in p] == ["src/bad/copy_of_ring_buffer.rs"]
    assert json.loads((out / "meta.json").read_text()) == meta


def test_parse_filter_can_be_turned_off(tmp_path, messy_src):
    meta = build_dataset([messy_src / "bad"], tmp_path / "ds", vocab_size=300, parse_filter=False,
                         split="1/0/0", workers=1, progress=False)
    assert meta["parse_filter"] is False and meta["parse_filter_rejects"] == 0
    # broken.rs and the duplicated fixture are the only usable files in bad/
    assert meta["files_kept"] == 2


def test_split_is_by_file_deterministic_and_independent_of_other_files(tmp_path):
    build_dataset([FIXTURES], tmp_path / "ds", vocab_size=300, split="70/15/15", workers=1, progress=False,
                  split_by="file")
    rows = _read_listing(tmp_path / "ds")
    shas = [r["sha256"] for r in rows]
    assert len(shas) == len(set(shas)), "a file landed in two splits"
    assert json.loads((tmp_path / "ds" / "meta.json").read_text())["split_rule"] == {"by": "file"}
    # Building from a subset of the files puts each remaining file in the same split.
    subset = tmp_path / "subset"
    shutil.copytree(FIXTURES / "collections", subset / "collections")
    shutil.copytree(FIXTURES / "parsing", subset / "parsing")
    shutil.copytree(FIXTURES / "cli", subset / "cli")  # so that every split of 70/15/15 gets a file
    build_dataset([subset], tmp_path / "ds2", vocab_size=300, split="70/15/15", workers=1, progress=False,
                  split_by="file")
    where = {r["sha256"]: r["split"] for r in rows}
    for r in _read_listing(tmp_path / "ds2"):
        assert where[r["sha256"]] == r["split"]
    # And the function itself is pure.
    assert corpus.split_of("ab" * 32, 0, (0.5, 0.25, 0.25)) == corpus.split_of("ab" * 32, 0, (0.5, 0.25, 0.25))


def test_same_inputs_give_identical_datasets(tmp_path):
    a = build_dataset([FIXTURES], tmp_path / "a", vocab_size=400, split="70/15/15", workers=1, progress=False)
    b = build_dataset([FIXTURES], tmp_path / "b", vocab_size=400, split="70/15/15", workers=2, progress=False)
    assert a["tokenizer_sha256"] == b["tokenizer_sha256"]
    for s in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{s}.bin").read_bytes() == (tmp_path / "b" / f"{s}.bin").read_bytes()


def test_round_trip_is_exact_on_every_fixture_file(fixture_dataset):
    ds = Dataset(fixture_dataset)
    tok = ds.tokenizer
    for path in _fixture_files():
        text = path.read_text(encoding="utf-8")
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text, path.name
        assert EOS_ID not in ids and PAD_ID not in ids, f"{path.name}: a special id inside a file"
    assert ds.meta["roundtrip"] == {"checked": len(_fixture_files()), "failed": 0, "ok": True, "dropped": []}
    # Newlines, CRLF, tabs and "<eos>" written in source all survive (the original's tokenizer lost every newline).
    for s in ("fn main() {\n    x\r\n\ty\n}\n", 'let s = "<eos><pad>";'):
        assert tok.decode(tok.encode(s).ids) == s


def test_bins_hold_files_separated_by_eos(fixture_dataset):
    ds = Dataset(fixture_dataset)
    rows = _read_listing(fixture_dataset)
    for split in ("train", "val", "test"):
        toks = ds.tokens(split)
        assert toks.dtype == np.uint16
        assert int(toks.max()) < ds.vocab_size
        n_files = sum(1 for r in rows if r["split"] == split)
        assert int((toks == EOS_ID).sum()) == n_files == ds.meta["splits"][split]["files"]
        assert len(toks) == 0 or toks[-1] == EOS_ID
    # The first train document decodes to exactly its source file.
    toks = np.asarray(Dataset(fixture_dataset).tokens("train"))
    first_doc = toks[: int(np.argmax(toks == EOS_ID))].tolist()
    text = ds.tokenizer.decode(first_doc)
    first = next(r for r in rows if r["split"] == "train")
    assert len(text.encode()) == int(first["bytes"])
    assert ds.bytes_per_token("train") == pytest.approx(ds.meta["splits"]["train"]["bytes_per_token"], rel=1e-3)


def test_tokenizer_ids_and_vocab_range(tmp_path):
    build_dataset([FIXTURES], tmp_path / "d", vocab_size=300, workers=1, split="1/0/0", progress=False)
    tok = load_tokenizer(tmp_path / "d" / "tokenizer.json")
    assert tok.token_to_id("<pad>") == PAD_ID and tok.token_to_id("<eos>") == EOS_ID
    assert tok.get_vocab_size() == 300
    for bad in (65536, 100_000, 10):
        with pytest.raises(UserError, match="--vocab"):
            build_dataset([FIXTURES], tmp_path / f"v{bad}", vocab_size=bad, progress=False)
        assert not (tmp_path / f"v{bad}").exists()


def test_refuses_to_overwrite_without_force(tmp_path, fixture_dataset):
    out = tmp_path / "ds"
    shutil.copytree(fixture_dataset, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match="--force"):
        build_dataset([FIXTURES / "math"], out, vocab_size=300, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    meta = build_dataset([FIXTURES / "math"], out, vocab_size=300, split="1/0/0", force=True, workers=1,
                         progress=False)
    assert meta["files_kept"] == 3
    assert Dataset(out).meta["files_kept"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ds"], "temporary folders left behind"


def test_failed_build_leaves_nothing_behind(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "tiny.rs").write_text("fn f(){}")
    with pytest.raises(UserError, match="no usable .rs files"):
        build_dataset([empty], tmp_path / "out", vocab_size=300, progress=False)
    with pytest.raises(UserError, match="no .rs files found"):
        build_dataset([_mkdir(tmp_path / "none")],
                      tmp_path / "out", vocab_size=300, progress=False)
    with pytest.raises(UserError, match="not a folder"):
        build_dataset([tmp_path / "missing"], tmp_path / "out", vocab_size=300, progress=False)
    with pytest.raises(UserError, match="--split"):
        build_dataset([FIXTURES], tmp_path / "out", split="98/1", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "none"]


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p


def test_source_manifest_is_recorded(tmp_path):
    src = tmp_path / "debian"
    shutil.copytree(FIXTURES / "collections", src / "x" / "librust-demo-dev" / "usr/share/cargo/registry/demo-1.0.0")
    manifest = {"schema_version": 1, "packages": [
        {"package": "librust-demo-dev", "version": "1.0.0-1", "license": "MIT OR Apache-2.0", "rs_files": 4,
         "rs_bytes": 123, "path": "x/librust-demo-dev"}]}
    (src / "manifest.json").write_text(json.dumps(manifest))
    meta = build_dataset([src], tmp_path / "ds", vocab_size=300, split="1/0/0", progress=False)
    pkgs = meta["sources"][0]["packages"]
    assert pkgs == [{"package": "librust-demo-dev", "version": "1.0.0-1", "license": "MIT OR Apache-2.0",
                     "rs_files": 4, "rs_bytes": 123}]


def _crate_corpus(root: Path) -> dict[str, str]:
    """A registry-like corpus of 12 crates (one in two versions, one with a nested test crate, one without a
    Cargo.toml): path prefix -> the crate every file under it belongs to."""
    expected: dict[str, str] = {}
    for i in range(10):
        name = f"crate{i}"
        versions = ("1.0.0", "2.1.0") if i == 3 else ("0.1.0",)
        for v in versions:
            folder = root / "registry" / f"{name}-{v}"
            (folder / "src" / "nested").mkdir(parents=True)
            (folder / "Cargo.toml").write_text(f'[package]\nname = "{name}"\nversion = "{v}"\n')
            for j in range(3 + i):
                sub = "src/nested" if j % 2 else "src"
                (folder / sub / f"m{j}.rs").write_text(
                    f"pub fn {name}_{v.replace('.', '_')}_{j}(x: u32) -> u32 {{\n    x * {i + 2} + {j}\n}}\n" * (1 + j))
            expected[f"src/registry/{name}-{v}/"] = name
    tests_crate = root / "registry" / "crate5-0.1.0" / "tests" / "fixture-crate"
    (tests_crate / "src").mkdir(parents=True)
    (tests_crate / "Cargo.toml").write_text('[package]\nname = "crate5-fixture"\n')
    (tests_crate / "src" / "lib.rs").write_text("pub fn fixture_crate_entry() -> usize {\n    42\n}\n" * 2)
    expected["src/registry/crate5-0.1.0/tests/fixture-crate/"] = "crate5-fixture"
    loose = root / "loose" / "deep"
    loose.mkdir(parents=True)
    for j in range(4):
        (loose / f"l{j}.rs").write_text(f"pub fn loose_{j}() -> i64 {{\n    -{j}\n}}\n" * (2 + j))
    expected["src/loose/deep/"] = "src/loose/deep"
    return expected


def test_crate_split_keeps_every_crate_in_one_split(tmp_path):
    src = tmp_path / "src"
    expected = _crate_corpus(src)
    meta = build_dataset([src], tmp_path / "ds", vocab_size=300, split="60/20/20", workers=1, progress=False,
                         parse_filter=False, heldout_min_files=4, heldout_min_tokens=0)
    rows = _read_listing(tmp_path / "ds")
    splits_of: dict[str, set[str]] = {}
    for r in rows:
        owner = max((p for p in expected if r["path"].startswith(p)), key=len)
        splits_of.setdefault(expected[owner], set()).add(r["split"])
    assert len(splits_of) == 12
    spanning = {c: s for c, s in splits_of.items() if len(s) > 1}
    assert not spanning, f"crates in two splits: {spanning}"
    assert {s for ss in splits_of.values() for s in ss} == {"train", "val", "test"}
    assert meta["split_rule"] == {"by": "crate", "heldout_min_files": 4, "heldout_min_tokens": 0,
                                  "heldout_max_share": corpus.HELDOUT_MAX_SHARE}
    for s in ("val", "test"):
        assert meta["splits"][s]["files"] >= 4
        assert meta["splits"][s]["crates"] == len(meta["heldout_crates"][s])
        assert set(meta["heldout_crates"][s]) == {c for c, ss in splits_of.items() if ss == {s}}
    # Same corpus and seed: the same split; another seed draws other crates.
    again = build_dataset([src], tmp_path / "ds2", vocab_size=300, split="60/20/20", workers=1, progress=False,
                          parse_filter=False, heldout_min_files=4, heldout_min_tokens=0)
    assert again["heldout_crates"] == meta["heldout_crates"]
    other = [build_dataset([src], tmp_path / f"s{k}", vocab_size=300, split="60/20/20", workers=1, seed=k,
                           progress=False, parse_filter=False, heldout_min_files=4, heldout_min_tokens=0)
             ["heldout_crates"] for k in (1, 2, 3)]
    assert any(o != meta["heldout_crates"] for o in other)


def _files(crate: str, n: int, nbytes: int) -> list[corpus.SourceFile]:
    return [corpus.SourceFile(f"{crate}/{i}.rs", "", f"{crate}{i}", nbytes, crate) for i in range(n)]


def test_crate_split_floor_and_cap():
    # 40 crates of 10 files x 1 kB: 1% of 400 kB would be one crate; the 30-file floor takes three.
    files = [f for c in range(40) for f in _files(f"c{c}", 10, 1000)]
    where = corpus.assign_crate_splits(files, 0, (0.98, 0.01, 0.01), min_files=30, min_tokens=0)
    assert sum(1 for s in where.values() if s == "val") == 3
    assert sum(1 for s in where.values() if s == "test") == 3
    # A floor the corpus cannot meet stops at the cap (10% of the corpus: four crates), never beyond.
    where = corpus.assign_crate_splits(files, 0, (0.98, 0.01, 0.01), min_files=10_000, min_tokens=0)
    assert sum(1 for s in where.values() if s == "val") == 4
    # The token floor counts bytes at EST_BYTES_PER_TOKEN: 6,000 tokens ~ 19.8 kB -> two crates of 10 kB.
    where = corpus.assign_crate_splits(files, 0, (0.98, 0.01, 0.01), min_files=0, min_tokens=6000)
    assert sum(1 for s in where.values() if s == "test") == 2
    # A crate too big for the cap is skipped, and one crate always stays in train.
    big = _files("huge", 100, 10_000) + _files("small", 10, 100)
    where = corpus.assign_crate_splits(big, 0, (0.5, 0.25, 0.25), min_files=1000, min_tokens=0)
    assert where["huge"] == "train" and where["small"] in ("val", "test")
    # Eight crates of 12.5% each: none fits a 10% cap, so val and test take one crate each.
    even = [f for c in range(8) for f in _files(f"e{c}", 10, 1000)]
    where = corpus.assign_crate_splits(even, 0, (0.8, 0.1, 0.1), min_files=100, min_tokens=0)
    assert sorted(where.values()).count("val") == 1 and sorted(where.values()).count("test") == 1
