"""Device side of the model bundle: verify a signed archive without extracting it, then install it atomically."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from edge_runtime.bundle_errors import BundleError, KeyFileError, read_key_file
from edge_runtime.durable_files import sync_directory, write_new_durably
from edge_runtime.manifest import MANIFEST_NAME, RESERVED_NAMES, SIGNATURE_NAME, Manifest, path_problem
from edge_runtime.tar_scan import RawTarReader, TarScanError

__all__ = [
    "BundleError",
    "KeyFileError",
    "VerifiedBundle",
    "install_bundle",
    "load_installed",
    "load_trusted_keys",
    "sha256_of_file",
    "verify_bundle",
]

SIGNATURE_BYTES = 64
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Unpacked size is bounded separately from the download: a small compressed archive can expand enormously.
DEFAULT_MAX_UNPACKED_BYTES = 8 * 1024**3
# Members the manifest does not account for (stray folders, mistakes) before the archive is refused unread:
# tarfile keeps every member header in memory.
MAX_UNLISTED_MEMBERS = 64
_CHUNK_BYTES = 1 << 20
_FILE_OVERHEAD_BYTES = 4096  # a file takes whole blocks on disk
_GZIP_MAGIC = b"\x1f\x8b"
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


@dataclass(frozen=True)
class VerifiedBundle:
    """An archive whose signature, manifest and file hashes were all checked."""

    archive: Path
    manifest: Manifest
    manifest_bytes: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    unpacked_bytes: int = 0  # what its files take once extracted, from the member headers


def load_trusted_keys(paths: Sequence[Path]) -> list[Ed25519PublicKey]:
    """Read PEM (SubjectPublicKeyInfo) Ed25519 public keys; any unusable file is an error naming it."""
    keys: list[Ed25519PublicKey] = []
    for path in map(Path, paths):
        data = read_key_file(path, "trusted key")
        try:
            key = load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as error:
            raise KeyFileError(f"trusted key file {path} is not a PEM public key: {error}") from error
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"trusted key file {path} holds a {type(key).__name__}, not an Ed25519 public key")
        keys.append(key)
    return keys


def verify_bundle(
    archive: Path, trusted_keys: Sequence[Ed25519PublicKey], max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES
) -> VerifiedBundle:
    """Check signature, header bounds, member safety, size, manifest and every hash while reading; nothing is
    written. The signed manifest at the head of the archive is checked before any other header is parsed."""
    archive = Path(archive)
    manifest_bytes, signature, manifest, unpacked = _verify_head_and_headers(archive, trusted_keys, max_unpacked_bytes)
    with _open_archive(archive) as tar:
        members = _safe_members(tar, archive)
        # tarfile must see the very manifest that was verified, or the two readers disagree about the archive.
        if _read_manifest_and_signature(tar, members, archive) != (manifest_bytes, signature):
            raise BundleError("not_a_bundle", f"bundle {archive.name}: its manifest reads differently as a tar")
        _check_file_set(manifest, members, f"bundle {archive.name}")
        for name, member in _in_archive_order(members):
            actual = _sha256_of_chunks(_member_chunks(tar, member, archive))
            _check_hash(name, manifest.files[name], actual, f"bundle {archive.name}")
    return VerifiedBundle(archive, manifest, manifest_bytes, signature, unpacked)


def _verify_head_and_headers(
    archive: Path, trusted_keys: Sequence[Ed25519PublicKey], max_unpacked_bytes: int
) -> tuple[bytes, bytes, Manifest, int]:
    """Manifest and signature read as the first two members with the bounded reader, the signature checked,
    then every further header walked with bounds (see tar_scan); returns them and the unpacked size."""
    source = f"bundle {archive.name}"
    with _open_raw(archive) as stream:
        reader = RawTarReader(stream)
        try:
            manifest_bytes = _read_head_member(reader, MANIFEST_NAME, MAX_MANIFEST_BYTES, archive)
            signature = _read_head_member(reader, SIGNATURE_NAME, SIGNATURE_BYTES, archive)
            _check_signature(manifest_bytes, signature, trusted_keys, source)
            manifest = Manifest.parse(manifest_bytes)
            unpacked = _scan_rest(reader, manifest, max_unpacked_bytes, archive)
        except TarScanError as error:
            raise BundleError("too_large" if error.too_large else "not_a_bundle", f"{source}: {error}") from error
        except _READ_ERRORS as error:
            raise BundleError("not_a_bundle", f"{source} is not a readable tar archive: {error}") from error
    return manifest_bytes, signature, manifest, unpacked


def _read_head_member(reader: RawTarReader, name: str, limit: int, archive: Path) -> bytes:
    """The next member, which must be the plain regular file `name` of at most `limit` bytes."""
    position = "first" if name == MANIFEST_NAME else "second"
    try:
        member = reader.next_member(plain=True)
        found = "nothing" if member is None else repr(member.name)
    except TarScanError as error:
        member, found = None, str(error)
    if member is None or member.name != name or not member.is_regular:
        reason = "not_a_bundle" if name == MANIFEST_NAME else "unsigned"
        raise BundleError(
            reason,
            f"bundle {archive.name} has no {name} as its {position} member (found {found}); "
            f"a bundle starts with {MANIFEST_NAME} and {SIGNATURE_NAME}",
        )
    if name == SIGNATURE_NAME and member.size != SIGNATURE_BYTES:
        raise BundleError(
            "bad_signature", f"{SIGNATURE_NAME} is {member.size} bytes; an Ed25519 signature is {SIGNATURE_BYTES}"
        )
    if member.size > limit:
        raise BundleError("malformed_manifest", f"{name} is {member.size} bytes, over the {limit} limit")
    return reader.read_data(member, limit)


def _scan_rest(reader: RawTarReader, manifest: Manifest, max_unpacked_bytes: int, archive: Path) -> int:
    """Walk the remaining headers: bounded in count and declared size; returns the bytes the files unpack to."""
    allowed = len(manifest.files) + len(_folders_of(manifest.files)) + MAX_UNLISTED_MEMBERS
    count = total = 0
    while (member := reader.next_member()) is not None:
        count += 1
        if count > allowed:
            raise BundleError(
                "not_a_bundle",
                f"bundle {archive.name} holds more than {allowed} members; its manifest lists "
                f"{len(manifest.files)} files",
            )
        total += member.size if member.is_regular else 0
        _check_unpacked_size(total, max_unpacked_bytes, archive)
    return total


def _folders_of(files: Iterable[str]) -> set[str]:
    """Every folder above a listed file; a bundle may hold a member for each."""
    return {str(parent) for name in files for parent in PurePosixPath(name).parents if str(parent) != "."}


def install_bundle(
    archive: Path,
    trusted_keys: Sequence[Ed25519PublicKey],
    slot_dir: Path,
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
    keep_free_bytes: int = 0,
) -> Manifest:
    """Verify, then extract into a hidden sibling of `slot_dir` and rename it into place; refused (`no_space`)
    when the unpacked files would leave less than `keep_free_bytes` free on that disk."""
    slot_dir = Path(slot_dir)
    _check_slot_free(slot_dir)
    verified = verify_bundle(archive, trusted_keys, max_unpacked_bytes)
    slot_dir.parent.mkdir(parents=True, exist_ok=True)
    _check_room(verified, slot_dir.parent, keep_free_bytes)
    staging = Path(tempfile.mkdtemp(prefix=f".{slot_dir.name}.installing-", dir=slot_dir.parent))
    try:
        _extract_verified(verified, staging)
        write_new_durably(staging / MANIFEST_NAME, verified.manifest_bytes)
        write_new_durably(staging / SIGNATURE_NAME, verified.signature)
        _check_slot_free(slot_dir)
        if slot_dir.exists():
            slot_dir.rmdir()
        os.rename(staging, slot_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    sync_directory(slot_dir.parent)
    return verified.manifest


@contextmanager
def temporary_slot(archive: Path, trusted_key_files: Sequence[Path], prefix: str = "bundle-slot-") -> Iterator[Path]:
    """The bundle verified against the key files and installed into a temporary folder, removed on leaving: for
    tools that run a bundle once (benchmarks, evaluations) rather than keep it installed."""
    with tempfile.TemporaryDirectory(prefix=prefix) as temporary:
        slot = Path(temporary) / "slot"
        install_bundle(archive, load_trusted_keys(trusted_key_files), slot)
        yield slot


def load_installed(slot_dir: Path, trusted_keys: Sequence[Ed25519PublicKey] | None = None) -> Manifest:
    """Re-read an installed slot's manifest and re-check its files; with keys, re-check the signature too."""
    slot_dir = Path(slot_dir)
    source = f"slot {slot_dir}"
    manifest_path = slot_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError("not_a_bundle", f"{source} has no {MANIFEST_NAME}; it is not an installed bundle")
    manifest_bytes = manifest_path.read_bytes()
    if trusted_keys is not None:
        signature_path = slot_dir / SIGNATURE_NAME
        if not signature_path.is_file():
            raise BundleError("unsigned", f"{source} has no {SIGNATURE_NAME}")
        _check_signature(manifest_bytes, signature_path.read_bytes(), trusted_keys, source)
    manifest = Manifest.parse(manifest_bytes)
    root = slot_dir.resolve()
    for name, expected in sorted(manifest.files.items()):
        path = slot_dir.joinpath(*name.split("/"))
        if path.is_symlink() or (path.exists() and not path.resolve().is_relative_to(root)):
            raise BundleError("unsafe_path", f"{source}: {name} is a symbolic link or leads outside the slot")
        if not path.is_file():
            raise BundleError("missing_file", f"{source}: {name} is listed in {MANIFEST_NAME} but missing")
        _check_hash(name, expected, sha256_of_file(path), source)
    return manifest


