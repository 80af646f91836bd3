"""Test-session settings shared by every test folder."""

import torch

# The test tensors are small: a second intra-op thread costs more than it saves, and on a busy
# 2-core CI machine the threads spin-wait for each other (10x slower suites were measured).
torch.set_num_threads(1)
