"""`nanotrain run`'s defaults: compile on for invocations (CPU or GPU) that run >= AUTO_COMPILE_MIN_STEPS steps, else
off; CUDA graphs on for a compiled small-batch run in one CUDA process, else off."""

import argparse

import pytest

from nanotrain.commands.run import AUTO_COMPILE_MIN_STEPS, GRAPHS_AUTO_MAX_BATCH, _auto_compile, _auto_cuda_graphs
from nanotrain.config import TrainConfig


def decide(compile_flag=None, steps=None, total=600, device="cpu", start=0):
    cfg = TrainConfig(total_steps=total)
    why = _auto_compile(argparse.Namespace(compile=compile_flag, steps=steps), cfg, device, start)
    return cfg.compile, why


@pytest.mark.parametrize("kw, on", [
    (dict(), True),                                                   # the tiny CPU run: 600 steps
    (dict(steps=AUTO_COMPILE_MIN_STEPS - 1), False),                  # a short invocation does not pay back
    (dict(steps=AUTO_COMPILE_MIN_STEPS), True),
    (dict(start=600 - AUTO_COMPILE_MIN_STEPS + 1), False),            # a resume close to the end
    (dict(device="cuda"), True),                                      # on a GPU as well (since the mHC rewrite)
    (dict(device="cuda", steps=10), False),
    (dict(compile_flag=False), False),                                # --no-compile
])
def test_auto_compile_rule(kw, on):
    compiled, why = decide(**kw)
    assert compiled is on
    assert (why is not None) is on and (not on or "--no-compile" in why)


def test_explicit_compile_is_left_alone():
    cfg = TrainConfig(total_steps=5, compile=True)
    assert _auto_compile(argparse.Namespace(compile=True, steps=None), cfg, "cpu", 0) is None and cfg.compile


def test_cuda_graphs_on_a_cpu_is_one_clear_line_and_writes_nothing(tmp_path, fixture_dataset, capsys):
    from nanotrain.cli import main

    code = main(["run", "engram-v1", "--cuda-graphs", "--device", "cpu", "--data", str(fixture_dataset),
                 "--out", str(tmp_path / "runs"), "--steps", "2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--cuda-graphs" in err and "single CUDA process" in err and "device cpu" in err
    assert not (tmp_path / "runs").exists()


def test_cuda_graphs_with_no_compile_is_a_contradiction(tmp_path, fixture_dataset, capsys):
    from nanotrain.cli import main

    code = main(["run", "engram-v1", "--cuda-graphs", "--no-compile", "--data", str(fixture_dataset),
                 "--out", str(tmp_path / "runs"), "--steps", "2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--cuda-graphs with --no-compile" in err
    assert not (tmp_path / "runs").exists()


def test_trainer_refuses_cuda_graphs_off_a_gpu(tmp_path, fixture_dataset):
    from nanotrain.data.shards import Dataset
    from nanotrain.errors import UserError
    from nanotrain.recipes import get_recipe
    from nanotrain.train import Trainer

    model_cfg, train_cfg = get_recipe("baseline-v1").build("tiny")
    with pytest.raises(UserError, match="--cuda-graphs: needs a single CUDA process"):
        Trainer(model_cfg=model_cfg, train_cfg=train_cfg, dataset=Dataset(fixture_dataset), run_dir=tmp_path / "r",
                recipe="baseline-v1", device="cpu", progress=False, cuda_graphs=True)


@pytest.mark.parametrize("kw, on, said", [
    (dict(), True, True),                                             # compiled B=2 on one GPU: host-bound
    (dict(batch=GRAPHS_AUTO_MAX_BATCH), True, True),
    (dict(batch=GRAPHS_AUTO_MAX_BATCH + 1), False, False),            # larger batches keep the GPU busy
    (dict(flag=True), True, False),                                   # --cuda-graphs: asked for, nothing to say
    (dict(flag=True, batch=16), True, False),                         # ... at any batch
    (dict(flag=False), False, False),                                 # --no-cuda-graphs
    (dict(compiled=False), False, False),                             # eager: graphs need compiling
    (dict(device="cpu"), False, False),
    (dict(world=2), False, False),                                    # DDP: graphs are one-process only
])
def test_auto_cuda_graphs_rule(kw, on, said):
    args = argparse.Namespace(cuda_graphs=kw.get("flag"))
    cfg = TrainConfig(batch_size=kw.get("batch", 2), compile=kw.get("compiled", True))
    graphs, why = _auto_cuda_graphs(args, cfg, kw.get("device", "cuda"), kw.get("world", 1))
    assert graphs is on and (why is not None) is said
    assert why is None or ("--no-cuda-graphs" in why and "\n" not in why)


@pytest.mark.parametrize("argv, value", [
    ([], None), (["--cuda-graphs"], True), (["--no-cuda-graphs"], False),
    (["--cuda-graphs", "--no-cuda-graphs"], False),
])
def test_cuda_graphs_flags_parse_to_auto_on_off(argv, value):
    from nanotrain.cli import build_parser

    args = build_parser("nanotrain", "", "nanotrain.commands").parse_args(["run", "engram-v1", *argv])
    assert args.cuda_graphs is value

