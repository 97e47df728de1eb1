"""Host side of bundles: key generation, signing, and packing a staging folder into a verifiable archive."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime.bundle import install_bundle, load_installed, load_trusted_keys, verify_bundle
from edge_runtime.bundle_errors import KeyFileError
from edge_runtime.manifest import (
    CalibrationSpec,
    InputSpec,
    Manifest,
    MemorySpec,
    NetworkSpec,
    ReferenceImage,
    ScheduleSpec,
)
from edge_runtime.settings import InspectionSettings
from export.packing import PackingError, write_bundle
from export.signing import generate_keypair, load_private_key, sign

CALIBRATION = {
    "bins": {"low": 0.1, "high": 1.0, "count": 10},
    "map_stats": {"knn": {"location": 0.0, "scale": 1.0}},
    "image_threshold": 1.0,
    "pixel_threshold": 0.5,
}

STAGED = {
    "models/encoder.xml": b"<net name='encoder'/>",
    "models/encoder.bin": b"\x00\x01encoder weights",
    "models/denoiser.xml": b"<net name='denoiser'/>",
    "models/denoiser.bin": b"\x02\x03denoiser weights",
    "memory/memory.json": b'{"size": 3}',
    "memory/memory.hnsw": b"hnsw index bytes",
    "memory/projection.npy": b"\x93NUMPY fake",
    "reference/good_0.png": b"\x89PNG fake",
}
CREATED_AT = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)


def draft_manifest() -> Manifest:
    return Manifest(
        model_version="2024.6.1",
        created_at=CREATED_AT,
        input=InputSpec(height=64, width=64, color="gray"),
        schedule=ScheduleSpec(num_timesteps=1000, beta_start=0.0015, beta_end=0.0195),
        inspection=InspectionSettings(),
        calibration=CalibrationSpec.model_validate(CALIBRATION),
        networks={
            "encoder": NetworkSpec(xml="models/encoder.xml", weights="models/encoder.bin", precision="fp16"),
            "denoiser": NetworkSpec(
                xml="models/denoiser.xml", weights="models/denoiser.bin", precision="int8", auroc_drop=0.004
            ),
        },
        memory=MemorySpec(folder="memory"),
        references=[ReferenceImage(file="reference/good_0.png", expected_score=0.3, tolerance=0.05)],
    )


def stage(root: Path, files: dict[str, bytes] = STAGED) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return stage(tmp_path / "staging")


# Keys and signatures


def test_generate_keypair_load_and_sign(tmp_path: Path) -> None:
    private_path, public_path = tmp_path / "keys" / "signing.pem", tmp_path / "keys" / "signing.pub"
    generate_keypair(private_path, public_path)  # the keys folder is made as needed
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    private_key = load_private_key(private_path)
    (public_key,) = load_trusted_keys([public_path])
    signature = sign(private_key, b"manifest bytes")
    assert len(signature) == 64
    public_key.verify(signature, b"manifest bytes")


@pytest.mark.parametrize("existing", ["private", "public"])
def test_generate_keypair_never_overwrites(tmp_path: Path, existing: str) -> None:
    paths = {"private": tmp_path / "signing.pem", "public": tmp_path / "signing.pub"}
    paths[existing].write_text("precious")
    with pytest.raises(FileExistsError, match=paths[existing].name):
        generate_keypair(paths["private"], paths["public"])
    assert paths[existing].read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == [paths[existing].name]


def test_load_private_key_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="absent.pem.*does not exist"):
        load_private_key(tmp_path / "absent.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(KeyFileError, match="garbage.pem"):
        load_private_key(garbage)
    public_only = tmp_path / "public.pem"
    generate_keypair(tmp_path / "private.pem", public_only)
    with pytest.raises(KeyFileError, match="public.pem"):
        load_private_key(public_only)
    ecdsa = tmp_path / "ecdsa.pem"
    ecdsa.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(KeyFileError, match="ecdsa.pem.*not an Ed25519"):
        load_private_key(ecdsa)


# Packing


def test_pack_verify_install_round_trip(staging: Path, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    out = tmp_path / "out" / "tile.tar"
    manifest = write_bundle(staging, draft_manifest(), out, key)
    assert manifest.files == {name: hashlib.sha256(data).hexdigest() for name, data in sorted(STAGED.items())}
    assert list(manifest.files) == sorted(STAGED)
    verified = verify_bundle(out, [key.public_key()])
    assert verified.manifest == manifest
    assert verified.manifest_bytes == manifest.to_bytes()
    slot = tmp_path / "slot"
    assert install_bundle(out, [key.public_key()], slot) == manifest
    assert load_installed(slot, [key.public_key()]) == manifest
    assert all((slot / name).read_bytes() == data for name, data in STAGED.items())
    assert [p.name for p in out.parent.iterdir()] == ["tile.tar"]


def test_archive_layout_is_deterministic(staging: Path, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    first = tmp_path / "first.tar"
    second = tmp_path / "second.tar"
    write_bundle(staging, draft_manifest(), first, key)
    os.utime(staging / "models/encoder.xml", (0, 0))
    write_bundle(staging, draft_manifest(), second, key)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = tar.getmembers()
        assert [m.name for m in members[:2]] == ["manifest.json", "manifest.sig"]
        rest = [m.name for m in members[2:]]
        assert rest == sorted(rest) and {"models", "memory", "reference"} <= set(rest)
        assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {(0, 0, "", "", CREATED_AT.timestamp())}
        assert {m.mode for m in members if m.isfile()} == {0o644}
        assert {m.mode for m in members if m.isdir()} == {0o755}
        signature = tar.extractfile("manifest.sig").read()
        manifest_bytes = tar.extractfile("manifest.json").read()
    key.public_key().verify(signature, manifest_bytes)


def test_refuses_symlink_in_staging(staging: Path, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    (staging / "models" / "link.bin").symlink_to(staging / "models" / "encoder.bin")
    with pytest.raises(PackingError, match="symbolic link: models/link.bin"):
        write_bundle(staging, draft_manifest(), tmp_path / "out.tar", key)
    assert not (tmp_path / "out.tar").exists()


@pytest.mark.parametrize("reserved", ["manifest.json", "manifest.sig"])
def test_refuses_reserved_names_in_staging(
    staging: Path, key: Ed25519PrivateKey, tmp_path: Path, reserved: str
) -> None:
    (staging / reserved).write_text("{}")
    with pytest.raises(PackingError, match=reserved):
        write_bundle(staging, draft_manifest(), tmp_path / "out.tar", key)


def test_refuses_manifest_with_files(staging: Path, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    filled = write_bundle(staging, draft_manifest(), tmp_path / "first.tar", key)
    with pytest.raises(PackingError, match="manifest.files must be empty"):
        write_bundle(staging, filled, tmp_path / "second.tar", key)


def test_refuses_manifest_referencing_unstaged_file(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    staging = stage(tmp_path / "staging", {k: v for k, v in STAGED.items() if k != "models/denoiser.bin"})
    with pytest.raises(PackingError, match="networks.denoiser.weights 'models/denoiser.bin'"):
        write_bundle(staging, draft_manifest(), tmp_path / "out.tar", key)
    assert list(tmp_path.glob("*.tar*")) == []


def test_refuses_output_inside_staging(staging: Path, key: Ed25519PrivateKey) -> None:
    with pytest.raises(PackingError, match="inside its own staging folder"):
        write_bundle(staging, draft_manifest(), staging / "out.tar", key)
