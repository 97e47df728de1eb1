"""Shared fixtures: the real datasets beside the repository, and a tiny trained run built once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASETS = REPO_ROOT.parent / "shared" / "datasets"


def dataset_root(name: str) -> Path:
    root = DATASETS / name
    if not root.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"dataset {root} is missing on CI")
        pytest.skip(f"dataset {root} not present")
    return root


def copy_subset(source: Path, target: Path, train_good: int, test_per_type: int, types: list[str]) -> Path:
    """A small MVTec-layout folder made of real images from a shared dataset."""

    def copy_first(folder: Path, destination: Path, count: int) -> list[Path]:
        destination.mkdir(parents=True, exist_ok=True)
        chosen = sorted(folder.iterdir())[:count]
        for path in chosen:
            shutil.copy(path, destination / path.name)
        return chosen

    copy_first(source / "train" / "good", target / "train" / "good", train_good)
    copy_first(source / "test" / "good", target / "test" / "good", test_per_type)
    for defect in types:
        for image in copy_first(source / "test" / defect, target / "test" / defect, test_per_type):
            mask = source / "ground_truth" / defect / f"{image.stem}_mask.png"
            (target / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            shutil.copy(mask, target / "ground_truth" / defect / mask.name)
    return target


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = dataset_root("magnetic_tile")
    return copy_subset(source, tmp_path_factory.mktemp("tiny_dataset"), 16, 3, ["blowhole", "crack"])


TINY_CONFIG = {
    "data": {"image_size": [64, 64], "color": "gray", "holdout_fraction": 0.25},
    "autoencoder": {"iterations": 20, "batch_size": 4, "crop_size": 64},
    "unet": {"iterations": 20, "batch_size": 4, "base_channels": 16},
    "adaptation": {"iterations": 2, "batch_size": 2},
    "memory": {"coreset_size": 200},
    "threads": 2,
}


@pytest.fixture(scope="session")
def tiny_config(tiny_dataset: Path):
    from train_host.config import parse_config

    raw = {**TINY_CONFIG, "data": {**TINY_CONFIG["data"], "root": str(tiny_dataset)}}
    return parse_config(raw, "tiny test config")


@pytest.fixture(scope="session")
def tiny_run(tiny_config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run on a few real images at 64 px; built once per test session."""
    os.environ.setdefault("D3AD_QUIET", "1")
    from train_host.training import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config, out)
    return out


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(private, public) Ed25519 key files."""
    from export.signing import generate_keypair

    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "signer.pem", folder / "signer.pub.pem")
    return folder / "signer.pem", folder / "signer.pub.pem"


@pytest.fixture(scope="session")
def bundle(tiny_run, keys, tmp_path_factory):
    """(archive path, manifest) of the tiny run exported with the INT8 accuracy gate."""
    from export.builder import ExportOptions, build_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-1.0.0.tar"
    options = ExportOptions(model_version="1.0.0", gate_images_per_type=2, calibration_images=8)
    return out, build_bundle(tiny_run, out, keys[0], options)


@pytest.fixture(scope="session")
def slot(bundle, keys, tmp_path_factory) -> Path:
    """The tiny bundle installed as a device would."""
    from edge_runtime.bundle import install_bundle, load_trusted_keys

    slot = tmp_path_factory.mktemp("device") / "slot-a"
    install_bundle(bundle[0], load_trusted_keys([keys[1]]), slot)
    return slot
