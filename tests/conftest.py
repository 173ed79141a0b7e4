"""Shared test fixtures."""
import pytest
import torch

from multiproc import gloo  # noqa: F401 - fixture: skips where the machine cannot host two gloo ranks


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors (mixture scores): thread start-up costs more than it saves on 2 cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
