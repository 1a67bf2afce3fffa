"""One run across machines: two single-process "nodes" on 127.0.0.1 join through torchrun's c10d rendezvous and
train under gloo exactly like one process with the same global batch (`nanotrain run` both times)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_cli import nanotrain, small_tiny  # noqa: F401  (fixture)
from test_train_corpus import fixture_dataset, one_thread  # noqa: F401  (fixtures)
from test_train_ddp import _free_port

from nanotrain import checkpoint as ckpt
from nanotrain.files import read_metrics

# Two torchrun agents, each starting one worker that imports torch and trains: ~30 s on the shared 2-core machine.
pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
# What each node runs: `nanotrain run` at the shrunk tiny scale of test_train_cli (the `small_tiny` fixture).
LAUNCH = """\
import sys
from nanotrain import recipes
from nanotrain.cli import main
from test_train_cli import TEST_SHAPE, TEST_TRAIN
recipes.SCALE_MODEL["tiny"] = TEST_SHAPE
recipes.SCALE_TRAIN["tiny"] = TEST_TRAIN
sys.exit(main(sys.argv[1:]))
"""


def losses(run_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    train, val = read_metrics(run_dir / "metrics.jsonl")
    return [(r["step"], r["loss"]) for r in train], [(r["step"], r["val_ce"]) for r in val]


def test_two_nodes_with_c10d_rendezvous_match_one_process(capsys, tmp_path, fixture_dataset, small_tiny):
    run = ["run", "baseline-v1", "--scale", "tiny", "--data", str(fixture_dataset), "--device", "cpu",
           "--no-compile", "--no-progress"]
    code, _, err = nanotrain(capsys, *run, "--out", tmp_path / "single")
    assert code == 0, err

    launch = tmp_path / "launch.py"
    launch.write_text(LAUNCH)
    endpoint = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), str(HERE), os.environ.get("PYTHONPATH", "")])}
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "multinode-test",
         "--max-restarts", "0", str(launch), *run, "--out", str(tmp_path / "multi")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n\n".join(outputs)
    assert sum("2 process(es) on cpu" in out for out in outputs) == 1, outputs  # rank 0 speaks, on one node

    single, multi = tmp_path / "single" / "baseline-v1", tmp_path / "multi" / "baseline-v1"
    (train_1, val_1), (train_2, val_2) = losses(single), losses(multi)
    assert [s for s, _ in train_2] == [s for s, _ in train_1] == [2, 4, 6, 8, 10]
    assert [loss for _, loss in train_2] == pytest.approx([loss for _, loss in train_1], abs=1e-4)
    assert [s for s, _ in val_2] == [s for s, _ in val_1] and val_1
    assert [v for _, v in val_2] == pytest.approx([v for _, v in val_1], abs=1e-4)
    assert train_1[-1][1] < train_1[0][1]
    assert ckpt.load_trainer_state(multi / "final")["world_size"] == 2
    assert ckpt.load_trainer_state(single / "final")["world_size"] == 1