def _open_archive(archive: Path) -> tarfile.TarFile:
    """A plain or gzip-compressed tar, opened for reading; anything else is not a bundle."""
    try:
        return tarfile.open(archive, "r:gz" if _is_gzip(archive) else "r:")
    except _READ_ERRORS as error:
        raise BundleError("not_a_bundle", f"{archive} is not a readable tar archive: {error}") from error


def _open_raw(archive: Path) -> BinaryIO:
    """The archive's uncompressed tar stream, for the bounded header reader."""
    try:
        return gzip.open(archive, "rb") if _is_gzip(archive) else archive.open("rb")  # type: ignore[return-value]
    except OSError as error:
        raise BundleError("not_a_bundle", f"{archive} is not a readable tar archive: {error}") from error


def _is_gzip(archive: Path) -> bool:
    with archive.open("rb") as raw:
        return raw.read(len(_GZIP_MAGIC)) == _GZIP_MAGIC


def _safe_members(tar: tarfile.TarFile, archive: Path) -> dict[str, tarfile.TarInfo]:
    """Regular-file members by name, after refusing any unsafe member; folders are checked, then dropped."""
    files: dict[str, tarfile.TarInfo] = {}
    seen: dict[str, str] = {}
    for member in _iterate_members(tar, archive):
        if member.type not in _FILE_TYPES and member.type != tarfile.DIRTYPE:
            raise BundleError(
                "unsafe_path",
                f"bundle {archive.name}: member {member.name!r} is a {_kind_of(member)}; "
                "only regular files and folders are allowed",
            )
        name = member.name.removesuffix("/") if member.isdir() else member.name
        problem = path_problem(name)
        if problem is not None:
            raise BundleError("unsafe_path", f"bundle {archive.name}: member {member.name!r} {problem}")
        # Case-insensitive file systems would merge two such members into one file.
        folded = name.casefold()
        if folded in seen:
            raise BundleError(
                "unsafe_path", f"bundle {archive.name}: member {name!r} duplicates member {seen[folded]!r}"
            )
        seen[folded] = name
        if not member.isdir():
            files[name] = member
    return files


