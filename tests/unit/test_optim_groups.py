"""Optimizer groups (docs/original-runs.md, "Optimisers" + our fixes), the Optimizers bundle, clipping and the
warmup-delay helper."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from nanotrain.config import TrainConfig
from nanotrain.errors import UserError
from nanotrain.optim.groups import (
    assign_group,
    build_optimizers,
    clip_grad_norm_,
    unwrap_model,
    zero_wavefield_physics_grads,
)

V, D = 64, 16


# Parameter names from docs/DEVELOPING.md with small shapes, and the group each must land in.
NAMED_SHAPES = {
    "tok_embed.weight": ((V, D), "lion"),
    "blocks.0.norm_attn.weight": ((D,), "lion"),
    "blocks.0.mhc_attn.alpha_logits": ((2, 2), "lion"),
    "blocks.0.mhc_ffn.beta": ((2,), "lion"),
    "blocks.0.attn.wq.weight": ((D, D), "muon"),
    "blocks.0.attn.wk.weight": ((4, D), "muon"),
    "blocks.0.ffn.w_gate.weight": ((32, D), "muon"),
    "blocks.0.ffn.w_down.weight": ((D, 32), "muon"),
    "blocks.0.engram.tables.0": ((101, 8), "muon_engram"),
    "blocks.0.engram.w_k.weight": ((D, D), "muon_engram"),
    "blocks.0.engram.conv_weight": ((D, 1, 4), "muon_engram"),
    "blocks.0.engram.gate_norm.weight": ((D,), "lion_engram"),
    "blocks.1.wavefield.omega": ((4,), "lion_wavefield_physics"),
    "blocks.1.wavefield.alpha_raw": ((4,), "lion_wavefield_physics"),
    "blocks.1.wavefield.phi": ((4,), "lion_wavefield_physics"),
    "blocks.1.wavefield.coupling_logits": ((4, 4), "lion_wavefield_physics"),
    "blocks.1.wavefield.kernel_haar_coeffs": ((4, 32), "lion_wavefield_physics"),
    "blocks.1.wavefield.scatter.weight": ((D, D), "muon"),
    "mtp.heads.0.weight": ((V, D), "lion"),
    "mtp.heads.0.bias": ((V,), "lion"),
    "mtp.heads.1.proj.weight": ((D, D), "lion"),
    "shared_loop.g_qk.weight": ((1, D), "muon"),
    "norm_final.weight": ((D,), "lion"),
}


class ShapesModel(nn.Module):
    """Holds parameters under the given dotted names (nested modules), registered in the given order."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.cfg = type("Cfg", (), {"vocab_size": V})()
        for name in names:
            *path, leaf = name.split(".")
            mod: nn.Module = self
            for part in path:
                if not hasattr(mod, part):
                    mod.add_module(part, nn.Module())
                mod = getattr(mod, part)
            mod.register_parameter(leaf, nn.Parameter(torch.randn(NAMED_SHAPES[name][0])))


def test_assignment_rule() -> None:
    model = ShapesModel(list(NAMED_SHAPES))
    for name, p in model.named_parameters():
        assert assign_group(name, p, V)[0] == NAMED_SHAPES[name][1], name
    opts = build_optimizers(model, TrainConfig())
    groups = {g.name: g for g in opts.describe()}
    assert set(groups) == {v[1] for v in NAMED_SHAPES.values()}
    assert sum(g.n_params for g in groups.values()) == sum(p.numel() for p in model.parameters())
    assert {g.name: g.optimizer for g in groups.values()} == {
        "muon": "muon", "muon_engram": "muon", "lion": "lion", "lion_engram": "lion",
        "lion_wavefield_physics": "lion"}


def test_per_group_lrs_and_scale() -> None:
    cfg = TrainConfig(lr=0.02, lion_lr=3e-4, engram_lr_mult=5.0, wavefield_physics_lr=7e-4)
    opts = build_optimizers(ShapesModel(list(NAMED_SHAPES)), cfg)
    want = {"muon": 0.02, "muon_engram": 0.1, "lion": 3e-4, "lion_engram": 1.5e-3, "lion_wavefield_physics": 7e-4}
    assert {g.name: g.base_lr for g in opts.describe()} == pytest.approx(want)
    opts.set_lr_scale(0.25)
    live = {g["name"]: g["lr"] for g in opts.param_groups}
    assert live == pytest.approx({k: v * 0.25 for k, v in want.items()})


