"""Pack a staging folder and its manifest into a signed, deterministic bundle archive."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edge_runtime.bundle import BundleError, sha256_of_file, verify_bundle
from edge_runtime.manifest import MANIFEST_NAME, RESERVED_NAMES, SIGNATURE_NAME, Manifest, path_problem
from export.signing import sign

__all__ = ["PackingError", "hash_staging", "write_bundle"]

_FILE_MODE = 0o644
_FOLDER_MODE = 0o755


class PackingError(ValueError):
    """A staging folder or manifest that cannot become a bundle; the message says which file or field."""


def hash_staging(staging_dir: Path) -> dict[str, str]:
    """Relative POSIX path -> sha256 of every file under `staging_dir`, sorted by path."""
    files, _ = _scan(Path(staging_dir))
    return files


def write_bundle(staging_dir: Path, manifest: Manifest, out_path: Path, private_key: Ed25519PrivateKey) -> Manifest:
    """Fill `manifest.files` from `staging_dir`, sign the manifest and write the tar atomically; returns it."""
    staging_dir, out_path = Path(staging_dir), Path(out_path)
    if not staging_dir.is_dir():
        raise PackingError(f"staging folder {staging_dir} does not exist")
    if manifest.files:
        raise PackingError("manifest.files must be empty: write_bundle fills it from the staging folder")
    if out_path.resolve().is_relative_to(staging_dir.resolve()):
        raise PackingError(f"bundle {out_path} would be written inside its own staging folder {staging_dir}")
    files, folders = _scan(staging_dir)
    try:
        final = Manifest.model_validate({**manifest.model_dump(), "files": files})
    except ValidationError as error:
        raise PackingError(f"manifest does not match staging folder {staging_dir}: {error}") from error
    manifest_bytes = final.to_bytes()
    signature = sign(private_key, manifest_bytes)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".partial", dir=out_path.parent)
    try:
        with os.fdopen(descriptor, "wb") as out:
            _write_tar(out, staging_dir, manifest_bytes, signature, files, folders, int(final.created_at.timestamp()))
            out.flush()
            os.fsync(out.fileno())
        _self_check(Path(temporary), private_key, staging_dir)
        os.replace(temporary, out_path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return final


def _scan(staging_dir: Path) -> tuple[dict[str, str], list[str]]:
    """Hashes of all files and the list of folders, refusing links, special files and reserved names."""
    files: dict[str, str] = {}
    folders: list[str] = []
    for root, folder_names, file_names in os.walk(staging_dir):
        for entry in sorted(folder_names + file_names):
            path = Path(root, entry)
            relative = path.relative_to(staging_dir).as_posix()
            problem = path_problem(relative)
            if problem is not None:
                raise PackingError(f"staging path {relative!r} {problem}")
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise PackingError(f"staging folder {staging_dir} holds a symbolic link: {relative}")
            if stat.S_ISDIR(mode):
                folders.append(relative)
            elif stat.S_ISREG(mode):
                if relative in RESERVED_NAMES:
                    raise PackingError(f"staging folder {staging_dir} holds {relative}, a name the bundle reserves")
                files[relative] = sha256_of_file(path)
            else:
                raise PackingError(f"staging folder {staging_dir} holds a special file: {relative}")
    return dict(sorted(files.items())), sorted(folders)


def _write_tar(
    out: io.BufferedWriter,
    staging_dir: Path,
    manifest_bytes: bytes,
    signature: bytes,
    files: dict[str, str],
    folders: list[str],
    mtime: int,
) -> None:
    """Manifest and signature first, then folders and files by path, with fixed metadata. The device reads the
    first two members as plain headers (no pax header: short ASCII names, integer metadata) and checks the
    signature before it parses anything else (edge_runtime.tar_scan)."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_member(MANIFEST_NAME, tarfile.REGTYPE, len(manifest_bytes), mtime), io.BytesIO(manifest_bytes))
        tar.addfile(_member(SIGNATURE_NAME, tarfile.REGTYPE, len(signature), mtime), io.BytesIO(signature))
        for name in sorted([*folders, *files]):
            if name in files:
                with staging_dir.joinpath(*name.split("/")).open("rb") as stream:
                    size = os.fstat(stream.fileno()).st_size
                    tar.addfile(_member(name, tarfile.REGTYPE, size, mtime), stream)
            else:
                tar.addfile(_member(name, tarfile.DIRTYPE, 0, mtime))


def _member(name: str, kind: bytes, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mtime = mtime
    info.mode = _FOLDER_MODE if kind == tarfile.DIRTYPE else _FILE_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _self_check(archive: Path, private_key: Ed25519PrivateKey, staging_dir: Path) -> None:
    """Read the archive back as a device would; catches files that changed while they were packed."""
    try:
        verify_bundle(archive, [private_key.public_key()])
    except BundleError as error:
        raise PackingError(f"bundle packed from {staging_dir} does not verify: {error}") from error
