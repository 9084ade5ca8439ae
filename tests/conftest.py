import pytest
import torch

# Under ATEN_CPU_CAPABILITY=default (or a CPU without AVX2) torch 2.14's inductor emits C++ that uses
# at::vec without including it: the compile fails ("'at::vec' has not been declared").
INDUCTOR_CPU_BROKEN = torch.backends.cpu.get_cpu_capability() == "DEFAULT"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "inductor: runs torch.compile (inductor's CPU C++ backend); skipped where it cannot compile",
    )


def pytest_collection_modifyitems(config, items):
    if not INDUCTOR_CPU_BROKEN:
        return
    skip = pytest.mark.skip(
        reason="CPU capability DEFAULT: torch 2.14's inductor emits C++ that does not compile "
        "('at::vec' has not been declared)"
    )
    for item in items:
        if "inductor" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Every test runs torch on one thread: results (floating-point sums included) then do not
    depend on how many cores the machine has, and parallel test processes don't oversubscribe."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
