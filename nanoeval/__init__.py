"""nanoeval: load nanotrain checkpoints, sample causally with a KV cache, score generated Rust."""

from nanoeval.load import LoadedModel, load

__version__ = "0.1.0"
__all__ = ["LoadedModel", "load"]
