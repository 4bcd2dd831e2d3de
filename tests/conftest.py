"""Test setup: GPU tests (marked ``gpu``) are skipped without CUDA; CPU tests use few threads (CI has 2 cores)."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    torch.set_num_threads(1)  # pytest-xdist runs one worker per core
    yield