def test_engram_lr_multiplier_moves_engram_params_further() -> None:
    """Same gradient, same optimizer: the engram group's step is engram_lr_mult times larger."""
    model = ShapesModel(["blocks.0.attn.wq.weight", "blocks.0.engram.w_k.weight", "tok_embed.weight"])
    with torch.no_grad():
        model.get_parameter("blocks.0.engram.w_k.weight").copy_(model.get_parameter("blocks.0.attn.wq.weight"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opts = build_optimizers(model, TrainConfig(lr=0.01, engram_lr_mult=3.0))
    g = torch.randn(D, D)
    for n, p in model.named_parameters():
        p.grad = g.clone() if p.shape == (D, D) else torch.zeros_like(p)
    opts.step()
    d_attn = model.get_parameter("blocks.0.attn.wq.weight").detach() - before["blocks.0.attn.wq.weight"]
    d_engram = model.get_parameter("blocks.0.engram.w_k.weight").detach() - before["blocks.0.engram.w_k.weight"]
    torch.testing.assert_close(d_engram, 3.0 * d_attn)


class TinyLM(nn.Module):
    """A per-token MLP language model with a tied head, named like the real model."""

    def __init__(self, reverse: bool = False) -> None:
        super().__init__()
        self.cfg = type("Cfg", (), {"vocab_size": V})()
        mods = [("tok_embed", lambda: nn.Embedding(V, D)), ("norm_attn", lambda: nn.RMSNorm(D)),
                ("w_up", lambda: nn.Linear(D, 3 * D, bias=False)), ("w_down", lambda: nn.Linear(3 * D, D, bias=False)),
                ("norm_final", lambda: nn.RMSNorm(D))]
        for name, make in (reversed(mods) if reverse else mods):
            self.add_module(name, make())
        nn.init.normal_(self.tok_embed.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_embed(idx)
        x = x + self.w_down(torch.relu(self.w_up(self.norm_attn(x))))
        return self.norm_final(x) @ self.tok_embed.weight.T


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (8, 32), generator=g)
    return x, (x * 7 + 3) % V


def _train(model: TinyLM, opts, steps: int) -> list[float]:
    x, y = _batch()
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opts.step()
        opts.zero_grad()
        losses.append(loss.item())
    return losses


def test_muon_and_lion_reduce_the_loss() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    opts = build_optimizers(model, TrainConfig(lr=0.02, lion_lr=1e-2))
    assert {(g.name, g.n_params) for g in opts.describe()} == {("muon", 2 * 3 * D * D), ("lion", V * D + 2 * D)}
    losses = _train(model, opts, 40)
    assert losses[0] > 4.0                      # ≈ ln(64): the model starts at chance
    assert losses[-1] < 0.5, losses             # and learns the fixed mapping


def test_state_dict_round_trip_gives_identical_next_steps() -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(lr=0.02, lion_lr=3e-3)
    a = TinyLM()
    opt_a = build_optimizers(a, cfg)
    _train(a, opt_a, 3)
    saved = io.BytesIO()
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, saved)

    def restored(load_opt: bool) -> TinyLM:
        saved.seek(0)
        blob = torch.load(saved)
        b = TinyLM(reverse=True)                 # other registration order: state is matched by name
        b.load_state_dict(blob["model"])
        opt_b = build_optimizers(b, cfg)
        if load_opt:
            opt_b.load_state_dict(blob["opt"])
        _train(b, opt_b, 2)
        return b

    _train(a, opt_a, 2)
    b = restored(load_opt=True)
    for (name, pa), pb in zip(a.named_parameters(), (b.get_parameter(n) for n, _ in a.named_parameters())):
        assert torch.equal(pa, pb), name
    fresh = restored(load_opt=False)
    assert not torch.equal(a.w_up.weight, fresh.w_up.weight)


def test_load_state_dict_refuses_another_model() -> None:
    opt_tiny = build_optimizers(TinyLM(), TrainConfig())
    state = opt_tiny.state_dict()
    other = build_optimizers(ShapesModel(["tok_embed.weight", "blocks.0.attn.wq.weight"]), TrainConfig())
    with pytest.raises(UserError, match="does not match"):
        other.load_state_dict(state)
    state["muon"]["w_down.weight"]["momentum_buffer"].fill_(7.0)
    state["lion"]["tok_embed.weight"]["exp_avg"] = torch.zeros(3)
    target = build_optimizers(TinyLM(), TrainConfig())
    with pytest.raises(UserError, match="tok_embed.weight"):
        target.load_state_dict(state)
    assert not target.state_dict()["muon"]["w_down.weight"]["momentum_buffer"].any()   # nothing half-loaded
    with pytest.raises(UserError, match="format"):
        opt_tiny.load_state_dict({"muon": {}})


def test_clip_grad_norm_over_all_params() -> None:
    model = ShapesModel(["tok_embed.weight", "mtp.heads.0.weight", "blocks.0.attn.wq.weight"])
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    total = (sum(p.numel() for p in model.parameters()) * 0.25) ** 0.5
    norm = clip_grad_norm_(model.parameters(), 0)            # measure only
    assert isinstance(norm, torch.Tensor) and norm.item() == pytest.approx(total)
    assert model.get_parameter("mtp.heads.0.weight").grad[0, 0].item() == 0.5
    norm = clip_grad_norm_(model.parameters(), 1.0)
    assert norm.item() == pytest.approx(total)
    after = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
    assert after.item() == pytest.approx(1.0, rel=1e-5)


def test_zero_wavefield_physics_grads_freezes_exactly() -> None:
    names = [n for n in NAMED_SHAPES if ".wavefield." in n] + ["blocks.0.attn.wq.weight"]
    model = ShapesModel(names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opts = build_optimizers(model, TrainConfig())
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        zero_wavefield_physics_grads(model)
        opts.step()
    for n, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[n])
        assert moved == (n.split(".")[-1] not in {"omega", "alpha_raw", "phi", "coupling_logits",
                                                   "kernel_haar_coeffs"}), n


def test_compiled_wrapper_keeps_names() -> None:
    model = TinyLM()
    assert unwrap_model(torch.compile(model)) is model
    opts = build_optimizers(torch.compile(model), TrainConfig())
    assert "tok_embed.weight" in opts.state_dict()["lion"]


# ---- the real model (nanotrain.model.gpt.GPT from a recipe's tiny scale)

PHYSICS = {"omega", "alpha_raw", "phi", "coupling_logits", "kernel_haar_coeffs"}


def _expected_group(name: str, shape: tuple[int, ...], vocab: int) -> str:
    """The rule written out independently of `assign_group`, from the parameter names of DEVELOPING.md."""
    parts = name.split(".")
    if "wavefield" in parts and parts[-1] in PHYSICS:
        return "lion_wavefield_physics"
    lion = (len(shape) <= 1 or (len(shape) == 2 and shape[0] == vocab)
            or any(p in ("mhc_attn", "mhc_ffn") for p in parts) or parts[0] == "mtp")
    base = "lion" if lion else "muon"
    return base + "_engram" if "engram" in parts else base


def _all_features_cfg(shrink: bool):
    import dataclasses

    from nanotrain.recipes import get_recipe

    model_cfg, train_cfg = get_recipe("engram-mtp").build("tiny")
    model_cfg = dataclasses.replace(model_cfg, wavefield_ratio=0.5)
    if shrink:  # same features, fewer FLOPs: the step tests run a few real forward/backward passes
        model_cfg = dataclasses.replace(model_cfg, dim=64, n_heads=2, n_kv_heads=1, n_layers=4, max_seq_len=64,
                                        engram_layers=[0, 3], engram_d_mem=8, engram_table_size=101,
                                        wavefield_field_size=16, wavefield_haar_levels=2)
    return model_cfg, train_cfg


@pytest.mark.parametrize("recipe", ["engram-mtp+wavefield", "looplm"])
def test_groups_of_the_real_model(recipe: str) -> None:
    from nanotrain.model.gpt import GPT
    from nanotrain.recipes import get_recipe

    if recipe == "looplm":
        model_cfg, train_cfg = get_recipe("looplm").build("tiny")
    else:
        model_cfg, train_cfg = _all_features_cfg(shrink=False)
    model = GPT(model_cfg)
    opts = build_optimizers(model, train_cfg)
    member = {id(p): g["name"] for o in (opts.muon, opts.lion) for g in o.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(member) == len(names)
    for name, p in names.items():
        assert member[id(p)] == _expected_group(name, tuple(p.shape), model_cfg.vocab_size), name
    groups = {g.name: g for g in opts.describe()}
    if recipe == "looplm":
        assert set(groups) == {"muon", "lion"}
        assert member[id(names["shared_loop.exit_gate.weight"])] == "muon"
    else:
        assert set(groups) == {"muon", "muon_engram", "lion", "lion_engram", "lion_wavefield_physics"}
        assert groups["muon_engram"].base_lr == pytest.approx(train_cfg.lr * train_cfg.engram_lr_mult)
        assert groups["lion_wavefield_physics"].base_lr == train_cfg.wavefield_physics_lr
        assert member[id(names["tok_embed.weight"])] == "lion"
        assert any(n.startswith("mtp.") for n in names) and any(".engram.tables." in n for n in names)
    assert sum(g.n_params for g in groups.values()) == sum(p.numel() for p in model.parameters())


def _real_steps(model, opts, x, n: int, freeze_physics: bool = False) -> list[float]:
    losses = []
    for _ in range(n):
        out = model(x[:, :-1])
        loss = nn.functional.cross_entropy(out.logits.flatten(0, 1), x[:, 1:].flatten())
        for i, mtp in enumerate(out.mtp_logits):
            keep = x.shape[1] - 2 - i
            loss = loss + 0.2 * nn.functional.cross_entropy(mtp[:, :keep].flatten(0, 1), x[:, 2 + i:].flatten())
        loss.backward()
        if freeze_physics:
            zero_wavefield_physics_grads(model)
        clip_grad_norm_(model.parameters(), 1.0)
        opts.step()
        model.after_optimizer_step()
        opts.zero_grad()
        losses.append(loss.item())
    return losses


def test_real_model_trains_freezes_physics_and_resumes_exactly() -> None:
    from nanotrain.model.gpt import GPT

    model_cfg, train_cfg = _all_features_cfg(shrink=True)
    train_cfg.lion_lr = 3e-3
    torch.manual_seed(0)
    x = torch.randint(2, model_cfg.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))
    model = GPT(model_cfg)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opts = build_optimizers(model, train_cfg)
    losses = _real_steps(model, opts, x, 6, freeze_physics=True)
    assert losses[-1] < losses[0] - 0.5, losses
    for n, p in model.named_parameters():
        if n.split(".")[-1] in PHYSICS:
            assert torch.equal(p.detach(), start[n]), n
    moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), start[n])]
    assert any(".engram.tables." in n for n in moved) and "tok_embed.weight" in moved
    assert any(".mhc_attn." in n for n in moved) and any(n.startswith("mtp.") for n in moved)

    # resume: weights + optimizer state by name into a fresh model give bit-identical next steps
    blob = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opts.state_dict()}, blob)
    _real_steps(model, opts, x, 2)
    blob.seek(0)
    saved = torch.load(blob)
    resumed = GPT(model_cfg)
    resumed.load_state_dict(saved["model"])
    opts_resumed = build_optimizers(resumed, train_cfg)
    opts_resumed.load_state_dict(saved["opt"])
    _real_steps(resumed, opts_resumed, x, 2)
    for (n, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: host syncs only exist with a device")
def test_step_and_clip_never_sync_with_the_gpu() -> None:
    model = ShapesModel(list(NAMED_SHAPES)).cuda()
    opts = build_optimizers(model, TrainConfig())
    assert opts.muon._ns_dtype_for(torch.device("cuda")) == torch.bfloat16
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        zero_wavefield_physics_grads(model)
        norm = clip_grad_norm_(model.parameters(), 1.0)
        opts.set_lr_scale(0.5)
        opts.step()
        opts.step(ok=torch.isfinite(norm))  # the NaN guard's gated step
        opts.zero_grad()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _twin_models(weight_decay: float) -> tuple[ShapesModel, ShapesModel, object, object]:
    torch.manual_seed(0)
    a = ShapesModel(list(NAMED_SHAPES))
    b = ShapesModel(list(NAMED_SHAPES))
    b.load_state_dict(a.state_dict())
    cfg = TrainConfig(weight_decay=weight_decay)
    return a, b, build_optimizers(a, cfg), build_optimizers(b, cfg)


def _state(model: nn.Module, opts) -> dict[str, torch.Tensor]:
    out = {f"w.{n}": p.detach().clone() for n, p in model.named_parameters()}
    for name, opt in opts._optimizers():
        for i, p in enumerate(opts.parameters()):
            for k, v in opt.state.get(p, {}).items():
                out[f"{name}.{i}.{k}"] = v.clone()
    return out


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_gated_step_equals_the_plain_step_and_a_false_flag_changes_nothing(weight_decay: float) -> None:
    """`step(ok=True)` is bit-identical to `step()`; `step(ok=False)` with NaN/inf gradients leaves every weight
    and optimizer buffer exactly as it was (the NaN guard's skip, decided on the device)."""
    plain, gated, opts_plain, opts_gated = _twin_models(weight_decay)
    for step in range(3):
        torch.manual_seed(step)
        for p, q in zip(plain.parameters(), gated.parameters()):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opts_plain.set_lr_scale(0.7)
        opts_gated.set_lr_scale(0.7)
        opts_plain.step()
        opts_gated.step(ok=torch.tensor(True))
    before = _state(gated, opts_gated)
    reference = _state(plain, opts_plain)
    assert all(torch.equal(v, reference[k]) for k, v in before.items())
    for i, q in enumerate(gated.parameters()):
        q.grad = torch.randn_like(q)
        q.grad.view(-1)[0] = float("nan") if i % 2 else float("inf")
    opts_gated.step(ok=torch.tensor(False))
    after = _state(gated, opts_gated)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed
    # Muon zeroes its gradients in place (NaN and inf too); Lion reads zeroed copies and leaves its gradients be
    muon_params = {id(p) for g in opts_gated.muon.param_groups for p in g["params"]}
    lion_params = [q for q in gated.parameters() if id(q) not in muon_params]
    assert muon_params and lion_params
    assert all(torch.count_nonzero(q.grad) == 0 for q in gated.parameters() if id(q) in muon_params)
    assert all(not torch.isfinite(q.grad).all() for q in lion_params)


def test_gated_step_reads_nothing_back_to_the_host() -> None:
    """On the meta device any host read (.item(), bool(), a tensor used as a Python number) raises, so a gated
    step that completes there decides everything on the device: what makes the NaN guard sync-free on a GPU."""
    model = ShapesModel(list(NAMED_SHAPES)).to("meta")
    opts = build_optimizers(model, TrainConfig(weight_decay=0.05))
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    ok = torch.empty((), dtype=torch.bool, device="meta")
    with pytest.raises(RuntimeError, match="meta"):
        bool(ok)  # the probe works: a host read of a meta tensor fails
    clip_grad_norm_(model.parameters(), 1.0)
    opts.step(ok=ok)


def test_newton_schulz_runs_in_bf16_on_a_cpu_only_for_bf16_runs():
    from nanotrain.optim.groups import default_ns_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert default_ns_dtype(cpu, "bf16") == (torch.bfloat16 if native else None)
    assert default_ns_dtype(cpu, "fp32") is None  # fp32 runs (the regression runs) keep fp32 orthogonalisation
    assert default_ns_dtype(cuda, "fp32") is None  # CUDA: Muon's own choice (bf16)
    model = ShapesModel(list(NAMED_SHAPES))
    assert build_optimizers(model, TrainConfig(dtype="fp32")).muon._ns_dtype_for(cpu) == torch.float32
    want = torch.bfloat16 if native else torch.float32
    assert build_optimizers(model, TrainConfig(dtype="bf16")).muon._ns_dtype_for(cpu) == want
