"""Hugging Face `transformers`, both ways: export a nanolab checkpoint as a model folder, and load any local causal
LM folder for `nanoeval score --hf` / `generate --hf`.

Export (`export`):
- A checkpoint whose architecture Llama expresses (one residual stream, i.e. `mhc_streams=1`; no Engram,
  wavefield, LoopLM or ternary QAT) becomes a native `LlamaForCausalLM`: RMSNorm (same eps), half-split RoPE
  (same theta), GQA with torch's grouped head mapping, SwiGLU, bias-free projections, tied embedding, no logit
  scaling or soft-capping. The fused `wqkv`/`w_gate_up` weights are split back into q/k/v and gate/up along their
  row blocks (`nanotrain.model.fused`).
- Every other checkpoint becomes a `trust_remote_code` folder: `nanoeval.hf_modeling` (a transformers wrapper
  around nanolab's own `GPT`, so nanolab must be installed where it is loaded) copied in as `modeling_nanolab.py`.
- MTP heads are dropped (generation never reads them); the command says so, and so does the card.
- tokenizer.json is the checkpoint's; tokenizer_config.json and special_tokens_map.json declare `<eos>` and
  `<pad>` (and that text like "<eos>" in a source file stays text, as nanolab encodes it). README.md is a model
  card: recipe, data, tokens seen, and the held-out metrics of the checkpoint's score report when there is one.
- Before the folder is moved into place, the exported model is loaded back and its logits are compared with
  nanolab's on a probe sequence (fp32): an export that does not reproduce the model is not written.

Load (`load_hf`): the folder's model behind the interface the engine and held-out loss call (`HFCausalLM`), and
its tokenizer's `tokenizers.Tokenizer`. A nanolab remote-code folder loads with the installed
`nanoeval.hf_modeling` (the folder's own copy is not run) and hands the engine the GPT inside.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from nanotrain.errors import UserError
from nanotrain.extras import require

REMOTE_FILE = "modeling_nanolab.py"
PROBE_TOLERANCE = 1e-4  # max |logit difference| the export accepts (fp32)
_LLAMA_LAYER = {  # nanolab block parameter (separate projections) -> LlamaDecoderLayer parameter
    "norm_attn.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "norm_ffn.weight": "post_attention_layernorm.weight",
    "ffn.w_gate.weight": "mlp.gate_proj.weight",
    "ffn.w_up.weight": "mlp.up_proj.weight",
    "ffn.w_down.weight": "mlp.down_proj.weight",
}


# ---------------------------------------------------------------------------------------------------- export

def llama_blockers(cfg) -> list[str]:
    """Why `LlamaForCausalLM` cannot express a ModelConfig (empty: it can). MTP heads are not listed: they are
    dropped from every export."""
    reasons = []
    if cfg.mhc_streams != 1:
        reasons.append(f"mHC-lite residual streams (mhc_streams={cfg.mhc_streams})")
    if cfg.engram_layers:
        reasons.append(f"Engram memory on layers {cfg.engram_layers}")
    if cfg.wavefield_ratio > 0:
        reasons.append(f"wavefield layers ({cfg.wavefield_mode})")
    if cfg.loop_count:
        reasons.append(f"a LoopLM shared block looped {cfg.loop_count} times")
    if cfg.quant != "none":
        reasons.append(f"{cfg.quant} quantisation-aware layers")
    return reasons


def unfused_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every fused projection split into its separate weights (the names
    `nanotrain.model.fused.LEGACY_FUSIONS` lists), along the weight's row blocks."""
    from nanotrain.model.fused import LEGACY_FUSIONS, row_blocks

    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        for fused, parts in LEGACY_FUSIONS:
            if name.endswith("." + fused):
                prefix = name[: -len(fused)]
                blocks = row_blocks(params[name])
                if len(blocks) != len(parts):
                    raise ValueError(f"{name}: {len(blocks)} row blocks, expected {len(parts)}")
                out.update({prefix + part: w for part, w in zip(parts, tensor.split(blocks, dim=0))})
                break
        else:
            out[name] = tensor
    return out


