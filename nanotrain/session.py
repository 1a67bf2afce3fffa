"""Training sessions: several `nanotrain run`s scheduled over the available GPUs (or the CPU), resumable.

A session file (TOML) lists runs: a name, a recipe, optional `depends_on` / `resume_from` (another run of the
session), an optional `gpu` preference and values for `nanotrain run`'s flags (`total_steps = 500` for
`--total-steps 500`); a [score] table holds values for `nanoeval score`'s flags. Both are read from the
commands' own parsers and checked by the commands' own checks, so a mistake is found before anything trains.
`sessions/seed.toml` encodes the original session (docs/original-runs.md): round 1 haar-v5 on GPU 0 and
engram-v1 on GPU 1, round 2 baseline-v1 on GPU 0 and engram-v2 (continuing engram-v1's final) on GPU 1.

The plan places runs into rounds: a round gives each device at most one run whose dependencies all ran in earlier
rounds, honouring `gpu` preferences first. Each device then works through its queue in round order, one
subprocess at a time (`python -m nanotrain run ...` with its own CUDA_VISIBLE_DEVICES), starting a run once its
dependencies have finished. Every run's output goes to `<runs>/<session>/<run>/train.log` and the session's state
to `<runs>/<session>/session.json`. Invoking the session again continues it: runs with `final/` are skipped,
interrupted ones resume from their newest checkpoint (`--resume auto`). Finished runs are then scored with
`nanoeval score` so `nanoeval report --session` has generation metrics.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nanotrain.errors import UserError
from nanotrain.files import read_metrics, write_json

STATE_FILE = "session.json"
STATE_SCHEMA = "nanotrain.session/1"
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# The flags a session sets itself; each other valued flag of `nanotrain run` / `nanoeval score` is a key of a
# [[run]] table / the [score] table, with the flag's type and choices, checked by the command's own checks.
SESSION_RUN_FLAGS = {"recipe", "scale", "data", "out", "name", "device", "resume"}
SESSION_SCORE_FLAGS = {"ckpt", "out", "data", "device", "inference_mode"}
RUN_KEYS_FIXED = {"name", "recipe", "depends_on", "resume_from", "gpu"}
SESSION_KEYS = {"name", "description"}
TOP_KEYS = {"session", "run", "score"}

# `nanoeval score` settings per scale (tiny settings at tiny scale); the file's [score] table overrides them.
# (15 seed + 120 completion prompts) x 2 = 270 samples: a valid rate near 0.2 gets a 95% interval of about +-0.05.
# heldout_tokens None: each run's own validation tokens (`nanoeval score`'s default), the same for every run of a
# session whose runs share batch_size, seq_len and eval_batches; the report says when they differ.
SCORE_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": dict(prompts="seed+completions", n_prompts=120, samples_per_prompt=2, max_new_tokens=64,
                 heldout_tokens=None, temperature=0.7, seed=0),
    "small": dict(prompts="seed+completions", n_prompts=120, samples_per_prompt=2, max_new_tokens=128,
                  heldout_tokens=None, temperature=0.7, seed=0),
    "full": dict(prompts="seed+completions", n_prompts=120, samples_per_prompt=2, max_new_tokens=256,
                 heldout_tokens=None, temperature=0.7, seed=0),
}


@dataclass(frozen=True)
class Flag:
    """A valued flag of a command, as its parser declares it."""

    option: str  # e.g. "--total-steps"
    kind: type  # int, float or str
    choices: tuple[Any, ...] | None


@dataclass(frozen=True)
class Command:
    """A command's parser, read once: its valued flags and its own check of their values."""

    parser: argparse.ArgumentParser
    flags: dict[str, Flag]
    check: Callable[[argparse.Namespace], Any]
    required: tuple[str, ...]  # argv that satisfies the parser's required arguments

    def check_values(self, values: dict[str, Any]) -> None:
        """Run the command's own checks on its defaults updated by `values` (UserError from the command)."""
        args = self.parser.parse_args(list(self.required))
        for key, value in values.items():
            setattr(args, key, value)
        self.check(args)


def _command(module: str, name: str, skip: set[str], check: str, required: tuple[str, ...]) -> Command:
    """Read the parser `module.register` builds for sub-command `name`: every plain valued option not in `skip`."""
    mod = importlib.import_module(module)
    sub = argparse.ArgumentParser(add_help=False).add_subparsers()
    mod.register(sub)
    parser = sub.choices[name]
    flags = {}
    for action in parser._actions:
        if type(action) is not argparse._StoreAction or not action.option_strings or action.dest in skip:
            continue
        kind = action.type if action.type in (int, float) else str
        flags[action.dest] = Flag(action.option_strings[-1], kind, tuple(action.choices) if action.choices else None)
    return Command(parser, flags, getattr(mod, check), required)


