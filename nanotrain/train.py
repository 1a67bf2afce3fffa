"""The trainer: compose model, data, optimizers, schedule and checkpoints into one resumable loop.

Implements the original runs' objective, step order, clipping, NaN handling, schedule and checkpoints
(docs/original-runs.md), with the fixes listed there: the LR is set *before* each update
from the step index (warmup from 0), `ce` (true next-token NLL), `entropy` (the seed's "H") and `loss` (the
objective) are logged separately, a resume restores everything needed to continue bit-for-bit (the batch is a
pure function of the step), and extending a converged run re-warms the LR instead of jumping.

The parts do not know the trainer: it only calls `GPT.forward`, `Optimizers`, `schedule.lr_multiplier`,
`WindowLoader.batch` and `checkpoint.save_checkpoint`/`find_latest`.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from nanotrain import checkpoint as ckpt
from nanotrain.config import ModelConfig, TrainConfig
from nanotrain.data.loader import WindowLoader, sequential_batches
from nanotrain.dist import DistInfo, all_reduce_, barrier, wrap_model
from nanotrain.errors import UserError
from nanotrain.files import atomic_write
from nanotrain.mfu import flops_per_token, matmul_params, peak_bf16_flops
from nanotrain.mfu import mfu as model_flops_utilisation
from nanotrain.model.gpt import GPT
from nanotrain.model.mtp import mtp_loss
from nanotrain.optim.groups import build_optimizers, clip_grad_norm_, zero_wavefield_physics_grads
from nanotrain.optim.schedule import lr_multiplier


class TrainingDiverged(UserError):
    """The loss stayed non-finite through every rollback the NaN guard allows."""


@dataclass
class NanGuard:
    """Non-finite steps are skipped; `patience` in a row roll back to the last checkpoint with the LR scaled by
    `lr_factor` for `cooldown` steps; after `max_rollbacks` rollbacks the run aborts."""

    patience: int = 3
    max_rollbacks: int = 3
    lr_factor: float = 0.5
    cooldown: int = 100
    consecutive: int = 0
    rollbacks: int = 0
    cooldown_until: int = 0
    skipped_total: int = 0

    def state(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "rollbacks": self.rollbacks,
                "cooldown_until": self.cooldown_until, "skipped_total": self.skipped_total}

    def load(self, s: dict[str, int]) -> None:
        self.consecutive = int(s.get("consecutive", 0))
        self.rollbacks = int(s.get("rollbacks", 0))
        self.cooldown_until = int(s.get("cooldown_until", 0))
        self.skipped_total = int(s.get("skipped_total", 0))


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; what `timeout`, schedulers and `docker stop` send


@dataclass
class TrainResult:
    """What `Trainer.fit` ended with: the step reached, whether the schedule is complete, the last checkpoint."""

    step: int
    finished: bool
    checkpoint: Path | None
    val: dict[str, float] | None
    reason: str  # "finished" | "steps" | "time" | "interrupted"
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_signal: int | None = None  # the signal that interrupted the run (SIGINT or SIGTERM)


ENTROPY_ROW_STRIDE = 4  # the training entropy metric reads rows 0, 4, 8, ... of each batch (see `objective`)


def objective(out: Any, y: torch.Tensor, cfg_label_smoothing: float, mtp_weight: float
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Label-smoothed CE on the main head + mtp_weight·Σ w_i·CE_i of the MTP heads (docs/original-runs.md).

    Head i at position t predicts token t+i+2 (`nanotrain.model.mtp.mtp_loss`: weights [1, 0.5, 0.25], no label
    smoothing, positions past the end dropped). Returns (loss, parts); parts holds detached `ce` (pure next-token
    NLL), `entropy` (mean predictive entropy of the main softmax, the seed's "H") and `mtp` (the weighted MTP sum).
    The entropy is a metric only, so it is estimated on every `ENTROPY_ROW_STRIDE`-th sequence of the batch: the
    rows are independent random windows, so the estimate is unbiased, and the exp over the whole [B, T, vocab]
    that an exact value needs cost ~33 ms of a ~690 ms compiled tiny CPU step (B=16, T=256; ~8 ms for a quarter
    of the rows). Evaluation (`Trainer.evaluate`, `nanoeval`) computes it exactly.
    """
    logp = F.log_softmax(out.logits.float(), dim=-1)
    nll = -logp.gather(-1, y.unsqueeze(-1)).mean()
    eps = cfg_label_smoothing
    loss = (1.0 - eps) * nll - eps * logp.mean() if eps > 0 else nll
    with torch.no_grad():
        some = logp[::ENTROPY_ROW_STRIDE]
        entropy = -(some.exp() * some).sum(-1).mean()
    mtp = mtp_loss(out.mtp_logits, y) if len(out.mtp_logits) else torch.zeros((), device=y.device)
    if len(out.mtp_logits):
        loss = loss + mtp_weight * mtp
    return loss, {"ce": nll.detach(), "entropy": entropy, "mtp": mtp.detach()}


