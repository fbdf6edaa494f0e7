"""Shared pytest fixtures. Tests are CPU-sized: tiny volumes, narrow networks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real MRC files written by other software; never copied into the project.
MRC_CORPUS = REPO_ROOT.parent / "shared" / "mrc-corpus"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def mrc_corpus() -> Path:
    if not MRC_CORPUS.is_dir():
        pytest.skip(f"MRC corpus not found at {MRC_CORPUS}")
    return MRC_CORPUS


@pytest.fixture
def single_thread():
    """One intra-op thread for tests of many tiny forwards: on a shared, loaded CPU, OpenMP threads
    waiting for each other make small convolutions hundreds of times slower (1.2 s vs 3 ms measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