def _check_unpacked_size(total: int, max_bytes: int, archive: Path) -> None:
    """Member sizes come from the headers; extraction never writes more than a header declares."""
    if total > max_bytes:
        raise BundleError(
            "too_large", f"bundle {archive.name} unpacks to at least {total} bytes, over the {max_bytes} limit"
        )


def _iterate_members(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    members = iter(tar)
    while True:
        try:
            member = next(members)
        except StopIteration:
            return
        except _READ_ERRORS as error:
            raise BundleError("not_a_bundle", f"bundle {archive.name} is corrupt: {error}") from error
        yield member


def _kind_of(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    return f"member of tar type {member.type!r}"


def _read_manifest_and_signature(
    tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], archive: Path
) -> tuple[bytes, bytes]:
    if MANIFEST_NAME not in members:
        raise BundleError("not_a_bundle", f"{archive.name} has no {MANIFEST_NAME}")
    if SIGNATURE_NAME not in members:
        raise BundleError("unsigned", f"bundle {archive.name} has no {SIGNATURE_NAME}")
    manifest_size = members[MANIFEST_NAME].size
    if manifest_size > MAX_MANIFEST_BYTES:
        raise BundleError(
            "malformed_manifest", f"{MANIFEST_NAME} is {manifest_size} bytes, over the {MAX_MANIFEST_BYTES} limit"
        )
    signature_size = members[SIGNATURE_NAME].size
    if signature_size != SIGNATURE_BYTES:
        raise BundleError(
            "bad_signature", f"{SIGNATURE_NAME} is {signature_size} bytes; an Ed25519 signature is {SIGNATURE_BYTES}"
        )
    manifest_bytes = b"".join(_member_chunks(tar, members[MANIFEST_NAME], archive))
    signature = b"".join(_member_chunks(tar, members[SIGNATURE_NAME], archive))
    return manifest_bytes, signature


def _member_chunks(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> Iterator[bytes]:
    try:
        stream = tar.extractfile(member)
        if stream is None:
            raise tarfile.ReadError("no data")
        while chunk := stream.read(_CHUNK_BYTES):
            yield chunk
    except _READ_ERRORS as error:
        raise BundleError(
            "not_a_bundle", f"bundle {archive.name}: member {member.name!r} unreadable: {error}"
        ) from error


def _check_signature(
    manifest_bytes: bytes, signature: bytes, trusted_keys: Sequence[Ed25519PublicKey], source: str
) -> None:
    for key in trusted_keys:
        if not isinstance(key, Ed25519PublicKey):
            raise TypeError(f"trusted keys must be Ed25519PublicKey, got {type(key).__name__}")
    if not trusted_keys:
        raise BundleError("bad_signature", f"{source}: no trusted public keys are configured, so nothing is trusted")
    if len(signature) != SIGNATURE_BYTES:
        raise BundleError(
            "bad_signature", f"{source}: {SIGNATURE_NAME} is {len(signature)} bytes, not {SIGNATURE_BYTES}"
        )
    for key in trusted_keys:
        try:
            key.verify(signature, manifest_bytes)
            return
        except InvalidSignature:
            continue
    raise BundleError(
        "bad_signature",
        f"{source}: {SIGNATURE_NAME} does not verify {MANIFEST_NAME} with any of the {len(trusted_keys)} trusted "
        "key(s); the manifest was altered or signed by an untrusted key",
    )


def _check_file_set(manifest: Manifest, members: dict[str, tarfile.TarInfo], source: str) -> None:
    present = set(members) - RESERVED_NAMES
    listed = set(manifest.files)
    missing = sorted(listed - present)
    if missing:
        raise BundleError("missing_file", f"{source}: listed in {MANIFEST_NAME} but missing: {', '.join(missing)}")
    extra = sorted(present - listed)
    if extra:
        raise BundleError("extra_file", f"{source}: not listed in {MANIFEST_NAME}: {', '.join(extra)}")


def _in_archive_order(members: dict[str, tarfile.TarInfo]) -> list[tuple[str, tarfile.TarInfo]]:
    """Payload members sorted by position, so a compressed archive is read front to back once."""
    payload = [(name, member) for name, member in members.items() if name not in RESERVED_NAMES]
    return sorted(payload, key=lambda item: item[1].offset_data)


def sha256_of_file(path: Path) -> str:
    """Lowercase hex sha256 of a file, read in chunks."""
    with Path(path).open("rb") as stream:
        return _sha256_of_chunks(iter(lambda: stream.read(_CHUNK_BYTES), b""))


def _sha256_of_chunks(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _check_hash(name: str, expected: str, actual: str, source: str) -> None:
    if actual != expected:
        raise BundleError("hash_mismatch", f"{source}: {name} has sha256 {actual}, the manifest says {expected}")


def _check_room(verified: VerifiedBundle, folder: Path, keep_free_bytes: int) -> None:
    """The unpacked size is known from the member headers before a byte is written; the disk is shared with the
    outbox, so an update must not take the space results need."""
    free = shutil.disk_usage(folder).free
    needed = verified.unpacked_bytes + _FILE_OVERHEAD_BYTES * len(verified.manifest.files)
    if free - needed < keep_free_bytes:
        raise BundleError(
            "no_space",
            f"bundle {verified.archive.name} unpacks to {verified.unpacked_bytes} bytes; {folder} has {free} free "
            f"and must keep {keep_free_bytes} (updates.keep_free_bytes)",
        )


def _check_slot_free(slot_dir: Path) -> None:
    if slot_dir.is_symlink() or (slot_dir.exists() and not slot_dir.is_dir()):
        raise FileExistsError(f"slot {slot_dir} exists and is not a folder")
    if slot_dir.is_dir() and any(slot_dir.iterdir()):
        raise FileExistsError(f"slot {slot_dir} is not empty; install into a new or empty folder")


def _extract_verified(verified: VerifiedBundle, target: Path) -> None:
    """Write the verified payload into `target`, re-checking member safety and every hash as it is written."""
    archive = verified.archive
    expected = verified.manifest.files
    source = f"bundle {archive.name} (changed since verification)"
    with _open_archive(archive) as tar:
        members = _safe_members(tar, archive)
        _check_file_set(verified.manifest, members, source)
        for name, member in _in_archive_order(members):
            destination = target.joinpath(*name.split("/"))
            destination.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with destination.open("xb") as out:
                for chunk in _member_chunks(tar, member, archive):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            _check_hash(name, expected[name], digest.hexdigest(), source)