@functools.cache
def run_cli() -> Command:
    """`nanotrain run`: the per-run overrides of a session file."""
    return _command("nanotrain.commands.run", "run", SESSION_RUN_FLAGS, "check_numbers", ("recipe",))


@functools.cache
def score_cli() -> Command:
    """`nanoeval score`: the [score] table. The session launches that command, so it reads its parser too."""
    return _command("nanoeval.commands.score", "score", SESSION_SCORE_FLAGS, "check_args", ("--ckpt", "ckpt"))


# ---------------------------------------------------------------------------------------------- the session file
@dataclass(frozen=True)
class RunSpec:
    """One run of a session file."""

    name: str
    recipe: str
    depends_on: tuple[str, ...] = ()
    resume_from: str | None = None
    gpu: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def needs(self) -> tuple[str, ...]:
        """Every run that must finish before this one starts (depends_on plus resume_from)."""
        extra = (self.resume_from,) if self.resume_from and self.resume_from not in self.depends_on else ()
        return self.depends_on + extra


@dataclass(frozen=True)
class Session:
    """A parsed, validated session file."""

    name: str
    path: Path
    description: str
    runs: tuple[RunSpec, ...]
    score: dict[str, Any] = field(default_factory=dict)

    def run(self, name: str) -> RunSpec:
        return next(r for r in self.runs if r.name == name)


def _check_type(where: str, key: str, value: Any, kind: type, choices: tuple[Any, ...] | None = None) -> Any:
    """`value` as `kind` (ints accepted for floats, bools never for numbers); UserError naming `where` and `key`."""
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if kind is str and isinstance(value, int) and not isinstance(value, bool):  # a count for an `N|all` flag
        value, ok = str(value), True
    if not ok:
        what = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[kind]
        raise UserError(f"{where}: key '{key}' must be {what}, got {value!r}")
    if choices is not None and value not in choices:
        raise UserError(f"{where}: key '{key}' = {value!r}; expected one of {', '.join(map(str, choices))}")
    return value


def _check_flags(where: str, table: dict[str, Any], command: Command) -> dict[str, Any]:
    """The table's keys as the command's flag values: type and choices from its parser, numbers by its checks."""
    values = {}
    for key, value in table.items():
        flag = command.flags[key]
        values[key] = _check_type(where, key, value, flag.kind, flag.choices)
        try:
            command.check_values({key: values[key]})
        except UserError as e:
            raise UserError(f"{where}: key '{key}' = {value!r}; {e}") from None
    return values


def _names(where: str, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: key '{key}' must be a run name or a list of run names, got {value!r}")
    return tuple(value)


def _parse_run(path: Path, index: int, table: Any) -> RunSpec:
    if not isinstance(table, dict):
        raise UserError(f"{path}: [[run]] #{index} must be a table")
    label = f"run '{table['name']}'" if isinstance(table.get("name"), str) else f"[[run]] #{index}"
    where = f"{path}: {label}"
    valid = RUN_KEYS_FIXED | set(run_cli().flags)
    unknown = sorted(set(table) - valid)
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}' (valid keys: {', '.join(sorted(valid))})")
    for key in ("name", "recipe"):
        if key not in table:
            raise UserError(f"{where}: missing key '{key}'")
        if not isinstance(table[key], str):
            raise UserError(f"{where}: key '{key}' must be a string, got {table[key]!r}")
    if not RUN_NAME.match(table["name"]):
        raise UserError(f"{where}: key 'name' = {table['name']!r}; use letters, digits, '.', '_' or '-'")
    from nanotrain.recipes import RECIPES

    if table["recipe"] not in RECIPES:
        raise UserError(f"{where}: key 'recipe' = {table['recipe']!r} is not a recipe; valid recipes: "
                        f"{', '.join(RECIPES)}")
    resume_from = table.get("resume_from")
    if resume_from is not None and not isinstance(resume_from, str):
        raise UserError(f"{where}: key 'resume_from' must be a run name, got {resume_from!r}")
    gpu = table.get("gpu")
    if gpu is not None:
        gpu = _check_type(where, "gpu", gpu, int)
        if gpu < 0:
            raise UserError(f"{where}: key 'gpu' = {gpu}; must be at least 0")
    overrides = _check_flags(where, {k: v for k, v in table.items() if k not in RUN_KEYS_FIXED}, run_cli())
    return RunSpec(name=table["name"], recipe=table["recipe"],
                   depends_on=_names(where, "depends_on", table.get("depends_on", [])),
                   resume_from=resume_from, gpu=gpu, overrides=overrides)


