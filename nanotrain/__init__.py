"""nanotrain: data, models, optimizers and the trainer for small Rust code language models."""

__version__ = "0.1.0"