def llama_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A Llama-expressible GPT's weights under `LlamaForCausalLM`'s names (MTP heads left out)."""
    out = {}
    for name, tensor in unfused_state_dict(model).items():
        if name.startswith("mtp."):
            continue
        if name == "tok_embed.weight":
            out["model.embed_tokens.weight"] = tensor
            out["lm_head.weight"] = tensor  # tied: the same tensor
        elif name == "norm_final.weight":
            out["model.norm.weight"] = tensor
        else:
            _, layer, rest = name.split(".", 2)  # blocks.<i>.<rest>
            out[f"model.layers.{layer}.{_LLAMA_LAYER[rest]}"] = tensor
    return out


def _llama_config(cfg, **special):
    transformers = require("transformers", "exporting to transformers")
    from nanotrain.model.mlp import ffn_hidden_dim

    return transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.dim // cfg.n_heads,
        intermediate_size=ffn_hidden_dim(cfg.dim, cfg.ffn_mult, cfg.ffn_multiple_of), hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, tie_word_embeddings=True,
        attention_bias=False, mlp_bias=False, initializer_range=cfg.init_std, **special,
    )


def _remote_model(cfg, state: dict[str, torch.Tensor], bypass: bool, **special):
    """The `NanolabForCausalLM` of `cfg` holding `state` (a GPT state dict without MTP heads)."""
    from nanoeval.hf_modeling import NanolabConfig, NanolabForCausalLM

    config = NanolabConfig(nanolab_model=cfg.to_dict(), bypass_noncausal=bypass,
                           auto_map={"AutoConfig": f"{REMOTE_FILE[:-3]}.NanolabConfig",
                                     "AutoModelForCausalLM": f"{REMOTE_FILE[:-3]}.NanolabForCausalLM"},
                           architectures=["NanolabForCausalLM"], **special)
    model = NanolabForCausalLM(config)
    missing, unexpected = model.model.load_state_dict(state, strict=False)
    fixed = {n for n, _ in model.model.named_buffers()}  # the tables GPT computes itself (same values)
    if unexpected or set(missing) - fixed:
        raise RuntimeError(f"remote-code export: weights do not match (missing {missing}, unexpected {unexpected})")
    return model


@dataclass
class ExportResult:
    """What `export` wrote: the folder, the transformers class, why native Llama was not used, what was left out,
    and the largest logit difference of the probe check."""

    out: Path
    architecture: str
    remote_code: bool
    blockers: list[str]
    dropped: list[str]
    max_abs_diff: float
    notes: list[str] = field(default_factory=list)


def export(ckpt: str | Path, out: str | Path, *, inference_mode: str = "refuse", verify: bool = True,
           force: bool = False) -> ExportResult:
    """Write the transformers folder `out` for checkpoint `ckpt` (see the module docstring)."""
    transformers = require("transformers", "nanoeval export")
    from nanoeval.engine import resolve_inference_mode
    from nanoeval.load import load

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UserError(f"--out {out}: exists and is not empty (pass --force to replace it)")
    loaded = load(ckpt, device="cpu", dtype=torch.float32, verify=verify)
    mode, bypass = resolve_inference_mode(loaded.model, inference_mode)
    cfg = dataclasses.replace(loaded.model_cfg, mtp_heads=0)
    dropped = [(f"{loaded.model_cfg.mtp_heads} multi-token-prediction heads (mtp.heads.*): training-only, "
                "generation never reads them")] if loaded.model_cfg.mtp_heads else []
    blockers = llama_blockers(cfg)
    special = {"eos_token_id": _eos_id(), "pad_token_id": _pad_id(), "bos_token_id": None,
               "nanolab": {"recipe": loaded.recipe, "step": loaded.step, "scale": loaded.config_json.get("scale"),
                           "run": loaded.run_name, "dropped_mtp_heads": loaded.model_cfg.mtp_heads,
                           "train": loaded.config_json.get("train")}}
    state = {k: v for k, v in loaded.model.state_dict().items() if not k.startswith("mtp.")}
    if blockers:
        hf_model = _remote_model(cfg, state, bypass, **special)
    else:
        hf_model = transformers.LlamaForCausalLM(_llama_config(cfg, **special))
        hf_model.load_state_dict(llama_state_dict(loaded.model), strict=True)
    hf_model.eval()

    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir(parents=True)
    try:
        hf_model.save_pretrained(tmp)
        gen = transformers.GenerationConfig(eos_token_id=_eos_id(), pad_token_id=_pad_id(), bos_token_id=None,
                                            use_cache=not blockers, do_sample=False)
        gen.save_pretrained(tmp)
        if blockers:
            shutil.copyfile(Path(__file__).with_name("hf_modeling.py"), tmp / REMOTE_FILE)
        _write_tokenizer(loaded, tmp, cfg.max_seq_len)
        diff = _probe(loaded, tmp, bypass, remote=bool(blockers))
        if not diff <= PROBE_TOLERANCE:
            raise RuntimeError(f"export check failed: the exported model's logits differ from nanolab's by {diff:.3g} "
                               f"(> {PROBE_TOLERANCE}); nothing written to {out}")
        result = ExportResult(out=out, architecture=type(hf_model).__name__, remote_code=bool(blockers),
                              blockers=blockers, dropped=dropped, max_abs_diff=diff)
        if mode == "bypass":
            result.notes.append("bidirectional wavefield layers "
                                f"{loaded.model.noncausal_layers()} are bypassed, as --inference-mode bypass does")
        (tmp / "README.md").write_text(model_card(loaded, result), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _eos_id() -> int:
    from nanotrain.data.tokenizer import EOS_ID

    return EOS_ID


def _pad_id() -> int:
    from nanotrain.data.tokenizer import PAD_ID

    return PAD_ID


def _write_tokenizer(loaded, folder: Path, max_len: int) -> None:
    """tokenizer.json (the checkpoint's), tokenizer_config.json and special_tokens_map.json."""
    from nanotrain.data.tokenizer import EOS_TOKEN, PAD_TOKEN

    shutil.copyfile(loaded.folder / "tokenizer.json", folder / "tokenizer.json")
    specials = {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "bos_token": None,
        "unk_token": None,
        "model_max_length": max_len,
        "split_special_tokens": True,  # "<eos>" inside a source file is text, as nanolab's tokenizer encodes it
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def _probe(loaded, folder: Path, bypass: bool, remote: bool) -> float:
    """Max |logit difference| between nanolab's model and the exported folder loaded back with transformers, on a
    probe of every row of a fixed pseudo-random sequence of the model's full context."""
    transformers = require("transformers", "nanoeval export")
    n = min(int(loaded.model_cfg.max_seq_len), 64)
    ids = torch.randint(0, loaded.tokenizer.get_vocab_size(), (2, n), generator=torch.Generator().manual_seed(0))
    if remote:
        from nanoeval.hf_modeling import NanolabForCausalLM

        hf_model = NanolabForCausalLM.from_pretrained(folder, dtype=torch.float32)
    else:
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        want = loaded.model(ids, bypass_noncausal=bypass).logits
        got = hf_model.eval()(input_ids=ids).logits
    return float((want - got).abs().max())


def _score_report(loaded) -> tuple[dict | None, Path | None]:
    """The checkpoint's score report (`<ckpt>/score.json`, what `nanoeval score` writes by default, else the run
    folder's score.json, where `make quickstart` writes it) when it was made for this checkpoint's step."""
    from nanoeval.report import SCHEMA

    for path in (loaded.folder / "score.json", loaded.folder.parent / "score.json"):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(report, dict) and report.get("schema") == SCHEMA \
                and (report.get("checkpoint") or {}).get("step") == loaded.step:
            return report, path
    return None, None


def _dataset_line(loaded, report: dict | None) -> str:
    """Where the training data came from, as far as the checkpoint and its score report tell."""
    from nanotrain.data.tokenizer import file_sha256
    from nanotrain.paths import default_dataset_dir

    sha = file_sha256(loaded.folder / "tokenizer.json")
    if report and (report.get("heldout") or {}).get("dataset"):
        return f"`{report['heldout']['dataset']}` (the dataset of the score report; tokenizer sha256 `{sha[:16]}`)"
    default = default_dataset_dir(loaded.config_json.get("scale") or "tiny")
    if (default / "tokenizer.json").is_file() and file_sha256(default / "tokenizer.json") == sha:
        return f"`{default.name}` (nanolab's default dataset of its scale; tokenizer sha256 `{sha[:16]}`)"
    return f"not recorded in the checkpoint; its tokenizer has sha256 `{sha[:16]}`"


def model_card(loaded, result: ExportResult) -> str:
    """README.md of the export: what the model is, how it was trained, how it scored, how to load it."""
    from nanotrain.data.tokenizer import EOS_TOKEN, PAD_TOKEN

    cfg, train = loaded.model_cfg, loaded.train_cfg
    report, report_path = _score_report(loaded)
    tokens = loaded.step * train.batch_size * train.seq_len
    metrics = loaded.metrics()
    val = metrics.get("val") if isinstance(metrics.get("val"), dict) else {}
    remote = result.remote_code
    kind = "(remote code: nanolab's GPT; **requires nanolab installed**)" if remote else "(native transformers)"
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [nanolab, rust, code]",
        "---",
        "",
        f"# {loaded.run_name} (nanolab `{loaded.recipe}`, step {loaded.step})",
        "",
        "A small Rust code language model trained with nanolab and exported by `nanoeval export`.",
        "",
        "| | |",
        "|---|---|",
        f"| recipe | `{loaded.recipe}` ({loaded.config_json.get('scale') or 'unknown'} scale) |",
        f"| architecture | `{result.architecture}` {kind} |",
        (f"| size | dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads / {cfg.n_kv_heads} KV heads, "
         f"vocab {cfg.vocab_size}, context {cfg.max_seq_len} |"),
        f"| data | {_dataset_line(loaded, report)} |",
        f"| tokens seen | {tokens:,} ({loaded.step} steps x {train.batch_size} sequences x {train.seq_len} tokens) |",
        (f"| tokenizer | byte-level BPE; `{EOS_TOKEN}` separates files (empty prompt: start from it), "
         f"`{PAD_TOKEN}` pads |"),
    ]
    if val.get("val_ce") is not None:
        lines.append(f"| training-time validation | CE {val['val_ce']:.4f} nats/token, "
                     f"{val.get('val_bpb', float('nan')):.4f} bits/byte ({val.get('val_tokens')} tokens) |")
    lines += ["", "## Held-out evaluation", ""]
    if report is None:
        lines.append("No score report was found next to the checkpoint (`nanoeval score --ckpt ...` writes one).")
    else:
        h, g = report.get("heldout") or {}, report.get("generation") or {}
        lines.append(f"From `nanoeval score` ({report_path.name}, {report.get('created')}):")
        lines.append("")
        if h:
            lines.append(f"- held-out {h.get('split')} CE {_num(h.get('ce'))} nats/token, {_num(h.get('bpb'))} "
                         f"bits/byte, perplexity {_num(h.get('ppl'), 2)} over {h.get('n_tokens')} tokens")
        if g:
            sampling = g.get("sampling") or {}
            lines.append(f"- generation ({g.get('n_samples')} samples of {sampling.get('max_new_tokens')} new tokens, "
                         f"temperature {sampling.get('temperature')}, prompts `{g.get('prompts')}`): "
                         f"tree-sitter valid rate {_num(g.get('valid_rate'))}, bracket balance "
                         f"{_num(g.get('bracket_balance'))}, distinct-3 {_num(g.get('distinct_3'))}")
    lines += ["", "## Export notes", ""]
    if remote:
        lines.append("Not expressible as a native Llama: " + "; ".join(result.blockers) + ". The folder's "
                     f"`{REMOTE_FILE}` wraps `nanotrain.model.GPT`, so loading needs `trust_remote_code=True` and "
                     "nanolab installed (`pip install nanolab`). `generate()` runs without a key/value cache "
                     "(each step recomputes the sequence).")
    else:
        lines.append("Native `LlamaForCausalLM`: the fused q/k/v and gate/up weights were split; no custom code.")
    for note in result.dropped + result.notes:
        lines.append(f"- Dropped/changed: {note}.")
    lines.append(f"- Checked at export: max |logit difference| to nanolab's model {result.max_abs_diff:.2e} (fp32).")
    trust = ", trust_remote_code=True" if remote else ""
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'tok = AutoTokenizer.from_pretrained("PATH"{trust})',
        f'model = AutoModelForCausalLM.from_pretrained("PATH"{trust})',
        'ids = tok("fn main() {\\n", return_tensors="pt").input_ids',
        "print(tok.decode(model.generate(ids, max_new_tokens=64, do_sample=False)[0]))",
        "```",
        "",
        "Score it with nanolab's prompts and metrics: `nanoeval score --hf PATH`.",
        "",
    ]
    return "\n".join(lines)


