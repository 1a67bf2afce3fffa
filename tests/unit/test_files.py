"""nanotrain.files: the one atomic writer (fsync, unique temporary name, mode 0644) and the metrics.jsonl reader."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest

from nanotrain.files import atomic_write, read_metrics, write_json


def test_write_json_replaces_atomically_and_leaves_no_temp(tmp_path):
    out = write_json(tmp_path / "sub" / "r.json", {"a": 1})
    assert json.loads(out.read_text()) == {"a": 1}
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]
    with pytest.raises(TypeError):
        write_json(out, {"bad": object()})
    assert json.loads(out.read_text()) == {"a": 1}
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]


def test_files_are_0644_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        path = atomic_write(tmp_path / "a.txt", "x")
        atomic_write(tmp_path / "b.bin", b"\x00\x01")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o644
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_concurrent_writers_never_share_a_temporary_file(tmp_path, monkeypatch):
    """Two writers of the same target each get their own temporary name; the result is one writer's whole file."""
    names = []
    real_replace = os.replace

    def spy(src, dst):
        names.append(os.path.basename(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    texts = ["a" * 100_000, "b" * 100_000]
    threads = [threading.Thread(target=atomic_write, args=(tmp_path / "r.txt", t)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 2 and all(n.startswith(".r.txt.") and n.endswith(".tmp") for n in names)
    assert (tmp_path / "r.txt").read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["r.txt"]


def test_read_metrics_drops_rows_of_a_lost_timeline(tmp_path):
    rows = [("train", 4, 1.0), ("train", 8, 2.0), ("val", 8, 2.5), ("train", 12, 3.0),  # crashed after step 12
            ("train", 8, 5.0), ("val", 8, 5.5), ("train", 12, 6.0)]  # resumed from step_4
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"kind": k, "step": s, "loss" if k == "train" else "val_ce": v}) + "\n"
                            for k, s, v in rows) + '[1, 2]\n{"kind": "train", "step": "9"}\n{"kind": "train", "st')
    train, val = read_metrics(path)
    assert [(r["step"], r["loss"]) for r in train] == [(4, 1.0), (8, 5.0), (12, 6.0)]
    assert [(r["step"], r["val_ce"]) for r in val] == [(8, 5.5)]
    assert read_metrics(tmp_path / "missing.jsonl") == ([], [])
