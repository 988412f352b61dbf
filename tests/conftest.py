import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: on a shared 2-core machine a second thread spins more than it computes (2x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
