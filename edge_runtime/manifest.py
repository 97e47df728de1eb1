"""The manifest schema: the one contract between the host that packs a bundle and the device that installs it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_runtime.anomaly_map import MAP_KINDS, MapStats
from edge_runtime.bundle_errors import BundleError
from edge_runtime.calibration import Calibration
from edge_runtime.config_errors import describe_problems
from edge_runtime.preprocess import ColorMode
from edge_runtime.schedule import DiffusionSchedule
from edge_runtime.settings import (
    InspectionSettings,
    StrictModel,
    fused_by_sum_if_older,
    scored_by_maximum_if_older,
)
from edge_runtime.severity import SeverityBins
from edge_runtime.versions import version_problem

# 2: map statistics per band of distance to the image edge. Version 1 bundles (one number each) still load.
# 3: model_version must be an orderable (semantic) version, and `target` may bind the bundle to a product and
#    device class. A new number, because a device that knows only 1 and 2 would refuse the new field with a
#    misleading "malformed manifest"; it now says "unknown schema". Version 1 and 2 bundles still load: their
#    model_version stays free text and they carry no target, so only devices not bound to a product take them.
# 4: inspection.score_top_fraction (the image score is the mean of the map's highest pixels). Bundles of versions
#    1-3 scored by the maximum and still do: the key is 0 for them when absent.
# 5: memory.coarse_folder, a second memory of the coarse stages searched on its own grid. A device that knows only
#    1-4 would score such a bundle without it and fail its reference images; it now says "unknown schema".
# 6: a two-scale memory may carry each scale's typical distance (`typical_distance` in its memory.json), the unit the
#    scales are joined in. A device that knows only 1-5 would join them unscaled and fail the reference images; it
#    now says "unknown schema".
# 7: inspection.fusion; "capped" lets the healing maps add at most the KNN map's evidence. A device that knows only
#    1-6 would sum the maps against a threshold set on capped ones; it now says "unknown schema". Bundles of versions
#    1-6 summed their maps and still do: the key is "sum" for them when absent.
# 8: the fine memory may carry its ordinary distance (`ordinary_distance` in its memory.json), below which its patch
#    map is searched on a checkerboard first (KnnMemory.sparse_distances). A device that knows only 1-7 would search
#    every patch and could miss the reference scores; it now says "unknown schema".
SCHEMA_VERSION = 8
SUPPORTED_SCHEMA_VERSIONS = frozenset({1, 2, 3, 4, 5, 6, 7, 8})
FIRST_BOUND_SCHEMA = 3
FIRST_TOP_FRACTION_SCHEMA = 4
FIRST_COARSE_MEMORY_SCHEMA = 5
FIRST_SCALE_UNITS_SCHEMA = 6
FIRST_CAPPED_FUSION_SCHEMA = 7
FIRST_SPARSE_SEARCH_SCHEMA = 8

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
RESERVED_NAMES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})

MEMORY_REQUIRED_FILES = ("memory.json", "memory.hnsw")
MEMORY_OPTIONAL_FILES = ("projection.npy",)


def path_problem(path: str) -> str | None:
    """Why `path` is not a safe, normalised, relative POSIX path inside a bundle; None when it is one."""
    if not path:
        return "is empty"
    if "\x00" in path:
        return "contains a NUL character"
    if "\\" in path:
        return "contains a backslash"
    # A colon names a drive or an alternate data stream on Windows devices.
    if ":" in path:
        return "contains ':'"
    if path.startswith("/"):
        return "is an absolute path"
    parts = path.split("/")
    if ".." in parts:
        return "contains a '..' component"
    if any(part in ("", ".") for part in parts):
        return "is not normalised (it has an empty or '.' component)"
    return None


def _relative_path(value: str) -> str:
    problem = path_problem(value)
    if problem is not None:
        raise ValueError(f"path {value!r} {problem}")
    return value


RelativePath = Annotated[str, AfterValidator(_relative_path)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
NetworkName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]
TargetName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class _Spec(StrictModel):
    # NaN or infinity in a threshold would silently turn every verdict into "good".
    model_config = ConfigDict(allow_inf_nan=False)


class InputSpec(_Spec):
    """The model input size and colour mode."""

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    color: ColorMode


class PreprocessingSpec(_Spec):
    """How a frame becomes model input: area resize when shrinking, bilinear when growing, then x/127.5-1."""

    resize: Literal["area_down_linear_up"] = "area_down_linear_up"
    scale: Literal["x/127.5-1"] = "x/127.5-1"


class ScheduleSpec(_Spec):
    """The linear diffusion noise schedule the denoiser was trained with."""

    num_timesteps: int = Field(ge=1)
    beta_start: float = Field(gt=0.0, lt=1.0)
    beta_end: float = Field(gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> ScheduleSpec:
        if self.beta_start > self.beta_end:
            raise ValueError(f"beta_start {self.beta_start} is larger than beta_end {self.beta_end}")
        return self

    @classmethod
    def from_schedule(cls, schedule: DiffusionSchedule) -> ScheduleSpec:
        return cls(num_timesteps=schedule.num_timesteps, beta_start=schedule.beta_start, beta_end=schedule.beta_end)

    def to_schedule(self) -> DiffusionSchedule:
        return DiffusionSchedule(self.num_timesteps, self.beta_start, self.beta_end)


class NetworkSpec(_Spec):
    """One OpenVINO IR network: its two files and the precision they hold."""

    xml: RelativePath
    weights: RelativePath
    precision: Literal["int8", "fp16", "fp32"]
    auroc_drop: float | None = Field(
        None,
        description="measured image-AUROC drop of this precision vs fp32; none for fp32 or a network no frame runs",
    )


class MemorySpec(_Spec):
    """The folder holding the KNN memory bank: memory.json, memory.hnsw and optionally projection.npy; and the
    coarse memory's folder (the same files) when it has one (schema 5)."""

    folder: RelativePath
    coarse_folder: RelativePath | None = None

    def file(self, name: str) -> str:
        """Bundle path of one file of the memory folder."""
        return f"{self.folder}/{name}"


