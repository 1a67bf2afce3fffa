"""nanotrain.malloc: glibc keeps freed large blocks, so re-allocating them does not fault pages in again."""

import subprocess
import sys

import pytest

CHILD = """
import resource, sys
import torch
if sys.argv[1] == "tuned":
    from nanotrain.malloc import keep_freed_memory
    assert keep_freed_memory()
def churn():
    for _ in range(20):
        a = torch.ones(64 * 2**20 // 4)  # 64 MiB, above glibc's largest mmap threshold
        del a
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_allocator_reuses_freed_blocks_instead_of_faulting_them_in():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())
    plain, tuned = faults("plain"), faults("tuned")
    assert plain > 2000            # every 64 MiB block is mapped and faulted in afresh
    assert tuned < plain / 10      # the same churn reuses the heap


def test_opt_out_variable(monkeypatch):
    from nanotrain import malloc

    monkeypatch.setenv(malloc.OPT_OUT, "1")
    assert malloc.keep_freed_memory() is False
