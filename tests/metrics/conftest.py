"""Metric tests train tiny GRUs: one torch thread is faster than two for them (and on a busy
machine much faster), so each test here runs single-threaded and restores the setting after."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
