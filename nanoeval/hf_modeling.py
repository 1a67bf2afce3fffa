"""A nanolab `GPT` as a `transformers` causal LM: the modelling file of `nanoeval export` for architectures that
`LlamaForCausalLM` cannot express (mHC-lite streams, Engram, wavefield, LoopLM, ternary QAT).

The export copies this file into the model folder as `modeling_nanolab.py`, and its config.json points
`AutoConfig`/`AutoModelForCausalLM` here (`trust_remote_code=True`). It holds no model code of its own: the
network is nanolab's `nanotrain.model.GPT`, so nanolab must be installed where the folder is loaded.
`nanoeval score --hf` loads such a folder with this module from the installed package, without running the
folder's copy.

- Weights: the GPT's state dict under `model.`, plus its fixed tables (RoPE, Engram hash multipliers, wavefield
  transforms), which GPT rebuilds in its constructor and keeps out of its own state dict; here they are stored so
  that `from_pretrained`, which builds models on the meta device, restores them.
- Forward: the full causal forward of GPT over the whole sequence. `generate()` runs without a key/value cache
  (the exported generation_config.json sets `use_cache: false`): every step recomputes the sequence, which gives
  the same tokens as nanoeval's cached engine, at a cost that grows with the length.
- Padding: rows with an attention mask are run one by one over their unmasked tokens (nanolab's model has no
  padding mask), so left- or right-padded batches give each row the logits it gets alone; masked positions get
  zero logits.
- `bypass_noncausal` (config): skip bidirectional wavefield layers, as `--inference-mode bypass` does.
"""

from __future__ import annotations

import torch
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from nanotrain.config import ModelConfig
from nanotrain.model import GPT


class NanolabConfig(PretrainedConfig):
    """`nanolab_model`: the nanolab ModelConfig as a dict; the usual transformers size fields mirror it."""

    model_type = "nanolab"

    def __init__(self, nanolab_model: dict | None = None, bypass_noncausal: bool = False, **kwargs) -> None:
        self.nanolab_model = dict(nanolab_model or {})
        self.bypass_noncausal = bool(bypass_noncausal)
        cfg = ModelConfig.from_dict(self.nanolab_model)
        for key, value in (("vocab_size", cfg.vocab_size), ("hidden_size", cfg.dim),
                           ("num_hidden_layers", cfg.n_layers), ("num_attention_heads", cfg.n_heads),
                           ("num_key_value_heads", cfg.n_kv_heads), ("max_position_embeddings", cfg.max_seq_len)):
            kwargs.setdefault(key, value)
        kwargs.setdefault("tie_word_embeddings", False)  # the head reads the embedding itself: nothing to tie
        super().__init__(**kwargs)


def _store_fixed_tables(model: torch.nn.Module) -> None:
    """Make the model's non-persistent buffers that hold values (not the decoding caches, which are None until
    set up) part of its state dict."""
    for module in model.modules():
        for name in list(module._non_persistent_buffers_set):
            if getattr(module, name) is not None:
                module._non_persistent_buffers_set.discard(name)


class NanolabForCausalLM(PreTrainedModel, GenerationMixin):
    """transformers' view of a nanolab GPT (see the module docstring)."""

    config_class = NanolabConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ("Block",)

    def __init__(self, config: NanolabConfig) -> None:
        super().__init__(config)
        self.model = GPT(ModelConfig.from_dict(config.nanolab_model))
        _store_fixed_tables(self.model)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing: every weight and table comes from the checkpoint (GPT initialises a fresh model itself)."""

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.tok_embed

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, **kwargs) -> CausalLMOutputWithPast:
        """Logits [B, T, vocab] of the full causal forward; `labels` (-100 = ignored) add the mean next-token
        cross-entropy as `loss`."""
        bypass = bool(self.config.bypass_noncausal)
        if attention_mask is None or bool(attention_mask.bool().all()):
            logits = self.model(input_ids, bypass_noncausal=bypass).logits
        else:
            keep = attention_mask.bool()
            logits = torch.zeros(*input_ids.shape, self.config.vocab_size, dtype=self.model.tok_embed.weight.dtype,
                                 device=input_ids.device)
            for row in range(input_ids.shape[0]):
                if keep[row].any():
                    ids = input_ids[row][keep[row]][None]
                    logits[row, keep[row]] = self.model(ids, bypass_noncausal=bypass).logits[0]
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            loss = torch.nn.functional.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)
