"""Checkpoint folders: save atomically, validate, load, find the newest complete one.

A checkpoint is a folder (`runs/<run>/step_<N>/` or `runs/<run>/final/`, docs/ARCHITECTURE.md "Checkpoint folder"):
`model.safetensors` (fp32 weights), `config.json` (format version, recipe, scale, model and train configs, step,
creation time, torch version), `tokenizer.json` (copied from the dataset), `trainer_state.pt` (optimizer state,
RNG states, data position, schedule and NaN-guard state; only what resuming needs), `metrics.json`, and
`manifest.json`, written last: the size and sha256 of every other file and the tokenizer's hash and vocab size.
Loading checks the manifest (`verify_manifest`), so a flipped bit, a swapped tokenizer or a damaged trainer state
is refused with the name of the file instead of evaluating or training on wrong bytes. Checkpoints written
before the manifest existed have none and load unverified, silently: their files are still checked for shape,
length and finite weights as before.
Where the original (docs/original-runs.md) wrote files in place and kept a positional optimizer dump, every
write here goes to a temporary sibling folder that is fsync'd and renamed into place, so a crash never leaves a
half-written checkpoint under a real name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nanotrain.config import ModelConfig, TrainConfig, dumps
from nanotrain.errors import UserError

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
REQUIRED_FILES = (MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE)
CONFIG_KEYS = {"format_version", "recipe", "scale", "model", "train", "step", "created", "torch_version"}
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_PREFIX = ".tmp-"


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint folder, with the configs it was trained with."""

    model: torch.nn.Module
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    recipe: str
    step: int
    config_json: dict[str, Any]
    folder: Path


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors stored once (the first name wins: `tok_embed.weight` before any head)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen and t.numel() > 0:
            continue
        seen.add(key)
        out[name] = t.detach().to("cpu", torch.float32 if t.is_floating_point() else t.dtype).contiguous()
    return out


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    folder: str | Path,
    *,
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    recipe: str,
    tokenizer_path: str | Path,
    step: int,
    trainer_state: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    scale: str | None = None,
) -> Path:
    """Write a complete checkpoint to `folder` atomically (temp sibling, fsync, rename) and return its path."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tokenizer_path = Path(tokenizer_path)
    if not tokenizer_path.is_file():
        raise UserError(f"{tokenizer_path}: tokenizer file is missing; cannot write checkpoint {folder}")
    tmp = folder.parent / f"{_TMP_PREFIX}{folder.name}-{os.getpid()}-{time.time_ns()}"
    old = None
    try:
        tmp.mkdir()
        try:
            save_file(_unique_state(_unwrap(model)), str(tmp / MODEL_FILE), metadata={"format": "pt"})
        except SafetensorError as e:  # its writer reports a full disk as "I/O error: ... (os error 28)"
            code = re.search(r"\(os error (\d+)\)", str(e))
            err = int(code.group(1)) if code else None
            raise (OSError(err, os.strerror(err)) if err else OSError(str(e))) from None
        config = {
            "format_version": FORMAT_VERSION,
            "recipe": recipe,
            "scale": scale,
            "model": model_cfg.to_dict(),
            "train": train_cfg.to_dict(),
            "step": int(step),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "torch_version": torch.__version__,
        }
        (tmp / CONFIG_FILE).write_text(dumps(config) + "\n")
        shutil.copyfile(tokenizer_path, tmp / TOKENIZER_FILE)
        if trainer_state is not None:
            with open(tmp / STATE_FILE, "wb") as f:  # through a Python file, so a full disk surfaces as OSError
                torch.save(trainer_state, f)
        (tmp / METRICS_FILE).write_text(dumps(metrics or {}) + "\n")
        write_manifest(tmp)
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if folder.exists():
            old = folder.parent / f"{_TMP_PREFIX}old-{folder.name}-{os.getpid()}-{time.time_ns()}"
            folder.rename(old)
        tmp.rename(folder)
        _fsync_dir(folder.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except (OSError, RuntimeError) as e:
        # torch.save reports a failed write as a RuntimeError raised while handling the OSError.
        cause = e if isinstance(e, OSError) else e.__context__
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not folder.exists():
            old.rename(folder)  # put the previous checkpoint of this name back
        if not isinstance(cause, OSError):
            raise
        raise UserError(f"{folder}: cannot write checkpoint ({cause.strerror or cause}); the previous checkpoints "
                        "are untouched") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def write_manifest(folder: Path) -> dict[str, Any]:
    """Write `folder/manifest.json`: format versions, each file's size and sha256, the tokenizer's hash and vocab
    size. Called after every other file of the checkpoint is written, before the folder is renamed into place."""
    from nanotrain.data.tokenizer import file_sha256, load_tokenizer

    files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "format_version": FORMAT_VERSION,
        "files": files,
        "tokenizer": {"sha256": files[TOKENIZER_FILE]["sha256"],
                      "vocab_size": load_tokenizer(folder / TOKENIZER_FILE).get_vocab_size()},
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def verify_manifest(folder: str | Path, names: tuple[str, ...] | None = None) -> dict[str, Any] | None:
    """Check the files of a checkpoint against its manifest.json; UserError naming the first file that differs.

    `names`: the files to check (each must be listed, present, and of the listed size and sha256); None = every
    file the manifest lists. Files it does not list (a score.json written later) are never looked at. Returns the
    manifest, or None for a checkpoint written before manifests existed (nothing to verify against).
    """
    from nanotrain.data.tokenizer import file_sha256

    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if manifest["manifest_version"] != MANIFEST_VERSION:
            raise ValueError(f"manifest_version {manifest['manifest_version']!r}")
        listed = {str(n): (int(e["size"]), str(e["sha256"])) for n, e in manifest["files"].items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: unreadable checkpoint manifest ({e}); --no-verify loads without it") from None
    for name in sorted(listed) if names is None else names:
        f = folder / name
        if name not in listed:
            raise UserError(f"{f}: not listed in {MANIFEST_FILE}; the checkpoint was changed after it was written")
        if not f.is_file():
            raise UserError(f"{f}: listed in {MANIFEST_FILE} but missing")
        size, sha = listed[name]
        actual = f.stat().st_size
        if actual != size:
            raise UserError(f"{f}: {actual} bytes, {MANIFEST_FILE} says {size}; the file was damaged or replaced "
                            "after the checkpoint was written (--no-verify loads it anyway)")
        if file_sha256(f) != sha:
            raise UserError(f"{f}: content differs from {MANIFEST_FILE} (sha256 mismatch); the file was damaged "
                            "or replaced after the checkpoint was written (--no-verify loads it anyway)")
    return manifest


def present(folder: Path, *names: str) -> tuple[str, ...]:
    """The `names` that exist as files in `folder` (optional files a reader verifies only when they are there)."""
    return tuple(n for n in names if (folder / n).is_file())


def check_safetensors(path: Path) -> None:
    """Raise UserError unless `path` is a whole safetensors file (header parses, data length matches the size)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise UserError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes, file {size})")
            header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path}: corrupt safetensors file (header is not JSON)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: corrupt safetensors file (bad header)")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise UserError(f"{path}: truncated or corrupt safetensors file (expected {8 + n + end} bytes, found {size})")