def apply_update(model: GPT, opt: Any, params: list[torch.Tensor], loss: torch.Tensor,
                 parts: dict[str, torch.Tensor], grad_clip: float, acc: torch.Tensor,
                 dist: DistInfo | None = None) -> torch.Tensor:
    """Clip, check and apply one update after `loss.backward()`, all on the device (no host sync).

    The step counts as finite when the loss and the pre-clip gradient norm are (on every rank); the optimizers
    get that flag as `step(ok=...)` and change nothing where it is false. The step's [loss, ce, entropy, mtp,
    gnorm, 1] is added to `acc` only when finite. Returns the flag as a 0-dim int32 tensor (1 finite, 0 not).
    """
    gnorm = clip_grad_norm_(params, grad_clip)
    ok = (torch.isfinite(loss.detach()) & torch.isfinite(gnorm)).to(torch.int32)
    if dist is not None:
        all_reduce_(ok, dist, "min")
    finite = ok.bool()
    opt.step(ok=finite)
    model.after_optimizer_step()
    values = torch.stack([loss.detach().float(), parts["ce"].float(), parts["entropy"].float(),
                          parts["mtp"].float(), gnorm.detach().float(), torch.ones((), device=acc.device)])
    acc.add_(torch.where(finite, values, 0.0))
    return ok


def check_cuda_graphs(device: torch.device, world_size: int) -> None:
    """UserError unless CUDA graphs can be used: one process on a CUDA device (`--cuda-graphs`)."""
    if device.type != "cuda" or world_size > 1:
        where = f"{world_size} processes" if device.type == "cuda" else f"device {device.type}"
        raise UserError(f"--cuda-graphs: needs a single CUDA process (this run: {where})")