def _parse_score(path: Path, table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise UserError(f"{path}: [score] must be a table")
    valid = {"enabled", *score_cli().flags}
    unknown = sorted(set(table) - valid)
    if unknown:
        raise UserError(f"{path}: [score]: unknown key '{unknown[0]}' (valid keys: {', '.join(sorted(valid))})")
    settings = {k: _check_type(f"{path}: [score]", k, v, bool) for k, v in table.items() if k == "enabled"}
    return settings | _check_flags(f"{path}: [score]", {k: v for k, v in table.items() if k != "enabled"},
                                   score_cli())


def load_session(path: str | Path, default_threads: int | None = None) -> Session:
    """Parse and validate a session file; every mistake is a one-line UserError naming the file and the key.

    `default_threads` (`--threads`) applies to the runs whose table sets no `threads`.
    """
    from nanotrain.recipes import get_recipe

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such session file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"{path}: not a valid TOML file ({e})") from None
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}' (valid: [session], [[run]], [score])")
    head = data.get("session", {})
    if not isinstance(head, dict):
        raise UserError(f"{path}: [session] must be a table")
    bad = sorted(set(head) - SESSION_KEYS)
    if bad:
        raise UserError(f"{path}: [session]: unknown key '{bad[0]}' (valid keys: {', '.join(sorted(SESSION_KEYS))})")
    name = head.get("name", path.stem)
    if not isinstance(name, str) or not RUN_NAME.match(name):
        raise UserError(f"{path}: [session]: key 'name' = {name!r}; use letters, digits, '.', '_' or '-'")
    description = head.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"{path}: [session]: key 'description' must be a string")
    tables = data.get("run")
    if not tables:
        raise UserError(f"{path}: no runs (add at least one [[run]] table with name and recipe)")
    if not isinstance(tables, list):
        raise UserError(f"{path}: key 'run' must be an array of tables ([[run]])")
    runs = [_parse_run(path, i + 1, t) for i, t in enumerate(tables)]
    seen: set[str] = set()
    for r in runs:
        if r.name in seen:
            raise UserError(f"{path}: run '{r.name}': key 'name' is used by two runs")
        seen.add(r.name)
    resolved = []
    for r in runs:
        where = f"{path}: run '{r.name}'"
        for dep in r.depends_on:
            if dep not in seen:
                raise UserError(f"{where}: key 'depends_on' names unknown run '{dep}'")
        resume_from = r.resume_from
        if resume_from is not None and resume_from not in seen:
            raise UserError(f"{where}: key 'resume_from' names unknown run '{resume_from}'")
        parent_recipe = get_recipe(r.recipe).resume_from
        if resume_from is None and parent_recipe is not None:
            if parent_recipe not in seen:
                raise UserError(f"{where}: recipe {r.recipe} continues another run's final checkpoint; set key "
                                f"'resume_from' to the run of this session it continues (e.g. a {parent_recipe} run)")
            resume_from = parent_recipe
        if r.name in r.depends_on or resume_from == r.name:
            raise UserError(f"{where}: key '{'resume_from' if resume_from == r.name else 'depends_on'}' names the "
                            "run itself")
        overrides = dict(r.overrides)
        if default_threads is not None:
            overrides.setdefault("threads", default_threads)
        resolved.append(RunSpec(r.name, r.recipe, r.depends_on, resume_from, r.gpu, overrides))
    _check_cycles(path, resolved)
    score = _parse_score(path, data.get("score", {}))
    return Session(name=name, path=path, description=description, runs=tuple(resolved), score=score)


def _check_cycles(path: Path, runs: list[RunSpec]) -> None:
    """UserError naming the first dependency cycle found (depends_on and resume_from edges)."""
    needs = {r.name: r.needs for r in runs}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in needs[name]:
            if state.get(dep) == 1:
                cycle = trail[trail.index(dep):] + [name, dep] if dep in trail else [name, dep]
                raise UserError(f"{path}: run '{name}': key 'depends_on'/'resume_from' makes a dependency cycle "
                                f"({' -> '.join(cycle)})")
            if state.get(dep) is None:
                visit(dep, trail + [name])
        state[name] = 2

    for r in runs:
        if r.name not in state:
            visit(r.name, [])


# ---------------------------------------------------------------------------------------------- devices and plan
@dataclass(frozen=True)
class Slot:
    """A device runs execute on, one at a time: a GPU (its index among the visible ones) or the CPU."""

    gpu: int | None

    @property
    def label(self) -> str:
        return "CPU" if self.gpu is None else f"GPU {self.gpu}"


@dataclass(frozen=True)
class Placement:
    """Where and when a run executes: its device, its round, and what it waits for."""

    run: RunSpec
    slot: Slot
    round: int
    after: str | None  # the run before it on the same device


