"""The nanolab model zoo: one `GPT` assembled from a `ModelConfig` (docs/original-runs.md).

Modules: gpt (the model), attention (GQA + RoPE + KV cache), mlp (SwiGLU), norm (RMSNorm), mhc (mHC-lite),
engram (hashed n-gram memory), wavefield (Haar field mixer), mtp (multi-token heads + loss), loop (LoopLM),
quant (ternary QAT), cache (positions and per-row reads/writes of the decoding caches), fused (stacked
projection weights: row blocks for Muon, loading checkpoints with separate ones).
"""

from nanotrain.model.gpt import GPT, ModelOutput
from nanotrain.model.mtp import mtp_loss
from nanotrain.model.wavefield import wavefield_physics_parameters

__all__ = ["GPT", "ModelOutput", "mtp_loss", "wavefield_physics_parameters"]
