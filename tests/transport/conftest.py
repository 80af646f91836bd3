"""Run transport tests single-threaded: their tensors are small, and two intra-op threads on a
busy 2-core machine spin-wait for each other (10x slower); the setting is restored after each."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