@dataclass
class Plan:
    """A validated session placed onto devices, at one scale."""

    session: Session
    slots: list[Slot]
    scale: str
    rounds: list[list[Placement]]
    simulated: bool = False
    total_steps: dict[str, int] = field(default_factory=dict)

    @property
    def placements(self) -> list[Placement]:
        return [p for rnd in self.rounds for p in rnd]

    def queue(self, slot: Slot) -> list[Placement]:
        """The runs `slot` executes, in order."""
        return [p for p in self.placements if p.slot == slot]

    def placement(self, name: str) -> Placement:
        return next(p for p in self.placements if p.run.name == name)


def parse_gpus(text: str) -> list[int] | None:
    """`--gpus`: 'cpu' (None) or a comma-separated list of distinct GPU indices."""
    if text.strip().lower() == "cpu":
        return None
    try:
        ids = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise UserError(f"--gpus {text}: expected GPU indices like 0,1 or 'cpu'") from None
    if not ids or any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise UserError(f"--gpus {text}: expected distinct GPU indices like 0,1 or 'cpu'")
    return ids


def resolve_slots(gpus: str | None, dry_run: bool) -> tuple[list[Slot], bool]:
    """The devices to use and whether they are simulated (named GPUs this machine lacks, allowed for --dry-run).

    No --gpus: every visible CUDA GPU, or the CPU when there is none.
    """
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus is None:
        return ([Slot(i) for i in range(available)] or [Slot(None)]), False
    ids = parse_gpus(gpus)
    if ids is None:
        return [Slot(None)], False
    missing = [i for i in ids if i >= available]
    if missing and not dry_run:
        which = f"GPU {missing[0]} does not" if len(missing) == 1 else f"GPUs {', '.join(map(str, missing))} do not"
        raise UserError(f"--gpus {gpus}: this machine has {available} visible CUDA GPU(s); {which} exist "
                        "(use --dry-run to see the plan anyway)")
    return [Slot(i) for i in ids], bool(missing)


def resolve_scale(scale: str, slots: list[Slot]) -> str:
    """`auto` is full on GPUs and tiny on the CPU, as for `nanotrain run`."""
    from nanotrain.recipes import SCALES

    if scale not in ("auto", *SCALES):
        raise UserError(f"--scale {scale}: expected one of auto, {', '.join(SCALES)}")
    if scale != "auto":
        return scale
    return "tiny" if slots == [Slot(None)] else "full"


def _total_steps(run: RunSpec, scale: str) -> int:
    from nanotrain.recipes import get_recipe

    return int(run.overrides.get("total_steps") or get_recipe(run.recipe).build(scale)[1].total_steps)


def build_plan(session: Session, slots: list[Slot], scale: str, simulated: bool = False) -> Plan:
    """Place the runs into rounds over `slots`; UserError when a resumed run cannot continue its parent."""
    from nanotrain.recipes import get_recipe

    if not slots:
        raise UserError("no devices to run on")
    totals = {r.name: _total_steps(r, scale) for r in session.runs}
    for r in session.runs:
        if r.resume_from is None:
            continue
        parent = session.run(r.resume_from)
        where = f"{session.path}: run '{r.name}'"
        if get_recipe(r.recipe).build(scale)[0] != get_recipe(parent.recipe).build(scale)[0]:
            raise UserError(f"{where}: key 'resume_from' = '{parent.name}': recipe {parent.recipe}'s model differs "
                            f"from recipe {r.recipe}'s at scale {scale}")
        if totals[r.name] <= totals[parent.name]:
            raise UserError(f"{where}: its total_steps {totals[r.name]} must exceed those of the run it continues, "
                            f"'{parent.name}' ({totals[parent.name]}): set key 'total_steps'")
    placed: dict[str, int] = {}
    last_on: dict[Slot, str] = {}
    rounds: list[list[Placement]] = []
    pending = list(session.runs)
    while pending:
        rnd = len(rounds) + 1
        ready = [r for r in pending if all(placed.get(d, rnd) < rnd for d in r.needs)]
        free = list(slots)
        chosen: list[tuple[RunSpec, Slot]] = []
        for r in ready:  # preferences first, in file order
            pref = [s for s in free if r.gpu is not None and s.gpu == r.gpu]
            if pref:
                chosen.append((r, pref[0]))
                free.remove(pref[0])
        for r in ready:
            if free and all(r is not c for c, _ in chosen):
                chosen.append((r, free.pop(0)))
        if not chosen:
            raise UserError(f"{session.path}: runs {', '.join(r.name for r in pending)} wait on each other")
        chosen.sort(key=lambda c: slots.index(c[1]))
        placements = []
        for r, slot in chosen:
            placements.append(Placement(r, slot, rnd, last_on.get(slot)))
            placed[r.name] = rnd
            last_on[slot] = r.name
            pending.remove(r)
        rounds.append(placements)
    return Plan(session=session, slots=list(slots), scale=scale, rounds=rounds, simulated=simulated,
                total_steps=totals)


