"""Model versions that can be ordered: semantic versions such as 1.4.0 or 2.0.0-rc.1, compared as `packaging`
compares release numbers (1.10.0 is newer than 1.9.0; a pre-release is older than its release)."""

from __future__ import annotations

from packaging.version import InvalidVersion, Version


def parse_version(text: str) -> Version | None:
    """The version `text` stands for; None when it cannot be ordered (free text of schema 1 and 2 bundles)."""
    try:
        return Version(text)
    except InvalidVersion:
        return None


def version_problem(text: str) -> str | None:
    """Why `text` is not an orderable model version; None when it is one."""
    if parse_version(text) is None:
        return f"{text!r} is not a version that can be ordered; use a semantic version such as 1.4.0 or 2.0.0-rc.1"
    return None
