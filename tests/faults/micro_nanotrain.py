"""`nanotrain` whose `--scale tiny` means the regression micro shape, on one thread: the fault tests start it as
a subprocess (`python -m tests.faults.micro_nanotrain run ...` from the repository root) so they can kill it."""

import sys

import torch

from nanotrain.cli import main
from tests.regression.spec import micro_scale

if __name__ == "__main__":
    torch.set_num_threads(1)
    with micro_scale():
        sys.exit(main(sys.argv[1:]))
