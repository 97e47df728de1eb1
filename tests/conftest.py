"""Shared fixtures: the real datasets beside the repository, a tiny trained run and its bundle built once, a real
mosquitto broker (the demo line's, so there is one way to start one) and a local server for bundles."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from demo_line.local_line import LocalBroker

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


def copy_without_masks(source: Path, target: Path, keep: tuple[str, ...] = ()) -> Path:
    """A copy of a real image set with ground_truth/ left out, except for the defect types in `keep`: a set
    labelled per image (or partly per pixel), as many sites have."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("ground_truth"))
    for defect_type in keep:
        shutil.copytree(source / "ground_truth" / defect_type, target / "ground_truth" / defect_type)
    return target


@pytest.fixture(scope="session")
def without_masks():
    return copy_without_masks


TINY_CONFIG = {
    "data": {"image_size": [64, 64], "color": "gray", "holdout_fraction": 0.25},
    # At 64 px the default stride-32 stage would be a 2 x 2 grid and is left out; a stride-16 stage as the coarse
    # one (a 4 x 4 grid) keeps the two-scale memory in every test of the tiny model: bundle, device, feedback.
    # The default stages are exported in tests/export/test_builder.py.
    "backbone": {"knn_stages": [2, 3], "knn_coarse_stages": [4], "min_coarse_cells": 4},
    "autoencoder": {"iterations": 20, "batch_size": 4, "crop_size": 64},
    "unet": {"iterations": 20, "batch_size": 4, "base_channels": 16},
    "adaptation": {"iterations": 2, "batch_size": 2},
    "memory": {"coreset_size": 200},
    # The paper's feature map (off by default) stays in the tiny model: every device test runs decode and map backbone.
    # Two denoising steps (the default is one) keep the sampler's chained steps in every device test too.
    "inspection": {"map_weights": {"feature": 0.15}, "denoise_steps": 2},
    "threads": 2,
}


@pytest.fixture(scope="session")
def tiny_training_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny training settings as a config file whose data root does not exist (for the synthetic set)."""
    import yaml

    path = tmp_path_factory.mktemp("configs") / "tiny.yaml"
    raw = {**TINY_CONFIG, "data": {**TINY_CONFIG["data"], "root": "not-there"}}
    path.write_text(yaml.safe_dump(raw))
    return path


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
    """(archive path, manifest) of the tiny run exported with the INT8 accuracy gate, searching with ef 12."""
    from export.builder import ExportOptions, build_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-1.0.0.tar"
    options = ExportOptions(model_version="1.0.0", gate_images_per_type=2, calibration_images=8, search_ef=12)
    return out, build_bundle(tiny_run, out, keys[0], options)


@pytest.fixture(scope="session")
def slot(bundle, keys, tmp_path_factory) -> Path:
    """The tiny bundle installed as a device would."""
    from edge_runtime.bundle import install_bundle, load_trusted_keys

    slot = tmp_path_factory.mktemp("device") / "slot-a"
    install_bundle(bundle[0], load_trusted_keys([keys[1]]), slot)
    return slot


# --- services running in threads ------------------------------------------------------------------------------


class ServiceThreads:
    """Services started in threads of the test process; each must start in time and end when stopped."""

    START_S = 60
    STOP_S = 20

    def __init__(self) -> None:
        self.running: list[tuple[object, threading.Thread]] = []

    def start(self, config, inspector=None, observers=()):  # noqa: ANN001, ANN201 - edge_runtime types, imported late
        from edge_runtime.service.service import Service

        service = Service(config, inspector=inspector, observers=observers)
        thread = threading.Thread(target=service.run, name="service", daemon=True)
        thread.start()
        assert service.started.wait(self.START_S), "service did not start"
        self.running.append((service, thread))
        return service

    def stop(self, service) -> None:  # noqa: ANN001
        for entry in [e for e in self.running if e[0] is service]:
            service.stop()
            entry[1].join(timeout=self.STOP_S)
            assert not entry[1].is_alive(), "service did not stop"
            self.running.remove(entry)

    def stop_all(self) -> None:
        for service, _ in list(self.running):
            self.stop(service)


@pytest.fixture
def service_threads() -> Iterator[ServiceThreads]:
    threads = ServiceThreads()
    yield threads
    threads.stop_all()


# --- a real broker, a local bundle server, and bundles repacked as other versions ---------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    with LocalBroker(tmp_path / "broker") as server:
        yield server


@pytest.fixture
def new_broker(tmp_path: Path) -> Iterator:
    """Make (not start) brokers with extra config lines, e.g. for TLS or an ACL; all stopped afterwards."""
    made: list[LocalBroker] = []

    def make(persistent: bool = False, extra_config: Sequence[str] = (), allow_anonymous: bool = True) -> LocalBroker:
        made.append(LocalBroker(tmp_path / f"broker-{len(made)}", persistent, extra_config, allow_anonymous))
        return made[-1]

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    with LocalBroker(tmp_path / "broker", persistent=True) as server:
        yield server


class BundleServer:
    """A local HTTP file server for bundles, with byte ranges; `cut_next` makes the next response break off
    halfway, as a flaky plant network would."""

    def __init__(self, folder: Path) -> None:
        from http.server import ThreadingHTTPServer

        self.folder = folder
        self.cut_next = 0
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler_class(self):  # noqa: ANN202
        from http.server import BaseHTTPRequestHandler

        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

            def do_GET(self) -> None:
                owner.requests.append((self.path, self.headers.get("Range")))
                path = owner.folder / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404, "no such bundle")
                    return
                data = path.read_bytes()
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if owner.cut_next:
                    owner.cut_next -= 1
                    body = body[: len(body) // 2]  # the declared length is not reached: the client sees a cut
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

        return Handler


@pytest.fixture
def bundle_server(tmp_path: Path) -> Iterator[BundleServer]:
    folder = tmp_path / "served"
    folder.mkdir()
    server = BundleServer(folder)
    yield server
    server.close()


@pytest.fixture(scope="session")
def repack():
    return repack_bundle


def repack_bundle(slot: Path, out: Path, private_key_file: Path, version: str, edit=None) -> Path:  # noqa: ANN001
    """The installed bundle in `slot` packed again as `version` and signed; `edit(manifest_dict)` may change
    the manifest first (e.g. reference scores)."""
    from edge_runtime.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest
    from export.packing import write_bundle
    from export.signing import load_private_key

    staging = out.parent / f"{out.stem}-staging"
    shutil.copytree(slot, staging, ignore=shutil.ignore_patterns(MANIFEST_NAME, SIGNATURE_NAME))
    fields = Manifest.parse((slot / MANIFEST_NAME).read_bytes()).model_dump()
    fields.update(model_version=version, files={})
    if edit is not None:
        edit(fields)
    write_bundle(staging, Manifest.model_validate(fields), out, load_private_key(private_key_file))
    shutil.rmtree(staging)
    return out