def _num(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


# ------------------------------------------------------------------------------------------------------ load

class HFCausalLM(torch.nn.Module):
    """A transformers causal LM behind the calls the engine and held-out loss make of a nanolab GPT: the full
    forward, and the cached forward at explicit positions (`GPT.forward(idx, input_pos, logits_at=...)`).

    The cached forward keeps a transformers key/value cache whose slots are appended in call order; for every row
    it records which position each slot holds. A call that writes position p of a row makes that row's slots at
    p and later unreadable (GPT's position-indexed caches overwrite them), and attention reads a row's readable
    slots through a 2-D attention mask with explicit position ids. The engine's right-padded prefill and per-row
    decode positions thus see exactly the keys GPT's caches would hold."""

    def __init__(self, hf_model, max_seq_len: int) -> None:
        super().__init__()
        import inspect

        self.hf = hf_model.eval()
        vocab = int(hf_model.get_output_embeddings().weight.shape[0])
        self.cfg = SimpleNamespace(vocab_size=vocab, max_seq_len=int(max_seq_len))
        params = inspect.signature(hf_model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.cache_positions: torch.Tensor | None = None
        self._kv = None
        self._slot_pos: torch.Tensor | None = None

    @property
    def is_causal(self) -> bool:
        return True

    def noncausal_layers(self) -> list[int]:
        return []

    def param_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.hf.parameters())
        return {"total": total, "excl_tables": total, "engram_tables": 0}

    def setup_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> None:
        transformers = require("transformers", "scoring a transformers model")
        max_len = max_len or self.cfg.max_seq_len
        if max_len > self.cfg.max_seq_len:
            raise UserError(f"cache length {max_len} exceeds the model's context {self.cfg.max_seq_len}")
        device = device or next(self.hf.parameters()).device
        self._kv = transformers.DynamicCache(config=self.hf.config)
        self._slot_pos = torch.empty(batch_size, 0, dtype=torch.long, device=device)
        self.cache_positions = torch.arange(max_len, device=device)

    @property
    def cache_shape(self) -> tuple[int, int] | None:
        if self.cache_positions is None:
            return None
        return self._slot_pos.shape[0], self.cache_positions.shape[0]

    def clear_cache(self) -> None:
        self._kv = self._slot_pos = self.cache_positions = None

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None, *, bypass_noncausal: bool = False,
                logits_at: torch.Tensor | None = None, kv_len: int | None = None):
        from nanotrain.model import ModelOutput

        b, t = idx.shape
        if input_pos is None:
            if t > self.cfg.max_seq_len:
                raise UserError(f"sequence of {t} tokens exceeds the model's context {self.cfg.max_seq_len}")
            logits = self.hf(input_ids=idx, use_cache=False).logits
        else:
            if self._kv is None:
                raise RuntimeError("caches not set up: call setup_cache(batch_size) before a cached forward")
            pos = input_pos.expand(b, t)
            old = self._slot_pos[:b]
            old = old.masked_fill(old >= pos[:, :1], -1)  # overwritten by this call's positions
            slot_pos = torch.cat((old, pos), dim=1)
            mask = (slot_pos >= 0).long()
            out = self.hf(input_ids=idx, position_ids=pos, attention_mask=mask, use_cache=True,
                          **{self._cache_arg: self._kv})
            self._slot_pos = slot_pos
            logits = out.logits
        if logits_at is not None:
            logits = logits.gather(1, logits_at.view(b, 1, 1).expand(b, 1, logits.shape[-1]))
        return ModelOutput(logits=logits.float())