# ---------------------------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class Launcher:
    """The argv prefixes that start `nanotrain` and `nanoeval` in a subprocess (tests may swap them)."""

    nanotrain: tuple[str, ...] = (sys.executable, "-m", "nanotrain")
    nanoeval: tuple[str, ...] = (sys.executable, "-m", "nanoeval")


def session_dir(plan: Plan, runs_dir: Path) -> Path:
    return runs_dir / plan.session.name


def run_status(run_dir: Path) -> tuple[str, Path | None]:
    """('finished', final) | ('resume', newest checkpoint) | ('new', None) for a run folder."""
    from nanotrain import checkpoint as ckpt

    if (run_dir / "final").is_dir():
        return "finished", run_dir / "final"
    latest = ckpt.find_latest(run_dir)
    return ("resume", latest) if latest is not None else ("new", None)


def train_command(plan: Plan, p: Placement, runs_dir: Path, data: Path | None, launcher: Launcher) -> list[str]:
    """`nanotrain run` argv of one placement, resuming its newest checkpoint or continuing its parent's final."""
    out = session_dir(plan, runs_dir)
    cmd = [*launcher.nanotrain, "run", p.run.recipe, "--scale", plan.scale, "--out", str(out), "--name", p.run.name,
           "--device", "cpu" if p.slot.gpu is None else "cuda", "--no-progress"]
    if data is not None:
        cmd += ["--data", str(data)]
    status, _ = run_status(out / p.run.name)
    if status == "resume" or p.run.resume_from is None:
        cmd += ["--resume", "auto"]
    else:
        cmd += ["--resume", str(out / p.run.resume_from / "final")]
    for key, value in p.run.overrides.items():
        cmd += [run_cli().flags[key].option, str(value)]
    return cmd


def score_settings(plan: Plan) -> dict[str, Any]:
    """`nanoeval score` settings: the scale's defaults updated by the session file's [score] table."""
    return {**SCORE_DEFAULTS[plan.scale], "enabled": True, **plan.session.score}


def score_command(plan: Plan, run: RunSpec, slot: Slot, runs_dir: Path, data: Path | None,
                  launcher: Launcher) -> list[str]:
    """`nanoeval score` argv for a run's final checkpoint (non-causal layers bypassed, as the original did)."""
    run_dir = session_dir(plan, runs_dir) / run.name
    s = score_settings(plan)
    cmd = [*launcher.nanoeval, "score", "--ckpt", str(run_dir / "final"), "--out", str(run_dir / "score.json"),
           "--inference-mode", "bypass", "--device", "cpu" if slot.gpu is None else "cuda"]
    flags = score_cli().flags
    for key, value in s.items():
        if key != "enabled" and value is not None:
            cmd += [flags[key].option, str(value)]
    if data is not None:
        cmd += ["--data", str(data)]
    return cmd