def read_config(folder: str | Path) -> dict[str, Any]:
    """Validate a checkpoint folder's files and return its parsed config.json; UserError says what is wrong."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"{folder}: checkpoint folder does not exist")
    if not folder.is_dir():
        raise UserError(f"{folder}: is a file, not a checkpoint folder")
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{folder}: not a checkpoint (missing {', '.join(missing)})")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{folder / CONFIG_FILE}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or "format_version" not in config:
        raise UserError(f"{folder / CONFIG_FILE}: no format_version; not a nanotrain checkpoint config")
    if config["format_version"] != FORMAT_VERSION:
        raise UserError(
            f"{folder / CONFIG_FILE}: unknown checkpoint format_version {config['format_version']!r} "
            f"(this nanotrain reads {FORMAT_VERSION})"
        )
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise UserError(f"{folder / CONFIG_FILE}: unknown key(s) {', '.join(unknown)}")
    absent = sorted(CONFIG_KEYS - set(config))
    if absent:
        raise UserError(f"{folder / CONFIG_FILE}: missing key(s) {', '.join(absent)}")
    for key, cls in (("model", ModelConfig), ("train", TrainConfig)):
        try:
            cls.from_dict(config[key])
        except (ValueError, TypeError) as e:
            raise UserError(f"{folder / CONFIG_FILE}: bad {key} config: {e}") from None
    check_safetensors(folder / MODEL_FILE)
    return config


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                    verify: bool = True) -> LoadedCheckpoint:
    """Rebuild the model from a checkpoint folder on `device` (weights cast to `dtype` if given), in eval mode.

    `verify`: check the files it reads against the manifest first (`verify_manifest`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from nanotrain.model.gpt import GPT

    folder = Path(folder)
    config = read_config(folder)
    if verify:
        verify_manifest(folder, REQUIRED_FILES + present(folder, METRICS_FILE))
    model_cfg = ModelConfig.from_dict(config["model"])
    train_cfg = TrainConfig.from_dict(config["train"])
    try:
        state = load_file(str(folder / MODEL_FILE))
    except SafetensorError as e:
        raise UserError(f"{folder / MODEL_FILE}: corrupt safetensors file ({e})") from None
    model = GPT(model_cfg)
    load_weights(model, state, folder / MODEL_FILE)
    model.to(device=device, dtype=dtype)
    model.eval()
    return LoadedCheckpoint(model, model_cfg, train_cfg, config["recipe"], int(config["step"]), config, folder)


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Copy `state` into `model`. Tied names stored once are fine; missing/extra names, wrong shapes and
    non-finite values (a diverged run) are a UserError naming `source`."""
    from nanotrain.model.fused import fuse_legacy_names, stack_rows

    model = _unwrap(model)
    state = fuse_legacy_names(state, stack_rows)  # separate q/k/v, gate/up weights of older checkpoints
    own = model.state_dict()
    ptr_of = {n: (t.untyped_storage().data_ptr(), t.storage_offset()) for n, t in own.items()}
    stored_ptrs = {ptr_of[n] for n in state if n in ptr_of}
    missing = [n for n in own if n not in state and ptr_of[n] not in stored_ptrs]
    unexpected = [n for n in state if n not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        raise UserError(f"{source}: weights do not match the model config ({'; '.join(parts)})")
    bad = [n for n, t in state.items() if tuple(t.shape) != tuple(own[n].shape)]
    if bad:
        n = bad[0]
        raise UserError(f"{source}: tensor {n} has shape {tuple(state[n].shape)}, model expects {tuple(own[n].shape)}")
    nonfinite = [n for n, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if nonfinite:
        raise UserError(f"{source}: weights hold non-finite values ({', '.join(nonfinite[:3])}); "
                        "use an earlier checkpoint")
    with torch.no_grad():
        for n, t in state.items():
            own[n].copy_(t)


def load_trainer_state(folder: str | Path) -> dict[str, Any]:
    """The resume state saved with a checkpoint (optimizer, RNG, data position, schedule, NaN guard)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise UserError(f"{Path(folder)}: has no {STATE_FILE}; it can be evaluated but not resumed")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign pickles
        first_line = str(e).splitlines()[0][:120]
        raise UserError(f"{path}: unreadable trainer state ({type(e).__name__}: {first_line})") from None


def checkpoint_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) for `final/` and every `step_<N>/` in a run folder, newest first; temp folders skipped.

    The step of `final/` is read from its config.json; an unreadable one sorts last.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    out: list[tuple[int, int, Path]] = []
    for p in run_dir.iterdir():
        if not p.is_dir() or p.name.startswith("."):
            continue
        m = _STEP_DIR.match(p.name)
        if m:
            out.append((int(m.group(1)), 0, p))
        elif p.name == "final":
            try:
                step = int(json.loads((p / CONFIG_FILE).read_text())["step"])
            except (OSError, ValueError, KeyError, TypeError):
                step = -1
            out.append((step, 1, p))
    out.sort(key=lambda x: (x[0], x[1]), reverse=True)
    return [(s, p) for s, _, p in out]


