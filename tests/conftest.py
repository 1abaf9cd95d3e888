"""Shared fixtures. Tests run on CPU; GPU tests are marked ``gpu`` and skipped without CUDA."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def pytest_report_header(config):
    """Which network the local SLURM test cluster runs (slurm/local_cluster_net.sh writes it)."""
    import json

    try:
        net = json.loads(Path("/run/slurm-distgan/network.json").read_text())
    except (OSError, ValueError):
        return "slurm test cluster: not up"
    nodes = ", ".join(f"{n} {v['address']}" for n, v in net["nodes"].items())
    return f"slurm test cluster: network mode {net['mode']} ({nodes})"


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory):
    """A dataset.root with Fashion-MNIST unpacked (from the Debian package), shared by the session."""
    from distgan import data
    from distgan.config import DatasetConfig

    return data.locate(DatasetConfig(name="fashion_mnist", root=str(tmp_path_factory.mktemp("data")))).root
