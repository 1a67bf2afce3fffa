"""Session files and plans: sessions/seed.toml gives the original two-round plan on GPUs 0,1 (simulated on a machine
without them), a sequential plan on one GPU or the CPU, and every mistake in a session file is one line naming
the file and the key."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from nanotrain.cli import main
from nanotrain.errors import UserError
from nanotrain.session import Slot, build_plan, load_session, parse_gpus

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "sessions" / "seed.toml"


def rounds(plan) -> list[list[tuple[str, str]]]:
    return [[(p.run.name, p.slot.label) for p in rnd] for rnd in plan.rounds]


def dry_run(capsys, tmp_path, *flags) -> tuple[int, str, str]:
    code = main(["session", str(SEED), "--dry-run", "--runs", str(tmp_path), *flags])
    out = capsys.readouterr()
    return code, out.out, out.err


def plan_rounds(text: str) -> list[list[tuple[str, str]]]:
    """The (run, device) entries of each 'round N:' block of a printed plan."""
    out: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if re.match(r"^round \d+:$", line):
            out.append([])
        elif out and (m := re.match(r"^  (GPU \d+|CPU)\s+(\S+)\s", line)):
            out[-1].append((m.group(2), m.group(1)))
        elif out and not line.startswith("  "):
            break
    return out


def test_seed_session_file_is_the_original_session():
    s = load_session(SEED)
    assert s.name == "seed"
    assert [(r.name, r.recipe, r.gpu) for r in s.runs] == [
        ("haar-v5", "haar-v5", 0), ("engram-v1", "engram-v1", 1), ("baseline-v1", "baseline-v1", 0),
        ("engram-v2", "engram-v2", 1)]
    assert s.run("engram-v2").resume_from == "engram-v1"
    assert s.run("engram-v2").needs == ("engram-v1",)


def test_two_gpus_give_the_original_two_rounds():
    plan = build_plan(load_session(SEED), [Slot(0), Slot(1)], "full")
    assert rounds(plan) == [[("haar-v5", "GPU 0"), ("engram-v1", "GPU 1")],
                            [("baseline-v1", "GPU 0"), ("engram-v2", "GPU 1")]]
    assert plan.placement("engram-v2").after == "engram-v1"
    assert plan.placement("baseline-v1").after == "haar-v5"
    assert plan.total_steps["engram-v2"] > plan.total_steps["engram-v1"]


def test_dry_run_with_two_gpus_prints_the_original_plan_without_gpus(capsys, tmp_path):
    code, out, err = dry_run(capsys, tmp_path, "--gpus", "0,1")
    assert code == 0, err
    assert plan_rounds(out) == [[("haar-v5", "GPU 0"), ("engram-v1", "GPU 1")],
                                [("baseline-v1", "GPU 0"), ("engram-v2", "GPU 1")]]
    import torch

    if torch.cuda.device_count() < 2:
        assert "simulated" in out
    engram_v2 = next(line for line in out.splitlines() if re.match(r"^  GPU 1\s+engram-v2\s", line))
    assert "waits for engram-v1" in engram_v2 and "continues engram-v1/final" in engram_v2
    baseline = next(line for line in out.splitlines() if re.match(r"^  GPU 0\s+baseline-v1\s", line))
    assert "after haar-v5 frees GPU 0" in baseline and "waits for" not in baseline
    assert "scale full" in out  # auto is full on GPUs
    cmds = [line for line in out.splitlines() if "python -m nanotrain run" in line]
    assert len(cmds) == 4
    assert "CUDA_VISIBLE_DEVICES=1" in cmds[3] and f"--resume {tmp_path}/seed/engram-v1/final" in cmds[3]
    assert "CUDA_VISIBLE_DEVICES=0" in cmds[0] and "--resume auto" in cmds[0]


@pytest.mark.parametrize("gpus", ["cpu", "0"])
def test_one_device_runs_sequentially_with_engram_v2_after_engram_v1(capsys, tmp_path, gpus):
    code, out, err = dry_run(capsys, tmp_path, "--gpus", gpus, "--scale", "tiny")
    assert code == 0, err
    got = plan_rounds(out)
    device = "CPU" if gpus == "cpu" else "GPU 0"
    assert all(len(r) == 1 for r in got) and {d for r in got for _, d in r} == {device}
    order = [r[0][0] for r in got]
    assert sorted(order) == ["baseline-v1", "engram-v1", "engram-v2", "haar-v5"]
    assert order.index("engram-v2") > order.index("engram-v1")
    assert "scale tiny" in out


def test_gpu_preference_and_dependencies_place_runs(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[[run]]\nname = "a"\nrecipe = "baseline"\ngpu = 1\n'
                 '[[run]]\nname = "b"\nrecipe = "baseline"\n'
                 '[[run]]\nname = "c"\nrecipe = "baseline"\ndepends_on = ["b"]\ngpu = 0\n')
    plan = build_plan(load_session(f), [Slot(0), Slot(1)], "tiny")
    assert rounds(plan) == [[("b", "GPU 0"), ("a", "GPU 1")], [("c", "GPU 0")]]
    plan = build_plan(load_session(f), [Slot(None)], "tiny")
    assert rounds(plan) == [[("a", "CPU")], [("b", "CPU")], [("c", "CPU")]]


def test_gpus_flag_is_checked(capsys, tmp_path):
    assert parse_gpus("0,1") == [0, 1] and parse_gpus("cpu") is None
    for bad in ("x", "0,0", "-1", ","):
        with pytest.raises(UserError, match=f"--gpus {re.escape(bad)}: expected"):
            parse_gpus(bad)
    import torch

    if torch.cuda.device_count() < 8:
        code = main(["session", str(SEED), "--gpus", "6,7", "--runs", str(tmp_path)])
        err = capsys.readouterr().err
        assert code == 2 and "--gpus 6,7:" in err and "do not exist" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "seed").exists()


BAD_FILES = [
    ('[[run]]\nname = "a"\nrecipe = "baseline"\nsteps_total = 5\n', "run 'a': unknown key 'steps_total'"),
    ('[[run]]\nname = "a"\n', "run 'a': missing key 'recipe'"),
    ('[[run]]\nrecipe = "baseline"\n', "[[run]] #1: missing key 'name'"),
    ('[[run]]\nname = "a"\nrecipe = "gpt-9"\n', "run 'a': key 'recipe' = 'gpt-9' is not a recipe"),
    ('[[run]]\nname = "a"\nrecipe = "baseline"\ndepends_on = ["zz"]\n',
     "run 'a': key 'depends_on' names unknown run 'zz'"),
    ('[[run]]\nname = "a"\nrecipe = "baseline"\nresume_from = "zz"\n',
     "run 'a': key 'resume_from' names unknown run 'zz'"),
    ('[[run]]\nname = "a"\nrecipe = "baseline"\ndepends_on = ["b"]\n'
     '[[run]]\nname = "b"\nrecipe = "baseline"\ndepends_on = ["a"]\n', "dependency cycle (a -> b -> a)"),
    ('[[run]]\nname = "a"\nrecipe = "baseline"\ndepends_on = "a"\n', "run 'a': key 'depends_on' names the run itself"),
    ('[[run]]\nname = "a"\nrecipe = "baseline"\n[[run]]\nname = "a"\nrecipe = "baseline"\n',
     "run 'a': key 'name' is used by two runs"),
    ('[[run]]\nname = "a"\nrecipe = "baseline"\ntotal_steps = 0\n',
     "run 'a': key 'total_steps' = 0; --total-steps 0: must be positive"),
    ('[[run]]\nname = "a"\nrecipe = "baseline"\neval_every = -1\n',
     "run 'a': key 'eval_every' = -1; --eval-every -1: must not be negative"),
    ('[[run]]\nname = "a"\nrecipe = "baseline"\ntime_budget = inf\n',
     "run 'a': key 'time_budget' = inf; --time-budget inf: must be a finite number of minutes"),
    ('[[run]]\nname = "a"\nrecipe = "baseline"\ndevice = "cpu"\n', "run 'a': unknown key 'device'"),
    ('[[run]]\nname = "a"\nrecipe = "baseline"\n[score]\nsamples_per_prompt = 0\n',
     "[score]: key 'samples_per_prompt' = 0; --samples-per-prompt 0: must be at least 1"),
    ('[[run]]\nname = "a"\nrecipe = "baseline"\n[score]\ntop_p = 2.0\n',
     "[score]: key 'top_p' = 2.0; --top-p 2.0: must be in (0, 1]"),
    ('[[run]]\nname = "a"\nrecipe = "baseline"\n[score]\nvalidator = "clang"\n',
     "[score]: key 'validator' = 'clang'; expected one of"),
    ('[[run]]\nname = "a"\nrecipe = "baseline"\n[score]\nenabled = 1\n',
     "[score]: key 'enabled' must be true or false"),
    ('[[run]]\nname = "a"\nrecipe = "baseline"\nbatch_size = "8"\n', "run 'a': key 'batch_size' must be an integer"),
    ('[[run]]\nname = "a"\nrecipe = "baseline"\ndtype = "fp8"\n', "run 'a': key 'dtype' = 'fp8'; expected one of"),
    ('[[run]]\nname = "a"\nrecipe = "engram-v2"\n', "run 'a': recipe engram-v2 continues another run's final"),
    ('[session]\nnam = "x"\n[[run]]\nname = "a"\nrecipe = "baseline"\n', "[session]: unknown key 'nam'"),
    ('[[run]]\nname = "a"\nrecipe = "baseline"\n[score]\nsamples = 3\n', "[score]: unknown key 'samples'"),
    ('[session]\nname = "x"\n', "no runs"),
    ('[[run]\nname = "a"\n', "not a valid TOML file"),
    ('runs = 3\n', "unknown key 'runs'"),
]


@pytest.mark.parametrize("text,message", BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_bad_session_files_are_one_line_errors(capsys, tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(UserError) as e:
        load_session(f)
    assert str(e.value).startswith(f"{f}: ") and message in str(e.value)
    code = main(["session", str(f), "--dry-run", "--runs", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"nanotrain: error: {e.value}"


def test_plan_refuses_a_resume_that_cannot_extend_its_parent(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[[run]]\nname = "a"\nrecipe = "engram-v1"\ntotal_steps = 5000\n'
                 '[[run]]\nname = "b"\nrecipe = "engram-v2"\nresume_from = "a"\ntotal_steps = 5000\n')
    with pytest.raises(UserError, match=r"run 'b': its total_steps 5000 must exceed those of the run it continues, "
                                        r"'a' \(5000\)"):
        build_plan(load_session(f), [Slot(None)], "tiny")
    f.write_text('[[run]]\nname = "a"\nrecipe = "baseline"\n'
                 '[[run]]\nname = "b"\nrecipe = "engram-v1"\nresume_from = "a"\ntotal_steps = 9000\n')
    with pytest.raises(UserError, match="key 'resume_from' = 'a': recipe baseline's model differs from recipe "
                                        "engram-v1's"):
        build_plan(load_session(f), [Slot(None)], "tiny")


def test_missing_session_file(capsys, tmp_path):
    code = main(["session", str(tmp_path / "nope.toml"), "--dry-run"])
    assert code == 2 and "nope.toml: no such session file" in capsys.readouterr().err


def test_threads_flag_fills_runs_that_set_none(capsys, tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[[run]]\nname = "a"\nrecipe = "baseline"\n[[run]]\nname = "b"\nrecipe = "baseline"\nthreads = 2\n')
    code = main(["session", str(f), "--dry-run", "--gpus", "cpu", "--threads", "1", "--runs", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    cmds = [line for line in out.splitlines() if "python -m nanotrain run" in line]
    assert "--threads 1" in cmds[0] and "--threads 2" in cmds[1] and "--threads 1" not in cmds[1]
    code = main(["session", str(f), "--dry-run", "--threads", "0"])
    assert code == 2 and "--threads 0: must be at least 1" in capsys.readouterr().err


def test_run_and_score_keys_are_the_commands_own_flags(tmp_path):
    """Every valued flag of `nanotrain run` / `nanoeval score` but those the session sets is a key, and its value
    reaches the command as that flag; the parsers accept the argv the session builds."""
    from nanoeval.commands.score import register as register_score
    from nanotrain.commands.run import register as register_run
    from nanotrain.session import SCORE_DEFAULTS, Launcher, run_cli, score_cli, score_command, train_command

    assert {"steps", "total_steps", "batch_size", "seq_len", "seed", "log_every", "eval_every", "ckpt_every",
            "rewarm_steps", "threads", "time_budget", "dtype", "resume_lr"} <= set(run_cli().flags)
    assert not {"scale", "device", "out", "name", "resume", "data"} & set(run_cli().flags)
    assert {"prompts", "samples_per_prompt", "max_new_tokens", "heldout_tokens", "temperature", "seed", "top_k",
            "top_p", "validator"} <= set(score_cli().flags)
    assert not {"ckpt", "out", "data", "device", "inference_mode"} & set(score_cli().flags)
    assert all(set(defaults) <= set(score_cli().flags) for defaults in SCORE_DEFAULTS.values())
    f = tmp_path / "s.toml"
    f.write_text('[[run]]\nname = "a"\nrecipe = "baseline"\nrewarm_steps = 7\ndtype = "fp32"\ntime_budget = 2\n'
                 '[score]\ntop_k = 5\nvalidator = "both"\nsamples_per_prompt = 3\n')
    plan = build_plan(load_session(f), [Slot(None)], "tiny")
    launcher = Launcher(nanotrain=("nt",), nanoeval=("ne",))
    train = train_command(plan, plan.placements[0], tmp_path, None, launcher)
    assert train[train.index("--rewarm-steps") + 1] == "7" and train[train.index("--dtype") + 1] == "fp32"
    assert train[train.index("--time-budget") + 1] == "2.0"
    score = score_command(plan, plan.session.runs[0], Slot(None), tmp_path, None, launcher)
    assert score[score.index("--top-k") + 1] == "5" and score[score.index("--validator") + 1] == "both"
    assert score[score.index("--samples-per-prompt") + 1] == "3" and score[score.index("--max-new-tokens") + 1] == "64"
    for register, argv in ((register_run, train[1:]), (register_score, score[1:])):
        root = argparse.ArgumentParser()
        register(root.add_subparsers(dest="command"))
        args = root.parse_args(argv)
        assert args.command == argv[0]
