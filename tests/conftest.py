"""Suite-wide test settings."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    """One intra-op thread for the whole suite: every model here is tiny, and on a shared 2-core
    machine two threads competing for a core run such models up to 10x slower (measured: the
    overfit test took 100 s with two busy threads, 4 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
