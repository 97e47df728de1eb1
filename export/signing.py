"""Ed25519 keys for signing bundles on the host: generate a key pair, load the private key, sign."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime.bundle_errors import KeyFileError, read_key_file

__all__ = ["KeyFileError", "generate_keypair", "load_private_key", "sign"]


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new unencrypted PKCS8 PEM private key (mode 0600) and its SubjectPublicKeyInfo PEM public key."""
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise ValueError(f"private and public key paths are the same file: {private_path}")
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"refusing to overwrite existing key file {path}")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for folder in {private_path.parent, public_path.parent}:
        folder.mkdir(parents=True, exist_ok=True)
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink()
        raise


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an unencrypted PEM Ed25519 private key; anything else is an error naming the file."""
    path = Path(path)
    data = read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise KeyFileError(f"private key file {path} is not an unencrypted PEM private key: {error}") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"private key file {path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def sign(private_key: Ed25519PrivateKey, data: bytes) -> bytes:
    """The raw 64-byte Ed25519 signature of `data`."""
    return private_key.sign(data)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL closes the gap between the existence check and the write; the mode applies from creation on.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
    # The umask may have removed bits from `mode`, never added any; make the mode exact.
    os.chmod(path, mode)
