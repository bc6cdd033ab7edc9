import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests' models are tiny: one thread is faster than two (thread hand-offs dominate), and on
# a busy 2-core machine several times faster. Set before torch is imported, so the `kalm`
# subprocesses the tests start inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """OMP_NUM_THREADS may have been set by the caller; the tests run on one thread anyway."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
