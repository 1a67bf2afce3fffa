"""nanoeval: load nanotrain checkpoints, sample causally with a KV cache, score generated Rust."""

__version__ = "0.1.0"