def slot_env(slot: Slot) -> dict[str, str]:
    """The subprocess environment: only this slot's GPU visible (mapped through an inherited
    CUDA_VISIBLE_DEVICES), none for the CPU."""
    env = dict(os.environ)
    if slot.gpu is None:
        env["CUDA_VISIBLE_DEVICES"] = ""
        return env
    inherited = [x for x in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    env["CUDA_VISIBLE_DEVICES"] = inherited[slot.gpu] if slot.gpu < len(inherited) else str(slot.gpu)
    return env


def check_resumable_scale(plan: Plan, runs_dir: Path) -> None:
    """Refuse before starting anything when a run's existing checkpoints were trained at another scale."""
    from nanotrain.checkpoint import read_config

    for p in plan.placements:
        _, found = run_status(session_dir(plan, runs_dir) / p.run.name)
        if found is None:
            continue
        scale = read_config(found).get("scale")
        if scale and scale != plan.scale:
            raise UserError(f"--scale {plan.scale}: run {p.run.name} already has {found} at scale {scale}; "
                            f"pass --scale {scale} or another --runs folder")


def format_plan(plan: Plan, runs_dir: Path, data: Path | None = None, launcher: Launcher = Launcher()) -> str:
    """The plan as text: rounds, which device, who waits for whom, what each run will do, and the commands."""
    out = session_dir(plan, runs_dir)
    devices = ", ".join(s.label for s in plan.slots)
    lines = [f"session {plan.session.name} ({plan.session.path}): {len(plan.session.runs)} runs on {devices}, "
             f"scale {plan.scale} -> {out}"]
    if plan.session.description:
        lines.append(f"  {plan.session.description}")
    if plan.simulated:
        lines.append("  (simulated: this machine lacks some of these GPUs; this is the plan a machine with them runs)")
    width = max(len(r.name) for r in plan.session.runs)
    rwidth = max(len(r.recipe) for r in plan.session.runs)
    for i, rnd in enumerate(plan.rounds, 1):
        lines.append(f"round {i}:")
        for p in rnd:
            status, found = run_status(out / p.run.name)
            waits = [d for d in p.run.needs]
            notes = []
            if waits:
                notes.append(f"waits for {', '.join(waits)}")
            if p.after is not None and p.after not in waits:
                notes.append(f"after {p.after} frees {p.slot.label}")
            if status == "finished":
                notes.append("done: skipped")
            elif status == "resume":
                notes.append(f"resumes {found.name}")
            elif p.run.resume_from:
                notes.append(f"continues {p.run.resume_from}/final")
            else:
                notes.append("new")
            extra = " ".join(f"{k}={v}" for k, v in p.run.overrides.items())
            lines.append(f"  {p.slot.label:<6} {p.run.name:<{width}}  {p.run.recipe:<{rwidth}}  "
                         f"{plan.total_steps[p.run.name]:>6} steps  {'; '.join(notes)}"
                         + (f"  [{extra}]" if extra else ""))
    s = score_settings(plan)
    if s["enabled"]:
        held = ("the run's validation tokens" if s["heldout_tokens"] is None
                else f"{s['heldout_tokens']} held-out tokens")
        lines.append(f"then: nanoeval score each final ({s['prompts']} prompts x {s['samples_per_prompt']}, "
                     f"{s['max_new_tokens']} new tokens, {held}) -> <run>/score.json")
    lines.append("commands (each logs to <run>/train.log):")
    for p in plan.placements:
        env = "CUDA_VISIBLE_DEVICES=" + slot_env(p.slot)["CUDA_VISIBLE_DEVICES"]
        cmd = train_command(plan, p, runs_dir, data, launcher)
        lines.append(f"  [{p.slot.label}] {env} python -m nanotrain {shlex.join(cmd[len(launcher.nanotrain):])}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- state file
def read_state(folder: Path) -> dict[str, Any]:
    """A session folder's session.json, or {} if there is none yet; UserError if it is unreadable."""
    path = folder / STATE_FILE
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable session state ({e.__class__.__name__}); move it away to start "
                        "over") from None
    if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA:
        raise UserError(f"{path}: not a nanotrain session state (expected schema {STATE_SCHEMA!r})")
    return state


class State:
    """session.json: the plan, and per run its status, attempts (with wall time) and scoring."""

    def __init__(self, plan: Plan, folder: Path, data: Path | None) -> None:
        self.path = folder / STATE_FILE
        old = read_state(folder)
        old_runs = old.get("runs", {})
        self.data: dict[str, Any] = {
            "schema": STATE_SCHEMA,
            "name": plan.session.name,
            "file": str(plan.session.path),
            "description": plan.session.description,
            "scale": plan.scale,
            "devices": [s.label for s in plan.slots],
            "dataset": None if data is None else str(data),
            "score_settings": score_settings(plan),
            "runs": {},
        }
        for p in plan.placements:
            prev = old_runs.get(p.run.name, {})
            self.data["runs"][p.run.name] = {
                "recipe": p.run.recipe,
                "device": p.slot.label,
                "round": p.round,
                "depends_on": list(p.run.depends_on),
                "resume_from": p.run.resume_from,
                "overrides": dict(p.run.overrides),
                "total_steps": plan.total_steps[p.run.name],
                "status": prev.get("status", "pending"),
                "attempts": prev.get("attempts", []),
                "train_wall_s": prev.get("train_wall_s", 0.0),
                "score": prev.get("score"),
                "score_wall_s": prev.get("score_wall_s"),
                "log": f"{p.run.name}/train.log",
            }

    def run(self, name: str) -> dict[str, Any]:
        return self.data["runs"][name]

    def save(self) -> None:
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.data)


# ---------------------------------------------------------------------------------------------- execution
@dataclass
class Job:
    """A subprocess working on one run (training or scoring) on one slot."""

    name: str
    kind: str  # "train" | "score"
    slot: Slot
    proc: subprocess.Popen
    log: Any
    started: float
    start_step: int


@dataclass
class SessionResult:
    """How an invocation ended: per run status, plus whether it was interrupted."""

    status: dict[str, str]
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(s == "finished" for s in self.status.values())


