"""Test-session settings shared by every test folder."""

import os
import shutil

# Without a GPU the Triton kernels run under the interpreter; the variable must be set before
# any @triton.jit module is imported. Probing the driver files instead of torch.cuda keeps
# CUDA uninitialised here.
if not (shutil.which("nvidia-smi") or os.path.exists("/dev/nvidia0")):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

# The test tensors are small: a second intra-op thread costs more than it saves, and on a busy
# 2-core CI machine the threads spin-wait for each other (10x slower suites were measured).
torch.set_num_threads(1)
