"""Re-measure the regression goldens and show how they differ from the committed ones.

    python -m tests.regression.regenerate               # measure and print the diff only (exit 1 if it differs)
    python -m tests.regression.regenerate --write       # ... and write tests/regression/goldens.json
    python -m tests.regression.regenerate --recipes engram-v1,baseline-v1
    python -m tests.regression.regenerate --make-ckpt   # create tests/regression/ckpt_v<FORMAT_VERSION>/ (new
                                                        # checkpoint format only; never overwrites one)
    make goldens                                        # the first command

The committed checkpoint tests/regression/ckpt_v1/ is never rewritten: its pinned behaviour
(ckpt_v1_pinned.json: logits statistics, argmax, greedy text) is re-measured and diffed too, and `--write`
updates the pins only, for a deliberate change of the model's maths. Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from nanotrain.files import atomic_write

from . import spec


def _diff_goldens(golden: dict, measured: dict) -> list[str]:
    lines = []
    for recipe in sorted(set(golden) | set(measured)):
        if recipe not in measured:
            lines.append(f"{recipe}: in goldens, not measured")
            continue
        if recipe not in golden:
            lines.append(f"{recipe}: new (no golden yet)")
            continue
        lines += [f"{recipe}: {p}" for p in spec.compare(golden[recipe], measured[recipe])]
    return lines


def _write_json(path: Path, obj: dict) -> None:
    """Write JSON with sorted keys (stable diffs), atomically."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def make_ckpt(folder: Path) -> None:
    """Train the CKPT_RECIPE at the micro shape and copy its final checkpoint (with trainer state) to `folder`."""
    if folder.exists():
        raise SystemExit(f"{folder} exists; a committed compatibility checkpoint is never overwritten")
    with tempfile.TemporaryDirectory(prefix="nanolab-ckpt-") as tmp:
        with spec.one_thread():
            dataset = spec.build_dataset(Path(tmp) / "dataset")
            final = spec.train(spec.CKPT_RECIPE, dataset, Path(tmp) / "runs", "--total-steps", spec.CKPT_STEPS,
                               "--log-every", 50)
        shutil.copytree(final, folder)
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"wrote {folder} ({size / 1e6:.2f} MB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.regression.regenerate",
        description="Re-train the regression checkpoints (micro shape, fp32, CPU, seeded), score them with "
                    "`nanoeval score`, re-pin the committed checkpoint, and print the differences from "
                    "goldens.json / ckpt_v1_pinned.json. Nothing is written without --write.",
    )
    parser.add_argument("--write", action="store_true", help="write the measured values as the new goldens/pins")
    parser.add_argument("--recipes", default=",".join(spec.RECIPES),
                        help="comma-separated recipes to measure (default: all regression recipes)")
    parser.add_argument("--make-ckpt", action="store_true",
                        help="create the compatibility checkpoint of the current format version (if absent)")
    args = parser.parse_args(argv)
    recipes = tuple(r for r in args.recipes.split(",") if r)
    unknown = [r for r in recipes if r not in spec.RECIPES]
    if unknown:
        parser.error(f"--recipes: unknown {', '.join(unknown)}; choose from {', '.join(spec.RECIPES)}")
    if "engram-v2" in recipes and "engram-v1" not in recipes:
        recipes = ("engram-v1", *recipes)

    if args.make_ckpt:
        from nanotrain.checkpoint import FORMAT_VERSION

        make_ckpt(spec.HERE / f"ckpt_v{FORMAT_VERSION}")

    t0 = time.time()
    print(f"measuring {len(recipes)} recipe(s) on {spec.CORPUS.relative_to(spec.REPO)} ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="nanolab-goldens-") as tmp:
        measured = spec.measure_all(Path(tmp), recipes, progress=True)
    golden = spec.load_goldens() if spec.GOLDENS.is_file() else {}
    changes = _diff_goldens({k: v for k, v in golden.items() if k in recipes}, measured)

    pinned = json.loads(spec.CKPT_V1_PINNED.read_text()) if spec.CKPT_V1_PINNED.is_file() else {}
    pin_now = {"files_sha256": spec.files_sha256(spec.CKPT_V1), **spec.pin_checkpoint(spec.CKPT_V1)}
    pin_changes = [f"ckpt_v1: {p}" for p in spec.compare_pinned(
        {k: v for k, v in pinned.items() if k != "files_sha256"},
        {k: v for k, v in pin_now.items() if k != "files_sha256"})]
    if pinned and pinned.get("files_sha256") != pin_now["files_sha256"]:
        pin_changes.append("ckpt_v1: the committed files changed (files_sha256); restore them from git")

    print(f"measured in {time.time() - t0:.1f} s")
    for line in changes + pin_changes:
        print("  " + line)
    if not changes and not pin_changes:
        print("no differences beyond the stated tolerances")
    if args.write:
        golden.update(measured)
        _write_json(spec.GOLDENS, golden)
        _write_json(spec.CKPT_V1_PINNED, pin_now)
        print(f"wrote {spec.GOLDENS} and {spec.CKPT_V1_PINNED}")
        return 0
    return 1 if changes or pin_changes else 0


if __name__ == "__main__":
    sys.exit(main())
