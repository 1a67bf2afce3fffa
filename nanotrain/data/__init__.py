"""Data: Rust corpora (Debian crate sources or any folder of .rs), byte-level BPE, uint16 shards, batch loaders."""