@dataclass
class LoadedHF:
    """A transformers folder opened for nanoeval: what `score`/`generate` read from a `LoadedModel`."""

    model: torch.nn.Module
    tokenizer: Any  # the tokenizers.Tokenizer under the folder's fast tokenizer
    folder: Path
    recipe: str
    step: int | None
    eos_id: int
    pad_id: int | None
    model_type: str
    config_json: dict = field(default_factory=dict)

    @property
    def run_name(self) -> str:
        return self.folder.name

    def metrics(self) -> dict:
        return {}


def _context_length(config, tokenizer) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10**9:
        return value
    raise UserError("--hf: the model's config names no context length (max_position_embeddings)")


def load_hf(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
            trust_remote_code: bool = False) -> LoadedHF:
    """Open a local transformers causal LM folder (see the module docstring)."""
    transformers = require("transformers", "--hf")
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise UserError(f"--hf {folder}: not a transformers model folder (no config.json)")
    try:
        config_json = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"--hf {folder / 'config.json'}: unreadable ({e})") from None
    model_type = str(config_json.get("model_type", ""))
    try:
        if model_type == "nanolab":  # its config names remote code: read the tokenizer without running it
            tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(folder)
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises many types for a missing or broken tokenizer
        raise UserError(f"--hf {folder}: cannot load its tokenizer ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160]})") from None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"--hf {folder}: nanoeval needs a fast (tokenizers) tokenizer; this one is "
                        f"{type(tokenizer).__name__}")
    if tokenizer.eos_token_id is None:
        raise UserError(f"--hf {folder}: its tokenizer declares no eos token")
    try:
        if model_type == "nanolab":
            from nanoeval.hf_modeling import NanolabForCausalLM

            wrapper = NanolabForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
            model = wrapper.model
        else:
            hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype,
                                                                         trust_remote_code=trust_remote_code)
            model = HFCausalLM(hf_model.to(device), _context_length(hf_model.config, tokenizer))
    except (OSError, ValueError) as e:
        raise UserError(f"--hf {folder}: cannot load the model ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]})") from None
    card = config_json.get("nanolab") or {}
    return LoadedHF(model=model, tokenizer=backend, folder=folder, recipe=card.get("recipe") or f"hf:{model_type}",
                    step=card.get("step"), eos_id=int(tokenizer.eos_token_id), pad_id=tokenizer.pad_token_id,
                    model_type=model_type, config_json=config_json)


