"""Which signed bundles this device accepts beyond the signature: one made for its product and device class,
and no older than the minimum version it keeps.

The minimum lives in `<state_dir>/models/minimum_version.json`, apart from state.json so that setting a damaged
state aside never lowers it, and is replaced atomically. It is raised to the version of every model installed
(by `cmd/install` or a configured archive) and never lowered by the service: `cmd/rollback` and the automatic
fallback return to the kept previous model without asking it, and `cmd/install` cannot bring anything older.
The configured archive is not held to it: only root can change the config, and that is the site's own choice.

Schema 1 and 2 bundles name no product and may carry a version that cannot be ordered: a device bound to a
product (bundle.product) refuses them, and once a minimum is set a version that cannot be ordered is refused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from packaging.version import Version
from pydantic import ValidationError

from edge_runtime.durable_files import write_atomically
from edge_runtime.manifest import Manifest
from edge_runtime.service.messages import utc_now
from edge_runtime.service.model_store import ModelState
from edge_runtime.service.service_config import BundleConfig
from edge_runtime.settings import StrictModel
from edge_runtime.versions import parse_version

log = logging.getLogger(__name__)

MINIMUM_FILE = "minimum_version.json"


class BundleNotAccepted(ValueError):
    """A verified bundle this device must not run; `reason` is the code published, the message the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class MinimumRecord(StrictModel):
    minimum_version: str
    set_by: str  # what raised it, for whoever reads the file on the device
    time: str


class MinimumVersion:
    """The lowest model version an install may bring, kept on disk; absent until a model with an orderable
    version is installed."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / MINIMUM_FILE

    def read(self) -> Version | None:
        """The minimum; a file that cannot be used is set aside and counts as absent (the caller re-derives it)."""
        if not self.path.exists():
            return None
        try:
            record = MinimumRecord.model_validate_json(self.path.read_bytes())
        except (OSError, ValidationError) as error:
            log.error("%s cannot be used (%s); it is set aside as %s.unusable", self.path, error, self.path.stem)
            self.path.rename(self.path.with_suffix(".unusable"))
            return None
        version = parse_version(record.minimum_version)
        if version is None:
            log.error("%s holds %r, not a version; it is set aside", self.path, record.minimum_version)
            self.path.rename(self.path.with_suffix(".unusable"))
        return version

    def raise_to(self, version: str, set_by: str) -> None:
        """Raise the minimum to `version`; a lower or unorderable version leaves it as it is."""
        wanted, current = parse_version(version), self.read()
        if wanted is None or (current is not None and wanted <= current):
            return
        record = MinimumRecord(minimum_version=version, set_by=set_by, time=utc_now())
        write_atomically(self.path, json.dumps(record.model_dump(), indent=2).encode("utf-8"))
        log.info("minimum model version is now %s (%s)", version, set_by)


class BundlePolicy:
    """The product binding the config gives (bundle.product, bundle.device_class) and the minimum version."""

    def __init__(self, bundle: BundleConfig, models_root: Path) -> None:
        self.product = bundle.product
        self.device_class = bundle.device_class
        self.minimum = MinimumVersion(models_root)

    def start(self, state: ModelState) -> None:
        """A device without a minimum yet (new, or updated from a release without one, or its file damaged):
        the newest model it keeps sets it, so what was installed before still counts."""
        if self.minimum.path.exists() and self.minimum.read() is not None:
            return
        kept = [m.version for m in (state.active, state.previous) if m is not None and parse_version(m.version)]
        if kept:
            newest = max(kept, key=lambda text: parse_version(text))
            self.minimum.raise_to(newest, f"newest installed model {newest} at start")

    def check_version(self, version: str) -> None:
        """Refuse a version below the minimum, or one that cannot be ordered once there is a minimum."""
        minimum = self.minimum.read()
        if minimum is None:
            return
        parsed = parse_version(version)
        if parsed is None:
            raise BundleNotAccepted(
                "unordered_version",
                f"model_version {version!r} cannot be ordered, and this device accepts only {minimum} or newer",
            )
        if parsed < minimum:
            raise BundleNotAccepted(
                "downgrade",
                f"model_version {version} is older than this device's minimum {minimum} (raised by every install; "
                "cmd/rollback returns to the kept previous model)",
            )

    def check(self, manifest: Manifest) -> None:
        """Everything this device asks of a verified bundle before it compiles it."""
        self.check_target(manifest)
        self.check_version(manifest.model_version)

    def check_target(self, manifest: Manifest) -> None:
        if self.product is None:
            return
        device = f"product {self.product!r}, device class {self.device_class!r}"
        target = manifest.target
        if target is None:
            raise BundleNotAccepted(
                "wrong_target",
                f"bundle {manifest.model_version} names no product (schema {manifest.schema_version}, or exported "
                f"without --product); this device (bundle.product) accepts only {device}",
            )
        if (target.product, target.device_class) != (self.product, self.device_class):
            raise BundleNotAccepted(
                "wrong_target",
                f"bundle {manifest.model_version} is for product {target.product!r}, device class "
                f"{target.device_class!r}; this device is {device} (bundle.product, bundle.device_class)",
            )

    def accepted(self, manifest: Manifest, set_by: str) -> None:
        """A bundle is about to run: nothing older may be installed from now on."""
        self.minimum.raise_to(manifest.model_version, set_by)

    def minimum_text(self) -> str | None:
        minimum = self.minimum.read()
        return str(minimum) if minimum is not None else None
