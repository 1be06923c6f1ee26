"""Test configuration. The Triton interpreter must be selected before triton is imported:
without a GPU every Triton launch then runs on the CPU (small shapes only)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds on the CPU")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
