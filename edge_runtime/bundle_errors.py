"""Errors raised while reading keys and bundles; shared by the manifest schema and the bundle verifier."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

BundleErrorReason = Literal[
    "not_a_bundle",
    "unsafe_path",
    "unsigned",
    "bad_signature",
    "unknown_schema",
    "malformed_manifest",
    "missing_file",
    "extra_file",
    "hash_mismatch",
    "too_large",
    "no_space",
]
BUNDLE_ERROR_REASONS: frozenset[str] = frozenset(get_args(BundleErrorReason))


class BundleError(Exception):
    """A bundle that must not be installed; `reason` is machine-readable, the message names the culprit."""

    def __init__(self, reason: BundleErrorReason, message: str) -> None:
        if reason not in BUNDLE_ERROR_REASONS:
            raise ValueError(f"unknown bundle error reason {reason!r}")
        # Both arguments go to Exception so that the error survives pickling (e.g. across worker processes).
        super().__init__(reason, message)
        self.reason: BundleErrorReason = reason
        self.detail = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class KeyFileError(ValueError):
    """A key file that is missing or does not hold the expected Ed25519 key."""


def read_key_file(path: Path, role: str) -> bytes:
    """The bytes of a key file; a missing or unreadable file is a KeyFileError naming it and its role."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as error:
        raise KeyFileError(f"{role} file {path} does not exist") from error
    except OSError as error:
        raise KeyFileError(f"{role} file {path} cannot be read: {error.strerror or error}") from error
