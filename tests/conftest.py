"""Suite-wide settings."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread: the tests are tiny, and on 2 cores shared with other jobs (or with the
    subprocesses some tests start) OpenMP spinning makes 2 threads far slower than 1."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data():
    """(dataset, split): the tiny synthetic protocol set of :func:`support.protocol_data`."""
    from support import protocol_data

    return protocol_data()