class ReferenceImage(_Spec):
    """A known image and the score the device must reproduce for it, as a self-test after installation."""

    file: RelativePath
    expected_score: float
    tolerance: float = Field(ge=0.0)


class SeverityBinsSpec(_Spec):
    low: float
    high: float
    count: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> SeverityBinsSpec:
        if self.low > self.high:
            raise ValueError(f"low {self.low} is larger than high {self.high}")
        return self


class MapStatsSpec(_Spec):
    """Per band of distance to the image edge (schema 2); schema 1 gave one number, i.e. one band."""

    location: list[float] = Field(min_length=1)
    scale: list[Annotated[float, Field(gt=0.0)]] = Field(min_length=1)
    band_width: int = Field(0, ge=0, description="pixels per band; 0 = a single global band")

    @field_validator("location", "scale", mode="before")
    @classmethod
    def _one_band_from_a_number(cls, value: Any) -> Any:
        return [value] if isinstance(value, int | float) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _as_many_scales_as_locations(self) -> MapStatsSpec:
        if len(self.location) != len(self.scale):
            raise ValueError(f"{len(self.location)} locations but {len(self.scale)} scales")
        return self


class CalibrationSpec(_Spec):
    """Mirror of `edge_runtime.calibration.Calibration`, validated."""

    bins: SeverityBinsSpec
    map_stats: dict[str, MapStatsSpec]
    image_threshold: float
    pixel_threshold: float
    map_weights: dict[str, Annotated[float, Field(ge=0.0)]] | None = Field(
        None, description="fusion weights chosen at calibration (schema 2); null = inspection.map_weights"
    )

    @field_validator("map_stats", "map_weights")
    @classmethod
    def _known_kinds(cls, value: dict | None) -> dict | None:
        if value is None:
            return value
        unknown = sorted(set(value) - set(MAP_KINDS))
        if unknown:
            raise ValueError(f"unknown map kinds {unknown}; known kinds are {list(MAP_KINDS)}")
        return value

    @classmethod
    def from_calibration(cls, calibration: Calibration) -> CalibrationSpec:
        return cls.model_validate(calibration.to_dict())

    def to_calibration(self) -> Calibration:
        return Calibration(
            bins=SeverityBins(low=self.bins.low, high=self.bins.high, count=self.bins.count),
            map_stats={
                kind: MapStats(location=tuple(s.location), scale=tuple(s.scale), band_width=s.band_width)
                for kind, s in self.map_stats.items()
            },
            image_threshold=self.image_threshold,
            pixel_threshold=self.pixel_threshold,
            map_weights=None if self.map_weights is None else dict(self.map_weights),
        )


class TargetSpec(_Spec):
    """What the bundle was made for (schema 3); a device configured for another product or class refuses it."""

    product: TargetName
    device_class: TargetName