class _CompileFallback:
    """Calls `compiled`; if its first call raises (a compiler failure: Inductor and Dynamo raise many types), says
    so once on stderr and uses `make_eager()` from then on, so a failed compile slows a run instead of ending it."""

    def __init__(self, compiled: Callable[..., Any], make_eager: Callable[[], Callable[..., Any]], what: str,
                 instead: str) -> None:
        self.fn, self.make_eager, self.what, self.instead = compiled, make_eager, what, instead
        self.checked = False

    def __call__(self, *args: Any) -> Any:
        if self.checked:
            return self.fn(*args)
        try:
            out = self.fn(*args)
        except Exception as e:
            print(f"warning: {self.what} failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                  f"{self.instead}", file=sys.stderr)
            self.fn = self.make_eager()
            out = self.fn(*args)
        self.checked = True
        return out


def step_memory_bytes(n_params: int, cfg: ModelConfig, local_batch: int, seq_len: int, bf16: bool) -> int:
    """A lower bound on the memory one training step of one process needs, in bytes.

    Counted: fp32 weights, gradients and one optimizer state per parameter (12 bytes each); the fp32 logits, their
    log-softmax and its gradient for the main and every MTP head (12 bytes per token and vocab entry each); and
    per layer the residual stream, attention and SwiGLU activations kept for the backward pass (6·dim + 3·hidden
    values per token, bf16 under autocast). Real steps use more (temporaries, allocator slack), so a batch refused
    on this estimate cannot fit. Measured on the tiny engram-v1 CPU step (6.4M params, vocab 512, T=256, bf16,
    one thread): peak memory grew by 978 MiB at B=16 and 3470 MiB at B=64, where this estimate says 277 and 889."""
    tokens = local_batch * seq_len
    hidden = int(cfg.dim * cfg.ffn_mult)
    act = 2 if bf16 else 4
    logits = 12 * tokens * cfg.vocab_size * (1 + cfg.mtp_heads)
    layers = cfg.n_layers * tokens * (6 * cfg.dim + 3 * hidden) * act
    return 12 * n_params + logits + layers


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """(bytes free for a new allocation, what that is) on `device`: the GPU's free memory, or the RAM the kernel
    reports available (MemAvailable, capped by a cgroup memory limit); None when it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free memory on {torch.cuda.get_device_name(device)}"
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail, "available RAM"


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    random.setstate(s["python"])
    n = s["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))


class Trainer:
    """One training run: `fit()` runs until the schedule ends, `max_steps` more steps, a time budget, or Ctrl-C
    (SIGINT) or SIGTERM, which both finish the step, checkpoint and stop.

    `train_cfg.batch_size` is the GLOBAL batch (rows per step across all ranks), so a run resumes exactly at any
    world size. `loss_hook(step, loss) -> loss` lets tests poison the loss of a given step (NaN guard).
    `cuda_graphs=True` compiles the model and the loss with CUDA graphs (torch.compile mode "reduce-overhead"),
    for small batches on one GPU (`nanotrain run`'s default at batch <= 4 there): the training step reads nothing
    back to the host, so it can be replayed whole; the optimizer step stays eager. It needs a single CUDA process
    and is not saved with the run.
    """

    def __init__(
        self,
        *,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        dataset: Any,
        run_dir: str | Path,
        recipe: str,
        scale: str | None = None,
        dist: DistInfo | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        echo: Callable[[str], None] = print,
        loss_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
        nan_guard: NanGuard | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        self.dist = dist or DistInfo(device=torch.device(device or "cpu"))
        self.device = self.dist.device if dist is not None else torch.device(device or "cpu")
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.dataset, self.recipe, self.scale = dataset, recipe, scale
        self.run_dir = Path(run_dir)
        self.progress = progress and self.dist.is_main
        self._echo = echo
        self.loss_hook = loss_hook
        self.guard = nan_guard or NanGuard()
        W = self.dist.world_size
        if train_cfg.dtype not in ("bf16", "fp32"):
            raise UserError(f"--dtype {train_cfg.dtype}: expected bf16 or fp32")
        if train_cfg.batch_size % W:
            raise UserError(f"--batch-size {train_cfg.batch_size}: the global batch must divide by the world size {W}")
        if dataset.vocab_size > model_cfg.vocab_size:
            raise UserError(f"dataset {dataset.folder}: vocab {dataset.vocab_size} does not fit the model's "
                            f"vocab_size {model_cfg.vocab_size}")
        if cuda_graphs:
            check_cuda_graphs(self.device, W)
        self.cuda_graphs = cuda_graphs
        self.local_batch = train_cfg.batch_size // W
        torch.manual_seed(train_cfg.seed)
        random.seed(train_cfg.seed)
        np.random.seed(train_cfg.seed)
        self.model = GPT(model_cfg).to(self.device)
        self.model.train()
        self.opt = build_optimizers(self.model, train_cfg)
        self.params = self.opt.parameters()
        def wrapped(module):
            return wrap_model(module, self.dist, unused_parameters=self.model.has_unused_parameters)

        self.forward: Callable[..., Any] = wrapped(self.model)
        self.objective: Callable[..., Any] = objective
        if train_cfg.compile or cuda_graphs:
            mode = "reduce-overhead" if cuda_graphs else None
            self.forward = _CompileFallback(wrapped(torch.compile(self.model, mode=mode)),
                                            lambda: wrapped(self.model), "torch.compile",
                                            "continuing without --compile")
            # The loss is compiled too: fused, it costs ~150 ms instead of ~360 ms per tiny CPU step (B=16,
            # T=256, vocab 4096: log-softmax, smoothing and entropy are several passes over the logits eagerly).
            self.objective = _CompileFallback(torch.compile(objective, mode=mode), lambda: objective,
                                              "torch.compile of the loss", "computing it without compiling")
        self.loader = WindowLoader(dataset.tokens("train"), train_cfg.seq_len, self.local_batch, train_cfg.seed,
                                   rank=self.dist.rank, world_size=W)
        self.has_wavefield = any(".wavefield." in n for n, _ in self.model.named_parameters())
        self.use_bf16 = train_cfg.dtype == "bf16" and (
            self.device.type == "cpu" or (self.device.type == "cuda" and torch.cuda.is_bf16_supported()))
        self.step = 0
        self.resume_step: int | None = None
        self.start_mult: float | None = None
        self.last_train: dict[str, Any] | None = None
        self.last_val: dict[str, Any] | None = None
        self.last_checkpoint: Path | None = None
        self.flops_per_token = flops_per_token(matmul_params(self.model), model_cfg.n_layers, model_cfg.n_heads,
                                               model_cfg.dim // model_cfg.n_heads, train_cfg.seq_len)
        self.peak_flops = (peak_bf16_flops(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda"
                           else None)
        self._stop_requested = False
        self._stop_signal: int | None = None
        self._saving = False
        self._skipped_since_log = 0
        # Called with every row written to metrics.jsonl, on rank 0 (a TensorBoard mirror, `nanotrain.metrics`).
        self.log_sinks: list[Callable[[dict[str, Any]], None]] = []
        self._reset_guard_dev()

    # ----------------------------------------------------------------- helpers
    def echo(self, msg: str) -> None:
        if self.dist.is_main:
            if self.progress:
                tqdm.write(msg)
            else:
                self._echo(msg)

    def schedule_mult(self, step: int) -> float:
        """The schedule's multiplier for the update that follows `step` (WSD, or the re-warm after a resume)."""
        return lr_multiplier(step, self.train_cfg, self.resume_step, self.start_mult)

    def lr_mult(self, step: int) -> float:
        """The multiplier actually applied: the schedule's, scaled down during a NaN-guard cooldown."""
        return self.schedule_mult(step) * (self.guard.lr_factor if step < self.guard.cooldown_until else 1.0)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    def trainer_state(self) -> dict[str, Any]:
        """Everything a resume needs besides the weights (saved as trainer_state.pt)."""
        return {
            "step": self.step,
            "optimizer": self.opt.state_dict(),
            "rng": _rng_state(),
            "data": {"seed": self.train_cfg.seed, "step": self.step, "global_batch": self.train_cfg.batch_size,
                     "seq_len": self.train_cfg.seq_len},
            "schedule": {"total_steps": self.train_cfg.total_steps, "resume_step": self.resume_step,
                         "start_mult": self.start_mult, "next_mult": self.schedule_mult(self.step)},
            "nan_guard": self.guard.state(),
            "world_size": self.dist.world_size,
        }

    # ----------------------------------------------------------------- checkpoints
    def save(self, name: str | None = None) -> Path:
        """Write `step_<N>/` (or `name`) on rank 0, prune old step folders, and wait for all ranks.

        Weights that are not finite are never written (TrainingDiverged): a checkpoint must be loadable. A stop
        signal that arrives while the files are written is ignored until they are (`_install_signals`)."""
        folder = self.run_dir / (name or f"step_{self.step}")
        bad = [n for n, t in self.model.state_dict().items()
               if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise TrainingDiverged(f"step {self.step}: weights hold non-finite values ({', '.join(bad[:3])}); "
                                   f"not writing {folder}. Last good checkpoint: {ckpt.find_latest(self.run_dir)}")
        self._saving = True
        try:
            self._write_checkpoint(folder, name)
        finally:
            self._saving = False
        self.last_checkpoint = folder
        return folder

    def _write_checkpoint(self, folder: Path, name: str | None) -> None:
        if self.dist.is_main:
            metrics = {"train": self.last_train, "val": self.last_val}
            ckpt.save_checkpoint(folder, model=self.model, model_cfg=self.model_cfg, train_cfg=self.train_cfg,
                                 recipe=self.recipe, scale=self.scale, tokenizer_path=self.dataset.tokenizer_path,
                                 step=self.step, trainer_state=self.trainer_state(), metrics=metrics)
            if name is None:
                ckpt.prune_step_checkpoints(self.run_dir, self.train_cfg.keep_last)
        barrier(self.dist)

    def resume(self, folder: str | Path, trim_log: bool = True) -> None:
        """Restore weights, optimizer, step, RNG and schedule state from a checkpoint folder.

        If this run's `total_steps` differs from the checkpoint's (extending a finished or decaying run), the LR
        re-warms from the checkpoint's LR over `rewarm_steps` (`resume_lr="rewarm"`) or jumps (`"jump"`).
        `trim_log` drops rows past the checkpoint's step from this run's metrics.jsonl (written before a crash),
        so each step appears once; the NaN guard's rollback keeps them to show what happened.
        """
        folder = Path(folder)
        config = ckpt.read_config(folder)
        saved_model = ModelConfig.from_dict(config["model"])
        if saved_model != self.model_cfg:
            diff = [k for k, v in self.model_cfg.to_dict().items() if saved_model.to_dict().get(k) != v]
            raise UserError(f"{folder}: checkpoint model config differs from this run's in {', '.join(diff)}")
        state = ckpt.load_trainer_state(folder)
        ckpt.load_weights(self.model, load_file(str(folder / ckpt.MODEL_FILE), device=str(self.device)),
                          folder / ckpt.MODEL_FILE)
        self.opt.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        _set_rng_state(state["rng"])
        self.guard.load(state.get("nan_guard", {}))
        self._reset_guard_dev()
        sched = state["schedule"]
        if int(sched["total_steps"]) == self.train_cfg.total_steps:
            self.resume_step, self.start_mult = sched["resume_step"], sched["start_mult"]
        elif self.train_cfg.resume_lr == "rewarm":
            self.resume_step, self.start_mult = self.step, float(sched["next_mult"])
        else:
            self.resume_step, self.start_mult = None, None
        ckpt_metrics = folder / ckpt.METRICS_FILE
        if ckpt_metrics.is_file():
            try:
                m = json.loads(ckpt_metrics.read_text())
                self.last_train, self.last_val = m.get("train"), m.get("val")
            except (json.JSONDecodeError, AttributeError):
                pass
        self.last_checkpoint = folder
        if trim_log:
            self._trim_log()

    def _trim_log(self) -> None:
        """Rewrite metrics.jsonl (atomically) without rows after `self.step` or half-written lines."""
        path = self.run_dir / "metrics.jsonl"
        if not self.dist.is_main or not path.is_file():
            return

        def step_of(line: str) -> float:
            try:
                return float(json.loads(line)["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                return math.inf

        lines = path.read_text().splitlines()
        keep = [line for line in lines if step_of(line) <= self.step]
        if len(keep) != len(lines):
            atomic_write(path, "".join(line + "\n" for line in keep))

    def _rollback(self) -> None:
        """Reload the newest complete checkpoint of this run and scale the LR down for a while."""
        self.guard.rollbacks += 1
        if self.guard.rollbacks > self.guard.max_rollbacks:
            raise TrainingDiverged(
                f"loss stayed non-finite after {self.guard.max_rollbacks} rollbacks (step {self.step}); "
                f"lower the LR or check the data. Last good checkpoint: {ckpt.find_latest(self.run_dir)}")
        latest = ckpt.find_latest(self.run_dir)
        if latest is None:
            raise TrainingDiverged(
                f"loss was non-finite for {self.guard.patience} steps in a row at step {self.step} and there is "
                f"no checkpoint in {self.run_dir} to roll back to; lower the LR or lower --ckpt-every")
        rollbacks, skipped = self.guard.rollbacks, self.guard.skipped_total
        self.resume(latest, trim_log=False)
        self.guard.rollbacks, self.guard.skipped_total = rollbacks, skipped
        self.guard.consecutive = 0
        self._reset_guard_dev()
        self.guard.cooldown_until = self.step + self.guard.cooldown
        self.echo(f"NaN guard: rolled back to {latest} (step {self.step}); LR x{self.guard.lr_factor} "
                  f"until step {self.guard.cooldown_until} (rollback {rollbacks}/{self.guard.max_rollbacks})")

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Held-out CE (nats/token), bits/byte and entropy on the val split: the same windows every time, the first
        eval_batches x batch_size windows of seq_len whatever the world size (`nanoeval score` measures these by
        default: `nanoeval.heldout.validation_tokens`)."""
        tokens = self.dataset.tokens("val")
        T = self.train_cfg.seq_len
        if len(tokens) < T + 1:
            return None
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # nll sum, entropy sum, count
        # eval_batches counts global batches: the same windows at every world size, dealt out to the ranks.
        batches = sequential_batches(tokens, T, self.local_batch,
                                     max_batches=self.train_cfg.eval_batches * self.dist.world_size)
        for i, (x, y) in enumerate(batches):
            if i % self.dist.world_size != self.dist.rank:
                continue
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                logits = self.model(x).logits
            logp = F.log_softmax(logits.float(), dim=-1)
            sums[0] += -logp.gather(-1, y.unsqueeze(-1)).sum().double()
            sums[1] += -(logp.exp() * logp).sum().double()
            sums[2] += y.numel()
        self.model.train()
        all_reduce_(sums, self.dist)
        ce = (sums[0] / sums[2]).item()
        bpt = self.dataset.bytes_per_token("val")
        return {"val_ce": ce, "val_bpb": ce / math.log(2) / bpt, "val_entropy": (sums[1] / sums[2]).item(),
                "val_tokens": int(sums[2].item())}

    # ----------------------------------------------------------------- the step
    def _train_step(self, acc: torch.Tensor) -> None:
        """One update at `self.step` (0-based count of updates done), with nothing read back to the host.

        Accumulates [loss, ce, entropy, mtp, gnorm, n_ok] of a finite step into `acc`; a non-finite step changes
        no weight and no optimizer state (`apply_update`) and counts in the NaN guard's device counters, which
        the loop reads at its sync points (`_sync_guard`)."""
        cfg = self.train_cfg
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are no longer needed
        self.opt.set_lr_scale(self.lr_mult(self.step))
        x, y = self._batch(self.step)
        with self._autocast():
            out = self.forward(x)
        loss, parts = self.objective(out, y, cfg.label_smoothing, self.model_cfg.mtp_weight)
        if self.loss_hook is not None:
            loss = self.loss_hook(self.step + 1, loss)
        loss.backward()
        if self.has_wavefield and self.step < cfg.wavefield_warmup_delay:
            zero_wavefield_physics_grads(self.model)
        ok = apply_update(self.model, self.opt, self.params, loss, parts, cfg.grad_clip, acc, self.dist)
        bad = 1 - ok
        g = self._guard_dev                       # [consecutive, worst run since the last sync, skipped since]
        run = (g[0] + 1) * bad
        g.copy_(torch.stack((run, torch.maximum(g[1], run), g[2] + bad)))
        self.opt.zero_grad()
        self.step += 1

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's (x, y). On a GPU the windows go over in one copy from pinned memory, which does not wait for
        the GPU: a copy from pageable memory synchronises the stream first, which would undo the sync-free step."""
        if self.device.type != "cuda":
            return self.loader.batch(step)
        rows = self.loader.windows(step).pin_memory().to(self.device, non_blocking=True)
        return rows[:, :-1], rows[:, 1:]

    def _sync_guard(self) -> bool:
        """Read the NaN guard's device counters (a host sync: done at log, eval, checkpoint and stop points only).
        Returns True when `patience` non-finite steps in a row happened since the last read (roll back)."""
        run, worst, skipped = self._guard_dev.tolist()
        self._guard_dev[1:] = 0
        self.guard.consecutive = run
        self.guard.skipped_total += skipped
        self._skipped_since_log += skipped
        return worst >= self.guard.patience

    def _reset_guard_dev(self) -> None:
        self._guard_dev = torch.tensor([self.guard.consecutive, 0, 0], dtype=torch.int32, device=self.device)

    def _write_row(self, log_path: Path, row: dict[str, Any]) -> None:
        """Append one row to metrics.jsonl and hand it to the log sinks."""
        row = _finite(row)
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for sink in self.log_sinks:
            sink(row)

    def _log(self, acc: torch.Tensor, n_steps: int, seconds: float, log_path: Path, skipped: int) -> dict[str, Any]:
        """Read the accumulated metrics (the only host sync of a log interval) and write one line."""
        all_reduce_(acc, self.dist, "sum")
        a = acc.tolist()
        n_ok = a[5] / self.dist.world_size
        mean = (lambda i: a[i] / a[5]) if a[5] > 0 else (lambda i: float("nan"))
        tokens = n_steps * self.train_cfg.batch_size * self.train_cfg.seq_len
        tok_per_s = tokens / seconds if seconds > 0 else float("nan")
        mfu = model_flops_utilisation(tok_per_s, self.flops_per_token,
                                      self.peak_flops and self.peak_flops * self.dist.world_size)
        row = {
            "kind": "train", "step": self.step, "loss": mean(0), "ce": mean(1), "entropy": mean(2),
            "mtp": mean(3) if self.model_cfg.mtp_heads else None, "lr": self.train_cfg.lr * self.lr_mult(self.step - 1),
            "gnorm": mean(4), "tok_per_s": tok_per_s, "mfu": mfu, "step_ms": 1000.0 * seconds / max(n_steps, 1),
            "skipped": skipped, "steps_ok": int(round(n_ok)), "time": time.time(),
        }
        self.last_train = row
        if self.dist.is_main:
            self._write_row(log_path, row)
            self.echo(f"{row['step']:>7d}  {row['loss']:8.4f}  {row['ce']:7.4f}  {row['lr']:9.6f}  "
                      f"{row['gnorm']:7.3f}  {tok_per_s:9.0f}" + (f"  skipped {skipped}" if skipped else ""))
        return row

    def _log_val(self, log_path: Path) -> dict[str, float] | None:
        """Evaluate, log one val row, and stop the run (TrainingDiverged, before any checkpoint is written) when
        the validation CE is not finite: the weights are damaged (a corrupt resume state) or diverged."""
        val = self.evaluate()
        if val is None:
            return None
        self.last_val = {"kind": "val", "step": self.step, **val, "time": time.time()}
        if self.dist.is_main:
            self._write_row(log_path, self.last_val)
            self.echo(f"{self.step:>7d}  val CE {val['val_ce']:.4f}  bpb {val['val_bpb']:.4f}")
        if not math.isfinite(val["val_ce"]):
            raise TrainingDiverged(
                f"step {self.step}: validation CE is {val['val_ce']}; stopping without writing a checkpoint. "
                f"Last good checkpoint: {ckpt.find_latest(self.run_dir)}")
        return val

    # ----------------------------------------------------------------- the loop
    def fit(self, *, max_steps: int | None = None, time_budget_s: float | None = None) -> TrainResult:
        """Train from `self.step` to `total_steps` (or `max_steps` more, or until the time budget / Ctrl-C).

        Checkpoints every `ckpt_every` steps (`step_<N>/`), at the end (`final/`), and when stopped early.
        """
        cfg = self.train_cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.run_dir / "metrics.jsonl"
        target = cfg.total_steps if max_steps is None else min(cfg.total_steps, self.step + max_steps)
        if self.step >= cfg.total_steps:
            raise UserError(f"{self.run_dir}: already at step {self.step} of {cfg.total_steps}; "
                            "pass a larger --total-steps to extend the run")
        bar = tqdm(total=cfg.total_steps, initial=self.step, disable=not self.progress, desc=self.recipe,
                   unit="step", dynamic_ncols=True, leave=False)
        self.echo(f"{'Step':>7}  {'Loss':>8}  {'CE':>7}  {'LR':>9}  {'gnorm':>7}  {'tok/s':>9}")
        old_handlers = self._install_signals()
        try:
            return self._fit(target, time_budget_s, log_path, bar)
        finally:
            for signum, old in old_handlers.items():
                signal.signal(signum, old)

    def _fit(self, target: int, time_budget_s: float | None, log_path: Path, bar: tqdm) -> TrainResult:
        cfg = self.train_cfg
        history: list[dict[str, Any]] = []
        acc = torch.zeros(6, device=self.device)
        reason = "finished"
        t_start = t_log = time.time()
        steps_since_log = 0
        self._skipped_since_log = 0
        try:
            while self.step < target:
                self._train_step(acc)
                steps_since_log += 1
                bar.update(1)
                boundary = self.step % cfg.log_every == 0 or self.step == target
                eval_due = bool(cfg.eval_every) and self.step % cfg.eval_every == 0 and self.step < cfg.total_steps
                ckpt_due = bool(cfg.ckpt_every) and self.step % cfg.ckpt_every == 0 and self.step < cfg.total_steps
                stop = self._should_stop(t_start, time_budget_s, boundary)
                if not (boundary or eval_due or ckpt_due or stop):
                    continue  # no host sync between sync points: the GPU stays busy
                if self._sync_guard():  # a run of non-finite steps: back to the last checkpoint
                    self._rollback()
                    acc.zero_()
                    steps_since_log = self._skipped_since_log = 0
                    t_log = time.time()
                    bar.n = self.step
                    bar.refresh()
                    continue
                if boundary:
                    row = self._log(acc, steps_since_log, time.time() - t_log, log_path, self._skipped_since_log)
                    history.append(row)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}")
                    acc.zero_()
                    steps_since_log = self._skipped_since_log = 0
                if eval_due:
                    self._log_val(log_path)
                if boundary:
                    t_log = time.time()
                if ckpt_due:
                    self.save()
                if stop:
                    reason = "interrupted" if self._stop_requested else "time"
                    break
            else:
                reason = "finished" if self.step >= cfg.total_steps else "steps"
        finally:
            bar.close()
        if steps_since_log:
            history.append(self._log(acc, steps_since_log, time.time() - t_log, log_path, self._skipped_since_log))
        if self.last_val is not None and self.last_val.get("step") == self.step:
            val = {k: v for k, v in self.last_val.items() if k.startswith("val_")}
        else:
            val = self._log_val(log_path)
        if reason == "finished":
            folder = self.save("final")
        elif self.last_checkpoint is not None and self.last_checkpoint.name == f"step_{self.step}":
            folder = self.last_checkpoint
        else:
            folder = self.save()
        return TrainResult(self.step, reason == "finished", folder, val, reason, history, self._stop_signal)

    def _install_signals(self) -> dict[int, Any]:
        """SIGINT (Ctrl-C) and SIGTERM: the first finishes the current step, checkpoints and stops; a second one
        aborts at once (KeyboardInterrupt), except while a checkpoint is being written, where it is ignored until
        the files are complete. Returns the previous handlers ({} off the main thread, where none can be set)."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):  # noqa: ANN001 - signal handler signature
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            if self._stop_requested:
                if self._saving:
                    self.echo(f"{name}: a checkpoint is being written; it finishes first")
                    return
                raise KeyboardInterrupt
            self._stop_requested, self._stop_signal = True, signum
            self.echo(f"{name}: stopping after this step and saving a checkpoint (Ctrl-C again to abort)")

        return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}

    def _should_stop(self, t_start: float, budget: float | None, boundary: bool) -> bool:
        """Ctrl-C or time budget. On several ranks the decision is shared at log boundaries only, so every rank
        stops at the same step without a per-step collective."""
        want = self._stop_requested or (budget is not None and time.time() - t_start >= budget)
        if not self.dist.enabled:
            return want
        if not boundary:
            return False
        flag = torch.tensor([int(want)], device=self.device)
        all_reduce_(flag, self.dist, "max")
        return bool(flag.item())


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: non-finite floats become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
