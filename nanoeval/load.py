"""Open a nanotrain checkpoint for evaluation: model (eval mode), tokenizer and configs in one object.

Imports torch only inside `load`, so `import nanoeval` stays light.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nanotrain.config import ModelConfig, TrainConfig
from nanotrain.errors import UserError

if TYPE_CHECKING:
    import torch


@dataclass
class LoadedModel:
    """What nanoeval needs from a checkpoint. `folder` is the checkpoint folder itself (e.g. runs/x/final)."""

    model: torch.nn.Module
    tokenizer: Any
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    recipe: str
    step: int
    folder: Path
    config_json: dict = field(default_factory=dict)

    @property
    def run_name(self) -> str:
        """The run folder's name (runs/<run>/final → <run>)."""
        return self.folder.parent.name if self.folder.parent.name else self.folder.name

    def metrics(self) -> dict:
        """The checkpoint's metrics.json (last train/val metrics), or {} when absent or unreadable."""
        path = self.folder / "metrics.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}


def resolve_checkpoint(path: str | Path, verify: bool = True) -> Path:
    """A checkpoint folder from a checkpoint path or a run folder (its `final/`, else its newest checkpoint, which
    with `verify` must match its manifest)."""
    from nanotrain.checkpoint import find_latest

    path = Path(path)
    if not path.exists():
        raise UserError(f"--ckpt {path}: no such checkpoint folder")
    if not path.is_dir():
        raise UserError(f"--ckpt {path}: not a folder (expected runs/<run>/final or runs/<run>/step_<N>)")
    if (path / "config.json").is_file():
        return path
    if (path / "final" / "config.json").is_file():
        return path / "final"
    latest = find_latest(path, verify=verify)
    if latest is None:
        raise UserError(f"--ckpt {path}: not a checkpoint folder and holds no complete checkpoint (no config.json)")
    return Path(latest)


def load(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
         verify: bool = True) -> LoadedModel:
    """Load a checkpoint (or a run folder's newest one) in eval mode, with the tokenizer saved next to it.

    `verify` (the default; `--no-verify` turns it off) checks the weights, config and tokenizer against the
    checkpoint's manifest.json first, so damaged or swapped files are refused naming the file.
    UserError for a missing/corrupt checkpoint and for a tokenizer with more tokens than the model's vocab_size
    (a smaller one is fine: the trainer allows a model vocab larger than the dataset's, and the sampler never
    picks ids the tokenizer lacks).
    """
    from nanotrain.checkpoint import load_checkpoint
    from nanotrain.data.tokenizer import load_tokenizer

    folder = resolve_checkpoint(path, verify=verify)
    ckpt = load_checkpoint(folder, device=device, dtype=dtype, verify=verify)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    tok_vocab = tokenizer.get_vocab_size()
    if tok_vocab > ckpt.model_cfg.vocab_size:
        raise UserError(
            f"{folder / 'tokenizer.json'}: vocab {tok_vocab} does not fit the model's vocab_size "
            f"{ckpt.model_cfg.vocab_size} (tokenizer from another dataset?)"
        )
    model = ckpt.model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_cfg=ckpt.model_cfg,
        train_cfg=ckpt.train_cfg,
        recipe=ckpt.recipe,
        step=int(ckpt.step),
        folder=Path(ckpt.folder),
        config_json=dict(ckpt.config_json or {}),
    )


def add_verify_flag(p: Any, what: str = "load checkpoints") -> None:
    """`--no-verify` on a command that reads checkpoints (sets `args.verify`)."""
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help=f"{what} without checking their files against manifest.json (sizes and sha256)")