class Manifest(_Spec):
    """Everything a device needs to know about a bundle; `files` is empty only while the host drafts it."""

    schema_version: int = SCHEMA_VERSION
    model_version: str
    created_at: datetime
    input: InputSpec
    preprocessing: PreprocessingSpec = PreprocessingSpec()
    schedule: ScheduleSpec
    inspection: InspectionSettings
    calibration: CalibrationSpec
    networks: dict[NetworkName, NetworkSpec] = Field(min_length=1)
    memory: MemorySpec
    references: list[ReferenceImage]
    target: TargetSpec | None = Field(None, description="product and device class (schema 3); null = unbound")
    files: dict[RelativePath, Sha256Hex] = Field(
        default_factory=dict, description="bundle path -> lowercase hex sha256, for every file but manifest.*"
    )

    @model_validator(mode="before")
    @classmethod
    def _older_inspection_defaults(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or not isinstance(raw.get("inspection"), dict):
            return raw
        version = raw.get("schema_version", SCHEMA_VERSION)
        if not isinstance(version, int):
            return raw
        inspection = raw["inspection"]
        if version < FIRST_TOP_FRACTION_SCHEMA:
            inspection = scored_by_maximum_if_older(inspection)
        if version < FIRST_CAPPED_FUSION_SCHEMA:
            inspection = fused_by_sum_if_older(inspection)
        return raw | {"inspection": inspection}

    @field_validator("schema_version")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value not in SUPPORTED_SCHEMA_VERSIONS:
            raise ValueError(f"{value} is not one of the supported versions {sorted(SUPPORTED_SCHEMA_VERSIONS)}")
        return value

    @field_validator("model_version")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip() or value != value.strip():
            raise ValueError("must be non-empty, without surrounding whitespace")
        return value

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("has no timezone; it must be UTC")
        if value.utcoffset() != timedelta(0):
            raise ValueError(f"has offset {value.utcoffset()}; it must be UTC")
        return value

    @field_validator("files")
    @classmethod
    def _consistent_files(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = sorted(RESERVED_NAMES & set(value))
        if reserved:
            raise ValueError(f"{reserved} are the bundle's own manifest files and cannot be listed")
        for path in value:
            parts = path.split("/")
            for depth in range(1, len(parts)):
                parent = "/".join(parts[:depth])
                if parent in value:
                    raise ValueError(f"{parent!r} is listed as a file but is also the folder of {path!r}")
        return value

    @model_validator(mode="after")
    def _versioned(self) -> Manifest:
        if self.schema_version >= FIRST_BOUND_SCHEMA:
            problem = version_problem(self.model_version)
            if problem is not None:
                raise ValueError(f"model_version: {problem} (schema {self.schema_version})")
        elif self.target is not None:
            raise ValueError(f"target needs schema_version {FIRST_BOUND_SCHEMA}, not {self.schema_version}")
        if self.memory.coarse_folder is not None and self.schema_version < FIRST_COARSE_MEMORY_SCHEMA:
            raise ValueError(
                f"memory.coarse_folder needs schema_version {FIRST_COARSE_MEMORY_SCHEMA}, not {self.schema_version}"
            )
        return self

    @model_validator(mode="after")
    def _coherent(self) -> Manifest:
        if self.calibration.bins.count != self.inspection.severity_bins:
            raise ValueError(
                f"calibration.bins.count {self.calibration.bins.count} differs from "
                f"inspection.severity_bins {self.inspection.severity_bins}"
            )
        if self.files:
            unlisted = [
                f"{label} {path!r}" for label, path in self.referenced_paths().items() if path not in self.files
            ]
            if unlisted:
                raise ValueError(f"referenced but not listed in files: {', '.join(unlisted)}")
        return self

    def referenced_paths(self) -> dict[str, str]:
        """Every bundle path the manifest points at, keyed by where it is referenced."""
        paths: dict[str, str] = {}
        for name, network in self.networks.items():
            paths[f"networks.{name}.xml"] = network.xml
            paths[f"networks.{name}.weights"] = network.weights
        for file_name in MEMORY_REQUIRED_FILES:
            paths[f"memory.folder/{file_name}"] = self.memory.file(file_name)
            if self.memory.coarse_folder is not None:
                paths[f"memory.coarse_folder/{file_name}"] = f"{self.memory.coarse_folder}/{file_name}"
        for index, reference in enumerate(self.references):
            paths[f"references.{index}.file"] = reference.file
        return paths

    def to_bytes(self) -> bytes:
        """The exact bytes stored as manifest.json and signed."""
        return (self.model_dump_json(indent=2) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Check the schema version first, then validate; every problem becomes a `BundleError`."""
        try:
            raw = json.loads(data)
        except ValueError as error:
            raise BundleError("malformed_manifest", f"{MANIFEST_NAME} is not valid UTF-8 JSON: {error}") from error
        if not isinstance(raw, dict):
            raise BundleError("malformed_manifest", f"{MANIFEST_NAME} holds a {type(raw).__name__}, not an object")
        _check_schema_version(raw)
        try:
            manifest = cls.model_validate_json(data)
        except ValidationError as error:
            problems = "; ".join(describe_problems(error, top_level="manifest"))
            raise BundleError("malformed_manifest", f"{MANIFEST_NAME}: {problems}") from error
        if not manifest.files:
            raise BundleError("malformed_manifest", f"{MANIFEST_NAME}: files is empty; a bundle lists every file")
        return manifest


def _check_schema_version(raw: dict[str, Any]) -> None:
    if "schema_version" not in raw:
        raise BundleError("malformed_manifest", f"{MANIFEST_NAME}: schema_version: Field required")
    version = raw["schema_version"]
    # bool is an int in Python, but `true` is not a schema version.
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(
            "unknown_schema",
            f"{MANIFEST_NAME} has schema_version {version!r}; "
            f"supported versions are {sorted(SUPPORTED_SCHEMA_VERSIONS)}",
        )