def find_latest(run_dir: str | Path, verify: bool = True) -> Path | None:
    """The newest complete, resumable checkpoint in `run_dir` (files present and valid), or None.

    A folder that fails validation (truncated weights, missing or truncated trainer state, and with `verify`
    files that differ from its manifest) is skipped, so a crash during a save falls back to the previous
    checkpoint.
    """
    for _, folder in checkpoint_dirs(run_dir):
        try:
            read_config(folder)
            if verify:
                verify_manifest(folder)
        except UserError:
            continue
        if _is_whole_zip(folder / STATE_FILE):
            return folder
    return None


def _is_whole_zip(path: Path) -> bool:
    """torch.save writes a zip archive; a truncated one has lost its central directory (cheap check)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def remove_temp_folders(run_dir: str | Path) -> list[Path]:
    """Delete the temporary folders a killed save left in `run_dir` (`.tmp-*`); returns what was removed.

    Only safe while holding the run folder's lock (`nanotrain.runlock.RunLock`): then no save is in flight."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    stale = sorted(p for p in run_dir.iterdir()
                   if p.name.startswith(_TMP_PREFIX) and p.is_dir() and not p.is_symlink())
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def prune_step_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` `step_<N>/` folders (final/ is never touched)."""
    steps = [(s, p) for s, p in checkpoint_dirs(run_dir) if p.name != "final"]
    for _, p in steps[max(keep, 0):]:
        shutil.rmtree(p, ignore_errors=True)