def _last_step(run_dir: Path) -> int:
    """The step of the newest train row in metrics.jsonl (0 when none)."""
    train, _ = read_metrics(run_dir / "metrics.jsonl")
    return train[-1]["step"] if train else 0


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [x for x in path.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def _score_is_current(run_dir: Path) -> bool:
    """score.json exists and scores this run's final checkpoint (same step)."""
    try:
        report = json.loads((run_dir / "score.json").read_text(encoding="utf-8"))
        final = json.loads((run_dir / "final" / "config.json").read_text(encoding="utf-8"))
        return int(report["checkpoint"]["step"]) == int(final["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


class Runner:
    """Executes a plan: one subprocess per device at a time, dependencies honoured, state saved on every change."""

    def __init__(self, plan: Plan, runs_dir: Path, data: Path | None, launcher: Launcher = Launcher(),
                 progress: bool = True, score: bool = True, echo=print, poll_s: float = 0.5) -> None:
        self.plan, self.runs_dir, self.data, self.launcher = plan, runs_dir, data, launcher
        self.do_score = score
        self.folder = session_dir(plan, runs_dir)
        self.progress, self._echo, self.poll_s = progress, echo, poll_s
        self.state = State(plan, self.folder, data)
        self.jobs: dict[Slot, Job] = {}
        self.bar = None

    def say(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            self._echo(msg)

    # -------------------------------------------------------------- lifecycle of one job
    def _start(self, name: str, kind: str, slot: Slot, cmd: list[str]) -> None:
        run_dir = self.folder / name
        run_dir.mkdir(parents=True, exist_ok=True)
        log = open(run_dir / ("train.log" if kind == "train" else "score.log"), "a", encoding="utf-8")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        log.write(f"=== {stamp} UTC  {slot.label}  {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=slot_env(slot), start_new_session=True)
        self.jobs[slot] = Job(name, kind, slot, proc, log, time.time(), _last_step(run_dir))
        if kind == "train":
            rec = self.state.run(name)
            rec["status"] = "running"
            rec["attempts"].append({"started": stamp, "device": slot.label, "command": cmd,
                                    "start_step": self.jobs[slot].start_step})
            self.state.save()
        self.say(f"[{slot.label}] {name}: {'training' if kind == 'train' else 'scoring'} "
                 f"(log {run_dir / ('train.log' if kind == 'train' else 'score.log')})")

    def _finish(self, job: Job, interrupted: bool) -> None:
        job.log.close()
        rc = job.proc.returncode
        run_dir = self.folder / job.name
        rec = self.state.run(job.name)
        wall = time.time() - job.started
        del self.jobs[job.slot]
        if job.kind == "score":
            rec["score_wall_s"] = round(wall, 1)
            if rc == 0 and (run_dir / "score.json").is_file():
                rec["score"] = f"{job.name}/score.json"
                self.say(f"[{job.slot.label}] {job.name}: scored in {wall / 60:.1f} min -> {run_dir / 'score.json'}")
            else:
                self.say(f"[{job.slot.label}] {job.name}: scoring failed (exit {rc}): {_tail(run_dir / 'score.log')}")
            self.state.save()
            return
        attempt = rec["attempts"][-1]
        attempt.update(ended=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), wall_s=round(wall, 1), rc=rc,
                       end_step=_last_step(run_dir))
        rec["train_wall_s"] = round(rec["train_wall_s"] + wall, 1)
        if (run_dir / "final").is_dir() and rc == 0:
            rec["status"] = "finished"
            self.say(f"[{job.slot.label}] {job.name}: finished in {wall / 60:.1f} min (step {attempt['end_step']})")
        elif interrupted or rc in (130, 143):  # stopped by SIGINT or SIGTERM, with a checkpoint
            rec["status"] = "interrupted"
            self.say(f"[{job.slot.label}] {job.name}: interrupted at step {attempt['end_step']}")
        elif rc == 0:
            rec["status"] = "paused"
            self.say(f"[{job.slot.label}] {job.name}: paused at step {attempt['end_step']} of "
                     f"{rec['total_steps']} (steps/time budget); the next invocation continues it")
        else:
            rec["status"] = "failed"
            self.say(f"[{job.slot.label}] {job.name}: FAILED (exit {rc}): {_tail(run_dir / 'train.log')}")
        self.state.save()

    # -------------------------------------------------------------- the loop
    def _progress_total(self) -> tuple[int, dict[str, int]]:
        origin = {}
        for p in self.plan.placements:
            origin[p.run.name] = self.plan.total_steps[p.run.resume_from] if p.run.resume_from else 0
        total = sum(self.plan.total_steps[n] - o for n, o in origin.items())
        return total, origin

    def _refresh_bar(self, origin: dict[str, int]) -> None:
        if self.bar is None:
            return
        done = 0
        for name, o in origin.items():
            step = max(_last_step(self.folder / name), o)
            if self.state.run(name)["status"] == "finished":
                step = self.plan.total_steps[name]
            done += min(step, self.plan.total_steps[name]) - o
        self.bar.n = done
        running = ", ".join(f"{j.name}@{j.slot.label}" for j in self.jobs.values())
        self.bar.set_postfix_str(running, refresh=False)
        self.bar.refresh()

    def _interrupt(self) -> None:
        """Ask every child to checkpoint and stop (one SIGINT each, as Ctrl-C would), then wait for them."""
        self.say("Ctrl-C: asking running jobs to checkpoint and stop (Ctrl-C again to kill them)")
        for job in self.jobs.values():
            if job.proc.poll() is None:
                job.proc.send_signal(signal.SIGINT)
        try:
            for job in list(self.jobs.values()):
                job.proc.wait()
        except KeyboardInterrupt:
            for job in self.jobs.values():
                if job.proc.poll() is None:
                    job.proc.kill()
            for job in self.jobs.values():
                job.proc.wait()
        for job in list(self.jobs.values()):
            self._finish(job, interrupted=True)

    def train(self) -> bool:
        """Train every run of the plan that is not finished; False if interrupted."""
        from tqdm import tqdm

        queues = {s: list(self.plan.queue(s)) for s in self.plan.slots}
        for p in self.plan.placements:
            status, found = run_status(self.folder / p.run.name)
            rec = self.state.run(p.run.name)
            if status == "finished":
                rec["status"] = "finished"
                queues[p.slot].remove(p)
                self.say(f"[{p.slot.label}] {p.run.name}: final/ present, skipped")
            elif rec["status"] in ("running", "finished"):
                rec["status"] = "interrupted"
        self.state.save()
        total, origin = self._progress_total()
        self.bar = tqdm(total=total, unit="step", desc=self.plan.session.name, disable=not self.progress,
                        dynamic_ncols=True)
        try:
            while any(queues.values()) or self.jobs:
                for job in list(self.jobs.values()):
                    if job.proc.poll() is not None:
                        self._finish(job, interrupted=False)
                for slot, queue in queues.items():
                    while slot not in self.jobs and queue:
                        running = {j.name for j in self.jobs.values()}
                        queued = {q.run.name for qs in queues.values() for q in qs}
                        p = queue[0]
                        states = [self.state.run(d)["status"] for d in p.run.needs]
                        if all(s == "finished" for s in states):
                            queue.pop(0)
                            self._start(p.run.name, "train", slot,
                                        train_command(self.plan, p, self.runs_dir, self.data, self.launcher))
                        elif any(d not in running and d not in queued and s != "finished"
                                 for d, s in zip(p.run.needs, states)):
                            queue.pop(0)
                            self.state.run(p.run.name)["status"] = "blocked"
                            self.state.save()
                            unmet = [d for d, s in zip(p.run.needs, states) if s != "finished"]
                            self.say(f"[{slot.label}] {p.run.name}: not started: {', '.join(unmet)} did not finish "
                                     "in this invocation")
                        else:
                            break
                self._refresh_bar(origin)
                if any(queues.values()) or self.jobs:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            self._interrupt()
            return False
        finally:
            self.bar.close()
            self.bar = None
        return True

    def score(self) -> bool:
        """Score every finished run whose score.json is missing or stale, one job per device; False if
        interrupted."""
        if not (self.do_score and score_settings(self.plan)["enabled"]):
            return True
        todo = [p.run for p in self.plan.placements if self.state.run(p.run.name)["status"] == "finished"
                and not _score_is_current(self.folder / p.run.name)]
        for p in self.plan.placements:
            if _score_is_current(self.folder / p.run.name):
                self.state.run(p.run.name)["score"] = f"{p.run.name}/score.json"
        self.state.save()
        try:
            while todo or self.jobs:
                for job in list(self.jobs.values()):
                    if job.proc.poll() is not None:
                        self._finish(job, interrupted=False)
                for slot in self.plan.slots:
                    if slot not in self.jobs and todo:
                        run = todo.pop(0)
                        self._start(run.name, "score", slot,
                                    score_command(self.plan, run, slot, self.runs_dir, self.data, self.launcher))
                if todo or self.jobs:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            self._interrupt()
            return False
        return True

    def execute(self) -> SessionResult:
        """Train, then score; the state file records everything. SIGTERM is handled like Ctrl-C, so the runs
        checkpoint instead of being orphaned."""
        def on_term(signum, frame):  # noqa: ANN001 - signal handler signature
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
        try:
            finished = self.train() and self.score()
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        status = {name: rec["status"] for name, rec in self.state.data["runs"].items()}
        return SessionResult(status=status, interrupted=not finished)
