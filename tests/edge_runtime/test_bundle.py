"""Bundle verification and installation on the device, with archives built directly with tarfile."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime import bundle as bundle_module
from edge_runtime.bundle import (
    BundleError,
    KeyFileError,
    install_bundle,
    load_installed,
    load_trusted_keys,
    verify_bundle,
)
from edge_runtime.calibration import Calibration
from edge_runtime.manifest import CalibrationSpec, Manifest
from edge_runtime.settings import InspectionSettings

CALIBRATION = {
    "bins": {"low": 0.1, "high": 1.0, "count": 10},
    "map_stats": {"knn": {"location": 0.0, "scale": 1.0}},
    "image_threshold": 1.0,
    "pixel_threshold": 0.5,
}

PAYLOAD = {
    "models/encoder.xml": b"<net name='encoder'/>",
    "models/encoder.bin": b"\x00\x01\x02encoder weights",
    "memory/memory.json": b'{"size": 3}',
    "memory/memory.hnsw": b"hnsw index bytes",
    "reference/good_0.png": b"\x89PNG not really a png",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_dict(payload: dict[str, bytes]) -> dict:
    return {
        "schema_version": 1,
        "model_version": "tile-2024.06.01",
        "created_at": "2024-06-01T12:00:00Z",
        "input": {"height": 64, "width": 64, "color": "gray"},
        "preprocessing": {"resize": "area_down_linear_up", "scale": "x/127.5-1"},
        "schedule": {"num_timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.0195},
        "inspection": InspectionSettings().model_dump(mode="json"),
        "calibration": CALIBRATION,
        "networks": {
            "encoder": {"xml": "models/encoder.xml", "weights": "models/encoder.bin", "precision": "fp16"},
        },
        "memory": {"folder": "memory"},
        "references": [{"file": "reference/good_0.png", "expected_score": 0.3, "tolerance": 0.05}],
        "files": {name: sha256(data) for name, data in sorted(payload.items())},
    }


def encode(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=2).encode()


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    tar.addfile(info)


def write_archive(
    path: Path,
    key: Ed25519PrivateKey,
    *,
    payload: dict[str, bytes] | None = None,
    manifest: bytes | None = None,
    signature: bytes | None = None,
    signed: bool = True,
    extra: Callable[[tarfile.TarFile], None] | None = None,
    mode: str = "w",
) -> Path:
    """A bundle archive; by default a valid one signed with `key` whose manifest matches the payload."""
    payload = PAYLOAD if payload is None else payload
    manifest = encode(manifest_dict(PAYLOAD)) if manifest is None else manifest
    with tarfile.open(path, mode) as tar:
        add_file(tar, "manifest.json", manifest)
        if signed:
            add_file(tar, "manifest.sig", key.sign(manifest) if signature is None else signature)
        for name, data in payload.items():
            add_file(tar, name, data)
        if extra is not None:
            extra(tar)
    return path


def reject(archive: Path, keys: list, reason: str) -> str:
    with pytest.raises(BundleError) as caught:
        verify_bundle(archive, keys)
    assert caught.value.reason == reason, str(caught.value)
    return str(caught.value)


def tree(root: Path) -> dict[str, bytes | None]:
    return {
        path.relative_to(root).as_posix(): (path.read_bytes() if path.is_file() else None)
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def keys(key: Ed25519PrivateKey) -> list:
    return [Ed25519PrivateKey.generate().public_key(), key.public_key()]


@pytest.fixture
def good(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    return write_archive(tmp_path / "good.tar", key)


# Valid bundles


def test_valid_bundle_verifies(good: Path, keys: list) -> None:
    verified = verify_bundle(good, keys)
    assert verified.archive == good
    assert verified.manifest.model_version == "tile-2024.06.01"
    assert verified.manifest.files == {name: sha256(data) for name, data in PAYLOAD.items()}
    assert verified.manifest.networks["encoder"].precision == "fp16"
    assert verified.manifest.calibration.to_calibration() == Calibration.from_dict(CALIBRATION)
    assert verified.manifest.schedule.to_schedule().num_timesteps == 1000


def test_gzip_bundle_and_folder_members_are_accepted(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    def folders(tar: tarfile.TarFile) -> None:
        add_special(tar, "models", tarfile.DIRTYPE)
        add_special(tar, "memory/", tarfile.DIRTYPE)

    archive = write_archive(tmp_path / "good.tar.gz", key, extra=folders, mode="w:gz")
    assert verify_bundle(archive, keys).manifest.memory.folder == "memory"


# Rejections: archive structure


def test_not_a_tar_file(tmp_path: Path, keys: list) -> None:
    archive = tmp_path / "junk.tar"
    archive.write_bytes(os.urandom(3000))
    assert "junk.tar" in reject(archive, keys, "not_a_bundle")


def test_truncated_gzip(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    archive = write_archive(tmp_path / "cut.tar.gz", key, mode="w:gz")
    archive.write_bytes(archive.read_bytes()[:200])
    assert "cut.tar.gz" in reject(archive, keys, "not_a_bundle")


def test_missing_archive(tmp_path: Path, keys: list) -> None:
    assert "absent.tar" in reject(tmp_path / "absent.tar", keys, "not_a_bundle")


def test_missing_manifest(tmp_path: Path, keys: list) -> None:
    archive = tmp_path / "bare.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in PAYLOAD.items():
            add_file(tar, name, data)
    assert "manifest.json" in reject(archive, keys, "not_a_bundle")


@pytest.mark.parametrize("name", ["/etc/evil", "/manifest.json"])
def test_absolute_path_member(tmp_path: Path, key: Ed25519PrivateKey, keys: list, name: str) -> None:
    archive = write_archive(tmp_path / "abs.tar", key, extra=lambda tar: add_file(tar, name, b"x"))
    message = reject(archive, keys, "unsafe_path")
    assert name in message and "absolute" in message


@pytest.mark.parametrize("name", ["../evil", "models/../../evil", "models/.."])
def test_dotdot_member(tmp_path: Path, key: Ed25519PrivateKey, keys: list, name: str) -> None:
    archive = write_archive(tmp_path / "dotdot.tar", key, extra=lambda tar: add_file(tar, name, b"x"))
    message = reject(archive, keys, "unsafe_path")
    assert name in message and "'..'" in message


@pytest.mark.parametrize(
    ("kind", "linkname", "words"),
    [
        (tarfile.SYMTYPE, "/etc/passwd", "symbolic link"),
        (tarfile.LNKTYPE, "models/encoder.xml", "hard link"),
        (tarfile.FIFOTYPE, "", "fifo"),
        (tarfile.CHRTYPE, "", "device"),
    ],
    ids=["symlink", "hardlink", "fifo", "device"],
)
def test_link_and_special_members(
    tmp_path: Path, key: Ed25519PrivateKey, keys: list, kind: bytes, linkname: str, words: str
) -> None:
    archive = write_archive(
        tmp_path / "special.tar", key, extra=lambda tar: add_special(tar, "models/evil", kind, linkname)
    )
    message = reject(archive, keys, "unsafe_path")
    assert "models/evil" in message and words in message


def test_symlink_replacing_a_listed_file(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    payload = {name: data for name, data in PAYLOAD.items() if name != "memory/memory.hnsw"}

    def link(tar: tarfile.TarFile) -> None:
        add_special(tar, "memory/memory.hnsw", tarfile.SYMTYPE, "/etc/shadow")

    archive = write_archive(tmp_path / "link.tar", key, payload=payload, extra=link)
    assert "memory/memory.hnsw" in reject(archive, keys, "unsafe_path")


@pytest.mark.parametrize("duplicate", ["models/encoder.xml", "Models/Encoder.xml", "manifest.json"])
def test_duplicate_member(tmp_path: Path, key: Ed25519PrivateKey, keys: list, duplicate: str) -> None:
    archive = write_archive(tmp_path / "dup.tar", key, extra=lambda tar: add_file(tar, duplicate, b"other"))
    message = reject(archive, keys, "unsafe_path")
    assert duplicate in message and "duplicates" in message


# Rejections: signature


def test_unsigned(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    archive = write_archive(tmp_path / "unsigned.tar", key, signed=False)
    assert "manifest.sig" in reject(archive, keys, "unsigned")


def test_manifest_altered_after_signing(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    original = encode(manifest_dict(PAYLOAD))
    altered = original.replace(b'"image_threshold": 1.0', b'"image_threshold": 9.0')
    assert altered != original
    archive = write_archive(tmp_path / "altered.tar", key, manifest=altered, signature=key.sign(original))
    message = reject(archive, keys, "bad_signature")
    assert "manifest.sig" in message and "altered.tar" in message


def test_signed_by_untrusted_key(tmp_path: Path, keys: list) -> None:
    archive = write_archive(tmp_path / "stranger.tar", Ed25519PrivateKey.generate())
    assert "untrusted key" in reject(archive, keys, "bad_signature")


def test_no_trusted_keys(good: Path) -> None:
    assert "no trusted public keys" in reject(good, [], "bad_signature")


def test_signature_of_wrong_length(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    archive = write_archive(tmp_path / "short.tar", key, signature=b"\x00" * 10)
    assert "10 bytes" in reject(archive, keys, "bad_signature")


def test_signature_checked_before_manifest_content(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    archive = write_archive(tmp_path / "junk.tar", key, manifest=b"{not json", signature=b"\x00" * 64)
    reject(archive, keys, "bad_signature")


# Rejections: manifest content (validly signed)


def test_unknown_schema_version(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    manifest = {**manifest_dict(PAYLOAD), "schema_version": 99, "future_field": True}
    archive = write_archive(tmp_path / "future.tar", key, manifest=encode(manifest))
    message = reject(archive, keys, "unknown_schema")
    assert "99" in message and "[1, 2, 3, 4, 5, 6, 7, 8]" in message


def test_missing_required_field(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    manifest = manifest_dict(PAYLOAD)
    del manifest["schedule"]
    archive = write_archive(tmp_path / "no_schedule.tar", key, manifest=encode(manifest))
    message = reject(archive, keys, "malformed_manifest")
    assert "schedule" in message and "Field required" in message


def test_invalid_field_value_names_its_key_path(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    manifest = manifest_dict(PAYLOAD)
    manifest["input"]["height"] = -4
    manifest["networks"]["encoder"]["precision"] = "int4"
    archive = write_archive(tmp_path / "bad_values.tar", key, manifest=encode(manifest))
    message = reject(archive, keys, "malformed_manifest")
    assert "input.height" in message and "-4" in message
    assert "networks.encoder.precision" in message and "int4" in message


def test_manifest_is_not_json(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    archive = write_archive(tmp_path / "text.tar", key, manifest=b"model: v1\n")
    assert "not valid UTF-8 JSON" in reject(archive, keys, "malformed_manifest")


# Rejections: payload


def test_file_altered_after_signing(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    payload = {**PAYLOAD, "models/encoder.bin": b"\x00\x01\x02tampered weights"}
    archive = write_archive(tmp_path / "tampered.tar", key, payload=payload)
    message = reject(archive, keys, "hash_mismatch")
    assert "models/encoder.bin" in message and sha256(PAYLOAD["models/encoder.bin"]) in message


def test_missing_file(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    payload = {name: data for name, data in PAYLOAD.items() if name != "memory/memory.hnsw"}
    archive = write_archive(tmp_path / "missing.tar", key, payload=payload)
    assert "memory/memory.hnsw" in reject(archive, keys, "missing_file")


def test_extra_file(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    archive = write_archive(tmp_path / "extra.tar", key, payload={**PAYLOAD, "models/backdoor.py": b"import os"})
    assert "models/backdoor.py" in reject(archive, keys, "extra_file")


def test_bundle_that_unpacks_beyond_the_limit(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    payload = {**PAYLOAD, "models/encoder.bin": bytes(64 * 1024)}  # compresses to almost nothing
    manifest = encode(manifest_dict(payload))
    archive = write_archive(tmp_path / "big.tar.gz", key, payload=payload, manifest=manifest, mode="w:gz")
    with pytest.raises(BundleError) as caught:
        install_bundle(archive, keys, tmp_path / "slot", max_unpacked_bytes=32 * 1024)
    assert caught.value.reason == "too_large" and "over the 32768 limit" in str(caught.value)
    assert not (tmp_path / "slot").exists()
    assert verify_bundle(archive, keys).manifest is not None, "the default limit takes it"


# Header bounds: the signed manifest is read first, and no header is parsed unbounded


def signed_head(tar: tarfile.TarFile, key: Ed25519PrivateKey, payload: dict[str, bytes] = PAYLOAD) -> None:
    """A genuine signed manifest and signature, as anyone holding one real bundle could copy them."""
    manifest = encode(manifest_dict(payload))
    add_file(tar, "manifest.json", manifest)
    add_file(tar, "manifest.sig", key.sign(manifest))


def add_with_pax(tar: tarfile.TarFile, name: str, data: bytes, pax: dict[str, str]) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.pax_headers = pax
    tar.addfile(info, io.BytesIO(data))


def peak_bytes_while(call: Callable[[], object]) -> int:
    """Peak memory Python allocated while `call` ran (its exceptions propagate)."""
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


BOMB_BYTES = 32 * 1024 * 1024


@pytest.mark.parametrize("head", ["none", "signed"], ids=["before_the_manifest", "after_a_signed_manifest"])
def test_pax_header_bomb_is_refused_in_bounded_memory(
    tmp_path: Path, key: Ed25519PrivateKey, keys: list, head: str
) -> None:
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        if head == "signed":
            signed_head(tar, key)
        add_with_pax(tar, "models/encoder.bin", PAYLOAD["models/encoder.bin"], {"comment": "A" * BOMB_BYTES})
    assert archive.stat().st_size < BOMB_BYTES // 100, "a small archive"
    reason = "not_a_bundle" if head == "none" else "too_large"
    messages: list[str] = []
    peak = peak_bytes_while(lambda: messages.append(reject(archive, keys, reason)))
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes while refusing a {archive.stat().st_size} byte archive"
    expected = "no manifest.json as its first member" if head == "none" else "over the 65536 limit"
    assert expected in messages[0]


def test_gnu_long_name_bomb_is_refused(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    archive = tmp_path / "longname.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tar:
        signed_head(tar, key)
        add_file(tar, "models/" + "n" * (1024 * 1024), b"x")
    assert "type 'L'" in reject(archive, keys, "too_large")


def test_chain_of_pax_headers_is_refused(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    """tarfile follows a chain of extended headers by recursion; thousands of them would crash it."""
    one = tmp_path / "one.tar"
    with tarfile.open(one, "w", format=tarfile.PAX_FORMAT) as tar:
        add_with_pax(tar, "models/encoder.bin", b"", {"comment": "c"})
    pax_blocks = one.read_bytes()[:1024]  # the 'x' header and its one data block
    head = tmp_path / "head.tar"
    with tarfile.open(head, "w") as tar:
        signed_head(tar, key)
    head_bytes = head.read_bytes()
    head_bytes = head_bytes[: head_bytes.rindex(key.sign(encode(manifest_dict(PAYLOAD)))) + 512]
    archive = tmp_path / "chain.tar"
    archive.write_bytes(head_bytes + pax_blocks * 5000 + one.read_bytes()[1024:])
    assert "extended headers in a row" in reject(archive, keys, "not_a_bundle")


def test_pax_size_override_is_refused(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    """A pax `size` moves where the next header starts; the header walk and tarfile could then disagree."""
    archive = tmp_path / "size.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        signed_head(tar, key)
        add_with_pax(tar, "models/encoder.bin", PAYLOAD["models/encoder.bin"], {"size": "1"})
    assert "'size'" in reject(archive, keys, "not_a_bundle")


def test_manifest_must_be_the_first_member(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    manifest = encode(manifest_dict(PAYLOAD))
    archive = tmp_path / "late.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in PAYLOAD.items():
            add_file(tar, name, data)
        add_file(tar, "manifest.json", manifest)
        add_file(tar, "manifest.sig", key.sign(manifest))
    message = reject(archive, keys, "not_a_bundle")
    assert "first member" in message and "models/encoder.xml" in message


def test_many_members_the_manifest_does_not_list_are_refused(
    tmp_path: Path, key: Ed25519PrivateKey, keys: list
) -> None:
    def folders(tar: tarfile.TarFile) -> None:
        for index in range(100):  # more than the allowance for members the manifest does not list
            add_special(tar, f"stray{index}", tarfile.DIRTYPE)

    archive = write_archive(tmp_path / "stray.tar", key, extra=folders)
    assert "more than" in reject(archive, keys, "not_a_bundle")


def test_long_paths_with_small_pax_headers_still_verify(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    long_name = "reference/" + "long-name-" * 20 + ".png"
    payload = {**PAYLOAD, long_name: b"a reference image"}
    archive = tmp_path / "long.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        signed_head(tar, key, payload)
        for name, data in payload.items():
            add_file(tar, name, data)
    verified = verify_bundle(archive, keys)
    assert long_name in verified.manifest.files
    assert verified.unpacked_bytes == sum(len(data) for data in payload.values())


# Manifest schema


def parse_error(manifest: dict) -> BundleError:
    with pytest.raises(BundleError) as caught:
        Manifest.parse(encode(manifest))
    return caught.value


def test_referenced_file_must_be_listed() -> None:
    manifest = manifest_dict(PAYLOAD)
    del manifest["files"]["models/encoder.bin"]
    error = parse_error(manifest)
    assert error.reason == "malformed_manifest"
    assert "networks.encoder.weights" in str(error) and "models/encoder.bin" in str(error)


def test_memory_files_must_be_listed() -> None:
    manifest = manifest_dict(PAYLOAD)
    del manifest["files"]["memory/memory.json"]
    assert "memory/memory.json" in str(parse_error(manifest))


def test_unsafe_paths_in_manifest_are_malformed() -> None:
    manifest = manifest_dict(PAYLOAD)
    manifest["files"]["../outside"] = sha256(b"x")
    manifest["memory"]["folder"] = "/var/memory"
    error = parse_error(manifest)
    assert error.reason == "malformed_manifest"
    assert "'../outside'" in str(error) and "memory.folder" in str(error)


def test_naive_or_non_utc_creation_time_is_malformed() -> None:
    for stamp in ["2024-06-01T12:00:00", "2024-06-01T12:00:00+02:00"]:
        error = parse_error({**manifest_dict(PAYLOAD), "created_at": stamp})
        assert "created_at" in str(error) and stamp[:10] in str(error)


def test_calibration_bins_must_match_inspection_settings() -> None:
    manifest = manifest_dict(PAYLOAD)
    manifest["calibration"] = {**CALIBRATION, "bins": {"low": 0.1, "high": 1.0, "count": 7}}
    assert "severity_bins" in str(parse_error(manifest))


def test_empty_file_list_is_malformed() -> None:
    manifest = {**manifest_dict(PAYLOAD), "files": {}}
    assert "files is empty" in str(parse_error(manifest))


def test_bundle_error_survives_pickling() -> None:
    copy = pickle.loads(pickle.dumps(BundleError("missing_file", "bundle x.tar: a.bin is missing")))
    assert (copy.reason, str(copy)) == ("missing_file", "missing_file: bundle x.tar: a.bin is missing")


def test_manifest_round_trips_through_its_bytes() -> None:
    manifest = Manifest.parse(encode(manifest_dict(PAYLOAD)))
    assert Manifest.parse(manifest.to_bytes()) == manifest


# Trusted keys


def test_load_trusted_keys(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "device.pub"
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (loaded,) = load_trusted_keys([path])
    loaded.verify(key.sign(b"data"), b"data")


def test_load_trusted_keys_rejects_bad_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pub"
    with pytest.raises(KeyFileError, match="missing.pub"):
        load_trusted_keys([missing])
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key")
    with pytest.raises(KeyFileError, match="garbage.pub"):
        load_trusted_keys([garbage])
    other = tmp_path / "ecdsa.pub"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFileError, match="ecdsa.pub.*not an Ed25519"):
        load_trusted_keys([other])


# Installation


def test_install_and_load_installed(good: Path, keys: list, tmp_path: Path) -> None:
    slot = tmp_path / "slots" / "a"
    manifest = install_bundle(good, keys, slot)
    assert manifest == verify_bundle(good, keys).manifest
    for name, data in PAYLOAD.items():
        assert (slot / name).read_bytes() == data
    assert Manifest.parse((slot / "manifest.json").read_bytes()) == manifest
    assert len((slot / "manifest.sig").read_bytes()) == 64
    assert sorted(p.name for p in slot.parent.iterdir()) == ["a"]
    assert load_installed(slot) == manifest
    assert load_installed(slot, keys) == manifest


def test_install_into_existing_empty_folder(good: Path, keys: list, tmp_path: Path) -> None:
    slot = tmp_path / "slot"
    slot.mkdir()
    install_bundle(good, keys, slot)
    assert (slot / "models/encoder.xml").read_bytes() == PAYLOAD["models/encoder.xml"]


def test_install_refuses_a_non_empty_slot(good: Path, keys: list, tmp_path: Path) -> None:
    slot = tmp_path / "slot"
    slot.mkdir()
    (slot / "old.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        install_bundle(good, keys, slot)
    assert tree(slot) == {"old.txt": b"keep me"}


def test_failed_install_leaves_nothing_behind(tmp_path: Path, key: Ed25519PrivateKey, keys: list) -> None:
    archive_dir, parent = tmp_path / "incoming", tmp_path / "slots"
    archive_dir.mkdir()
    parent.mkdir()
    tampered = {**PAYLOAD, "reference/good_0.png": b"swapped"}
    archive = write_archive(archive_dir / "tampered.tar", key, payload=tampered)
    before = tree(tmp_path)
    with pytest.raises(BundleError) as caught:
        install_bundle(archive, keys, parent / "slot")
    assert caught.value.reason == "hash_mismatch"
    assert tree(tmp_path) == before


def test_archive_swapped_after_verification_is_caught_while_extracting(
    good: Path, key: Ed25519PrivateKey, keys: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_verify = bundle_module.verify_bundle

    def verify_then_swap(archive: Path, trusted: list, max_unpacked_bytes: int) -> bundle_module.VerifiedBundle:
        verified = real_verify(archive, trusted, max_unpacked_bytes)
        write_archive(archive, key, payload={**PAYLOAD, "models/encoder.xml": b"<evil/>"})
        return verified

    monkeypatch.setattr(bundle_module, "verify_bundle", verify_then_swap)
    parent = tmp_path / "slots"
    with pytest.raises(BundleError) as caught:
        install_bundle(good, keys, parent / "slot")
    assert caught.value.reason == "hash_mismatch"
    assert "models/encoder.xml" in str(caught.value)
    assert list(parent.iterdir()) == []


def test_load_installed_detects_changed_and_missing_files(good: Path, keys: list, tmp_path: Path) -> None:
    slot = tmp_path / "slot"
    install_bundle(good, keys, slot)
    (slot / "memory/memory.json").write_bytes(b'{"size": 4}')
    with pytest.raises(BundleError, match="memory/memory.json") as caught:
        load_installed(slot)
    assert caught.value.reason == "hash_mismatch"
    (slot / "memory/memory.json").unlink()
    with pytest.raises(BundleError, match="memory/memory.json") as caught:
        load_installed(slot)
    assert caught.value.reason == "missing_file"


def test_load_installed_with_keys_detects_an_edited_manifest(good: Path, keys: list, tmp_path: Path) -> None:
    slot = tmp_path / "slot"
    install_bundle(good, keys, slot)
    path = slot / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b'"pixel_threshold": 0.5', b'"pixel_threshold": 0.9'))
    with pytest.raises(BundleError) as caught:
        load_installed(slot, keys)
    assert caught.value.reason == "bad_signature"


def test_load_installed_of_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="manifest.json") as caught:
        load_installed(tmp_path)
    assert caught.value.reason == "not_a_bundle"


def test_schema_2_calibration_keeps_edge_bands_and_chosen_weights() -> None:
    calibration = Calibration.from_dict(
        {
            **CALIBRATION,
            "map_stats": {"knn": {"location": [0.5, 0.1], "scale": [2.0, 1.0], "band_width": 8}},
            "map_weights": {"knn": 1.0, "latent": 0.5, "feature": 0.0},
        }
    )
    spec = CalibrationSpec.from_calibration(calibration)
    assert spec.to_calibration() == calibration
    assert spec.to_calibration().map_stats["knn"].scale == (2.0, 1.0)
    with pytest.raises(ValueError, match="unknown map kinds"):
        CalibrationSpec.model_validate({**calibration.to_dict(), "map_weights": {"colour": 1.0}})
    with pytest.raises(ValueError, match="2 locations but 1 scales"):
        CalibrationSpec.model_validate(
            {**CALIBRATION, "map_stats": {"knn": {"location": [0.5, 0.1], "scale": [1.0], "band_width": 8}}}
        )


# Schema 3: an orderable model_version and an optional product / device-class target


def test_schema_3_binds_a_bundle_to_a_product_and_older_schemas_still_load(
    tmp_path: Path, key: Ed25519PrivateKey, keys: list
) -> None:
    target = {"product": "tile-inspector", "device_class": "line-pc"}
    bound = {**manifest_dict(PAYLOAD), "schema_version": 3, "model_version": "2.1.0-rc.1", "target": target}
    manifest = verify_bundle(write_archive(tmp_path / "bound.tar", key, manifest=encode(bound)), keys).manifest
    assert (manifest.target.product, manifest.target.device_class) == ("tile-inspector", "line-pc")
    for schema in (1, 2):  # free-text versions and no target, as such bundles were made
        older = {**manifest_dict(PAYLOAD), "schema_version": schema}
        loaded = verify_bundle(write_archive(tmp_path / f"v{schema}.tar", key, manifest=encode(older)), keys)
        assert loaded.manifest.target is None and loaded.manifest.model_version == "tile-2024.06.01"


def test_schema_3_needs_an_orderable_version_and_older_schemas_no_target(
    tmp_path: Path, key: Ed25519PrivateKey, keys: list
) -> None:
    unordered = {**manifest_dict(PAYLOAD), "schema_version": 3}
    message = reject(write_archive(tmp_path / "free.tar", key, manifest=encode(unordered)), keys, "malformed_manifest")
    assert "model_version: 'tile-2024.06.01' is not a version that can be ordered" in message
    old_bound = {**manifest_dict(PAYLOAD), "schema_version": 2, "target": {"product": "p", "device_class": "c"}}
    message = reject(write_archive(tmp_path / "old.tar", key, manifest=encode(old_bound)), keys, "malformed_manifest")
    assert "target needs schema_version 3" in message


# Schema 4: the image score may be the mean of the map's highest pixels


def test_schema_4_scores_by_top_fraction_and_older_schemas_keep_the_maximum(
    tmp_path: Path, key: Ed25519PrivateKey, keys: list
) -> None:
    inspection = {k: v for k, v in InspectionSettings().model_dump(mode="json").items() if k != "score_top_fraction"}
    for schema, expected in ((3, 0.0), (4, InspectionSettings().score_top_fraction)):
        raw = {**manifest_dict(PAYLOAD), "schema_version": schema, "model_version": "2.0.0", "inspection": inspection}
        loaded = verify_bundle(write_archive(tmp_path / f"v{schema}.tar", key, manifest=encode(raw)), keys)
        assert loaded.manifest.inspection.score_top_fraction == expected
    assert InspectionSettings().score_top_fraction > 0.0


# Schema 7: the healing maps capped by the KNN map's evidence


def test_schema_7_caps_the_healing_maps_and_older_schemas_keep_the_sum(
    tmp_path: Path, key: Ed25519PrivateKey, keys: list
) -> None:
    inspection = {k: v for k, v in InspectionSettings().model_dump(mode="json").items() if k != "fusion"}
    for schema, expected in ((6, "sum"), (7, "capped")):
        raw = {**manifest_dict(PAYLOAD), "schema_version": schema, "model_version": "2.0.0", "inspection": inspection}
        loaded = verify_bundle(write_archive(tmp_path / f"v{schema}.tar", key, manifest=encode(raw)), keys)
        assert loaded.manifest.inspection.fusion == expected
    assert InspectionSettings().fusion == "capped"


# Schema 5: a coarse memory beside the fine one


def test_schema_5_lists_the_coarse_memory_and_older_schemas_cannot_carry_one(
    tmp_path: Path, key: Ed25519PrivateKey, keys: list
) -> None:
    payload = {**PAYLOAD, "memory/coarse/memory.json": b'{"size": 2}', "memory/coarse/memory.hnsw": b"coarse"}
    memory = {"folder": "memory", "coarse_folder": "memory/coarse"}
    raw = {**manifest_dict(payload), "schema_version": 5, "model_version": "2.0.0", "memory": memory}
    loaded = verify_bundle(write_archive(tmp_path / "v5.tar", key, payload=payload, manifest=encode(raw)), keys)
    assert loaded.manifest.memory.coarse_folder == "memory/coarse"
    assert loaded.manifest.referenced_paths()["memory.coarse_folder/memory.hnsw"] == "memory/coarse/memory.hnsw"
    old = {**raw, "schema_version": 4}
    assert "memory.coarse_folder needs schema_version 5" in str(parse_error(old))
    unlisted = {**raw, "files": {k: v for k, v in raw["files"].items() if not k.startswith("memory/coarse/")}}
    assert "memory/coarse/memory.json" in str(parse_error(unlisted))
