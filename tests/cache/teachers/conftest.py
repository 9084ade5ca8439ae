import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # two cores are shared by several test runs: stay on one
    torch.set_num_threads(1)