# ---------------------------------------------------------------------------------------------- held-out data

def same_tokenizer(a, b) -> bool:
    """Whether two `tokenizers.Tokenizer`s map text to the same ids (same vocabulary, merges and pre-tokenizer)."""
    da, db = json.loads(a.to_str()), json.loads(b.to_str())
    if any(da.get(k) != db.get(k) for k in ("model", "pre_tokenizer", "normalizer")):
        return False
    return ({i: t.content for i, t in a.get_added_tokens_decoder().items()}
            == {i: t.content for i, t in b.get_added_tokens_decoder().items()})


class RetokenizedSplits:
    """A dataset's splits re-encoded with another tokenizer, for held-out loss of a model that reads other ids:
    each file (the dataset separates files with `<eos>`) is decoded to its text and encoded again, files joined by
    the model's eos id. Offers what `evaluate_heldout` reads from a `Dataset`; bits per byte use the split's bytes
    over the new token count, so they compare across tokenizers."""

    def __init__(self, dataset, tokenizer, eos_id: int) -> None:
        self.dataset, self.tokenizer, self.eos_id = dataset, tokenizer, eos_id
        self.folder = dataset.folder
        self._tokens: dict[str, Any] = {}

    def tokens(self, split: str):
        import numpy as np

        from nanotrain.data.tokenizer import EOS_ID

        if split not in self._tokens:
            ids = np.asarray(self.dataset.tokens(split), dtype=np.int64)
            cuts = np.flatnonzero(ids == EOS_ID)
            out: list[int] = []
            for doc in np.split(ids, cuts):
                doc = doc[doc != EOS_ID]
                if len(doc):
                    text = self.dataset.tokenizer.decode(doc.tolist(), skip_special_tokens=True)
                    out += [self.eos_id, *self.tokenizer.encode(text, add_special_tokens=False).ids]
            self._tokens[split] = np.asarray(out, dtype=np.int64)
        return self._tokens[split]

    def bytes_per_token(self, split: str) -> float:
        n = len(self.tokens(split))
        m = self.dataset.meta["splits"].get(split) or {}
        return m["bytes"] / n if n and m.get("bytes") else math.nan
