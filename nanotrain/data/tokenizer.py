"""Byte-level BPE tokenizer (HF tokenizers): lossless, `<pad>` = 0, `<eos>` = 1 between files.

Unlike the original's tokenizer (docs/original-runs.md), training sees whole files, so the newline byte is in the
vocabulary, and the byte-level alphabet is seeded in full, so no byte is ever unknown: decode(encode(x)) == x for any
UTF-8 text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from nanotrain.errors import UserError

PAD_ID = 0
EOS_ID = 1
PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN]
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)
MAX_VOCAB = 65535  # ids are stored as uint16


def check_vocab_size(vocab_size: int) -> None:
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise UserError(f"--vocab {vocab_size}: must be between {MIN_VOCAB} and {MAX_VOCAB} (ids are stored as uint16)")


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE on whole documents (newlines included). Returns a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    check_vocab_size(vocab_size)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    _check_specials(tok, "trained tokenizer")
    # Source text that happens to contain "<eos>" must stay plain text, not become the separator id.
    tok.encode_special_tokens = True
    return tok


def load_tokenizer(path: str | Path):
    """Load a dataset's tokenizer.json; UserError if it is missing or not a tokenizer of this project."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: tokenizer file not found")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise UserError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0][:120]})") from None
    _check_specials(tok, str(path))
    tok.encode_special_tokens = True
    return tok


def _check_specials(tok, where: str) -> None:
    if tok.token_to_id(PAD_TOKEN) != PAD_ID or tok.token_to_id(EOS_TOKEN) != EOS_ID:
        raise UserError(f"{where}: expected {PAD_TOKEN}={PAD_ID} and {EOS_TOKEN}={EOS_ID}")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
