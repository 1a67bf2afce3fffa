"""Batches are a pure function of (seed, step, rank, world_size): resume and DDP see exactly the same data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nanotrain.data.loader import WindowLoader, sequential_batches
from nanotrain.data.shards import Dataset
from nanotrain.errors import UserError

TOKENS = (np.arange(5000, dtype=np.uint32) * 7919 % 4096).astype(np.uint16)


def test_shapes_dtype_and_shift():
    x, y = WindowLoader(TOKENS, seq_len=32, batch_size=4, seed=0).batch(0)
    assert x.shape == y.shape == (4, 32)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    starts = WindowLoader(TOKENS, seq_len=32, batch_size=4, seed=0).starts(0)
    for row, s in zip(x, starts):
        assert torch.equal(row, torch.from_numpy(TOKENS[s : s + 32].astype(np.int64)))


def test_resume_continues_the_same_batches():
    long_run = WindowLoader(TOKENS, seq_len=16, batch_size=3, seed=7)
    batches = [long_run.batch(step) for step in range(10)]
    resumed = WindowLoader(TOKENS, seq_len=16, batch_size=3, seed=7)  # a fresh loader after a restart at step 6
    for step in range(6, 10):
        x, y = resumed.batch(step)
        assert torch.equal(x, batches[step][0]) and torch.equal(y, batches[step][1])
    assert not torch.equal(batches[0][0], batches[1][0])
    assert not torch.equal(WindowLoader(TOKENS, 16, 3, seed=8).batch(0)[0], batches[0][0])


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_together_equal_one_process(world_size):
    single = WindowLoader(TOKENS, seq_len=8, batch_size=2 * world_size, seed=3)
    for step in (0, 1, 17):
        xs, ys = zip(*(WindowLoader(TOKENS, 8, 2, seed=3, rank=r, world_size=world_size).batch(step)
                       for r in range(world_size)))
        x1, y1 = single.batch(step)
        assert torch.equal(torch.cat(xs), x1) and torch.equal(torch.cat(ys), y1)


def test_windows_cover_the_whole_split_and_stay_in_range():
    tokens = np.arange(20, dtype=np.uint16)
    loader = WindowLoader(tokens, seq_len=19, batch_size=5, seed=0)  # exactly one possible window
    x, y = loader.batch(3)
    assert torch.equal(x[0], torch.arange(19)) and torch.equal(y[0], torch.arange(1, 20))
    seen = set()
    loader = WindowLoader(tokens, seq_len=4, batch_size=64, seed=1)
    for step in range(5):
        seen.update(loader.starts(step).tolist())
    assert seen == set(range(16))


def test_too_short_split_is_a_user_error():
    with pytest.raises(UserError, match="seq_len"):
        WindowLoader(np.arange(10, dtype=np.uint16), seq_len=10, batch_size=1, seed=0)
    with pytest.raises(UserError, match="seq_len"):
        list(sequential_batches(np.zeros(0, dtype=np.uint16), 4, 2))


def test_sequential_batches_cover_each_target_once():
    tokens = np.arange(103, dtype=np.uint16)
    batches = list(sequential_batches(tokens, seq_len=10, batch_size=4))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    targets = torch.cat([y.reshape(-1) for _, y in batches])
    assert torch.equal(targets, torch.arange(1, 101))
    assert len(list(sequential_batches(tokens, 10, 4, max_batches=2))) == 2


def test_loader_on_a_real_dataset(fixture_dataset):
    ds = Dataset(fixture_dataset)
    x, y = WindowLoader(ds.tokens("train"), seq_len=64, batch_size=2, seed=0).batch(0)
    assert int(x.max()) < ds.vocab_size
    assert next(sequential_batches(ds.tokens("val"), 64, 2))[0].shape == (2, 64)


def test_windows_are_the_batch_in_one_contiguous_tensor():
    """`windows(step)` is what the trainer copies to a GPU in one transfer; x and y are its two shifted views."""
    tokens = np.arange(5000, dtype=np.uint16)
    loader = WindowLoader(tokens, seq_len=16, batch_size=3, seed=7)
    rows = loader.windows(4)
    x, y = loader.batch(4)
    assert rows.shape == (3, 17) and rows.dtype == torch.int64 and rows.is_contiguous()
    assert torch.equal(rows[:, :-1], x) and torch.equal(rows[:, 1:], y)
    assert not torch.equal(loader.windows(5), rows)
