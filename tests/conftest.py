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


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory):
    """24 synthetic 32 px images on disk, as `ssl-derm data synth` writes them: images/, masks/ and
    labels.csv (image_id, label, lesion_id)."""
    from ssl_derm.data import write_synthetic

    root = tmp_path_factory.mktemp("synth") / "s"
    write_synthetic(root, n=24, size=32, seed=0, quiet=True)
    return root
