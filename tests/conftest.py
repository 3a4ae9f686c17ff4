"""Shared fixtures. Keep this file small: a fixture used by one module belongs in that module."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

from synfundus_guard.data.phantom import generate_phantom


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom dataset on disk (6 patients x 2 visits, 64 px, seed 1) with labels.csv.

    Shared by the whole session: treat it as read-only (hard links made from it share its files).
    """
    root = tmp_path_factory.mktemp("phantom") / "dataset"
    generate_phantom(root, patients=6, visits=2, size=64, seed=1)
    return root


@pytest.fixture(scope="session")
def phantom_14x2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """14 phantom patients x 2 visits (64 px, seed 3; 16 OD, 12 OS images), read-only: the training data of the
    tiny generation models (plain and eye-conditioned)."""
    root = tmp_path_factory.mktemp("phantom14") / "phantom"
    generate_phantom(root, patients=14, visits=2, size=64, seed=3)
    return root


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch intra-op thread for a module of tiny models (``pytestmark = pytest.mark.usefixtures(...)``): on a
    shared 2-core machine, two OpenMP threads spin and run many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
