import pytest
import torch


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Every test runs torch on one thread: results (floating-point sums included) then do not
    depend on how many cores the machine has, and parallel test processes don't oversubscribe."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
