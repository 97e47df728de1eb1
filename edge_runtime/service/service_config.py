"""Typed, strict runtime config of the streaming service (configs/runtime/*.yaml)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from edge_runtime.config_errors import ConfigError, describe_problems
from edge_runtime.service.plc_config import OpcUaConfig, SparkplugConfig
from edge_runtime.settings import StrictModel

# MQTT wildcards and the level separator would change which topics a name stands for.
_TOPIC_UNSAFE = re.compile(r"[+#\x00]")


_TARGET_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # as a bundle's manifest target names them


class BundleConfig(StrictModel):
    slot: Path | None = Field(None, description="an installed bundle folder")
    archive: Path | None = Field(None, description="a signed bundle archive, installed into state_dir/slots")
    trusted_keys: list[Path] = Field(default_factory=list, description="public keys that may sign the archive")
    product: str | None = Field(
        None, pattern=_TARGET_NAME, description="only bundles made for this product run here; unset: any bundle"
    )
    device_class: str | None = Field(None, pattern=_TARGET_NAME, description="and for this device class")

    @model_validator(mode="after")
    def _one_source(self) -> BundleConfig:
        if (self.slot is None) == (self.archive is None):
            raise ValueError("give exactly one of slot (an installed folder) or archive (a signed bundle)")
        if self.archive is not None and not self.trusted_keys:
            raise ValueError("archive needs at least one trusted_keys entry to verify it against")
        if (self.product is None) != (self.device_class is None):
            raise ValueError("product and device_class go together (the bundle's target names both)")
        return self


class CameraConfig(StrictModel):
    pipeline: str = Field(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=10/1",
        min_length=1,
        description="GStreamer source description; the service appends convert, caps and its appsink",
    )
    frame_timeout_s: float = Field(5.0, gt=0.0, description="no frame for this long means the camera is lost")
    reconnect_min_s: float = Field(0.5, gt=0.0)
    reconnect_max_s: float = Field(30.0, gt=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> CameraConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        if "appsink" in self.pipeline:
            raise ValueError("pipeline must end in a source or converter; the service adds the appsink itself")
        return self


class ModeConfig(StrictModel):
    kind: Literal["continuous", "triggered"] = "continuous"
    max_fps: float = Field(0.0, ge=0.0, description="continuous mode: inspect at most this many frames/s (0: all)")
    trigger_queue: int = Field(100, ge=1, description="triggered mode: pending triggers before new ones are refused")


class TlsConfig(StrictModel):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (client certificate and its key)")
        return self


class MqttConfig(StrictModel):
    host: str = Field("localhost", min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    prefix: str = Field("d3ad", min_length=1)
    device_id: str = Field("inspector-1", min_length=1, max_length=64)
    tls: TlsConfig | None = None
    username: str | None = None
    password_file: Path | None = Field(None, description="file holding the password (first line)")
    password_credential: str | None = Field(None, description="systemd credential name ($CREDENTIALS_DIRECTORY)")
    keepalive: int = Field(30, ge=5, le=3600)
    # 2: the broker takes each result once even when it is sent again after a lost connection (QoS 1 repeats
    # what was in flight). 1 stays for brokers or consumers that cannot do 2; consumers then de-duplicate.
    qos: Literal[1, 2] = Field(2, description="QoS of results: 2 exactly once (the default), 1 at least once")
    reconnect_min_s: int = Field(1, ge=1)
    reconnect_max_s: int = Field(30, ge=1)
    # 1 for QoS 2: a kill -9 leaves each unfinished QoS 2 exchange in the broker's session, where it takes up the
    # broker's receive maximum (mosquitto: 20) until the packet id is used again; with more in flight a
    # restarted device can find its quota spent.
    inflight: int = Field(1, ge=1, le=1000, description="results awaiting the broker's ack at once (QoS 2: only 1)")
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto", description="auto: MQTT 5 (refused results are detected), 3.1.1 when the broker lacks 5"
    )
    session_expiry_s: int = Field(
        3600, ge=0, description="the broker keeps commands sent while the device is offline this long; 0: none"
    )

    # Declared only to refuse it with a clear reason (and never echo it) while other keys are still checked.
    password: None = Field(None, exclude=True, description="never allowed: use password_file or password_credential")

    @field_validator("password", mode="before")
    @classmethod
    def _no_inline_password(cls, value: Any) -> None:
        if value is not None:
            raise ValueError("must not be written in the config; use password_file or password_credential")
        return None

    @field_validator("prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, value: str) -> str:
        if _TOPIC_UNSAFE.search(value) or value.startswith("/") or value.endswith("/"):
            raise ValueError("must not hold + # or NUL, nor start or end with /")
        return value

    @field_validator("device_id")
    @classmethod
    def _device_is_one_level(cls, value: str) -> str:
        if _TOPIC_UNSAFE.search(value) or "/" in value:
            raise ValueError("must not hold / + # or NUL (it is one topic level)")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> MqttConfig:
        if self.password_file is not None and self.password_credential is not None:
            raise ValueError("give password_file or password_credential, not both")
        if (self.password_file or self.password_credential) and not self.username:
            raise ValueError("a password needs a username")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        if self.qos == 2 and self.inflight != 1:
            raise ValueError("inflight must be 1 with qos 2 (a crash must not leave the broker's quota spent)")
        if self.qos == 2 and self.session_expiry_s == 0:
            # Without a kept session the broker forgets a half-finished exchange and takes the resent result anew.
            raise ValueError("qos 2 needs a kept session (session_expiry_s > 0); use qos 1 with a clean session")
        return self


class HeatmapConfig(StrictModel):
    publish: Literal["all", "defects", "off"] = "defects"
    jpeg_quality: int = Field(85, ge=10, le=100)


class OutboxConfig(StrictModel):
    max_rows: int = Field(100_000, ge=10, description="oldest results are dropped (and counted) beyond this")
    max_age_s: float = Field(
        7 * 24 * 3600.0, gt=0.0, description="results stored longer than this (service running time) are dropped"
    )
    memory_rows: int = Field(1000, ge=1, description="results kept in memory while the disk refuses writes")


class OpenVinoConfig(StrictModel):
    threads: int | None = Field(None, ge=1)
    cache_dir: Path | None = None
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"


class FallbackConfig(StrictModel):
    """A newly installed model whose inspections keep failing on real frames, or that keeps ending the service
    (a crash, a kill, the watchdog), is rolled back to the previous one."""

    enabled: bool = True
    max_failures: int = Field(5, ge=1, le=100_000, description="failed inspections within window_s that roll back")
    window_s: float = Field(60.0, gt=0.0, description="seconds over which failed inspections are counted")
    # Crashes have a window of their own: each costs a restart (RestartSec, loading, warm-up: tens of seconds), so
    # a count made for failed inspections, 5 within 60 s, would never be reached.
    max_crashes: int = Field(
        3, ge=1, le=1000, description="runs ended by a crash, kill or watchdog within crash_window_s that roll back"
    )
    crash_window_s: float = Field(
        600.0, gt=0.0, description="seconds (device clock, across restarts) over which those runs are counted"
    )
    probation_s: float = Field(
        24 * 3600.0, gt=0.0, description="how long after its install a model is watched (device clock)"
    )


class UpdatesConfig(StrictModel):
    """Remote model updates (`cmd/install`, `cmd/rollback`); bundles are verified with bundle.trusted_keys."""

    enabled: bool = True
    max_bundle_bytes: int = Field(2 * 1024**3, ge=1024, description="larger downloads are refused")
    max_unpacked_bytes: int = Field(8 * 1024**3, ge=1024, description="bundles that unpack to more are refused")
    download_timeout_s: float = Field(900.0, gt=0.0, description="for the whole download, retries included")
    download_attempts: int = Field(5, ge=1, le=100, description="tries; each resumes where the last one broke off")
    ca_file: Path | None = Field(None, description="CA bundle for https downloads (default: the system's)")
    allowed_hosts: list[str] = Field(
        ["127.0.0.1", "localhost"], description="http(s) hosts bundles may be fetched from; list the model server"
    )
    local_folder: Path | None = Field(None, description="local bundle paths only below this folder; unset: none")
    keep_free_bytes: int = Field(
        256 * 1024**2, ge=0, description="free space an update must leave on the state disk (for the outbox)"
    )
    fallback: FallbackConfig = FallbackConfig()
    signed_commands: bool = Field(
        False, description="cmd/install and cmd/rollback must be signed by a site key (python -m export push --key)"
    )
    command_keys: list[Path] = Field(
        [], description="public keys that may sign commands; empty: the bundle.trusted_keys that sign bundles"
    )
    command_max_age_s: float = Field(
        600.0, gt=0.0, le=86400.0, description="signed commands issued longer ago (or ahead) by the device clock"
    )

    def fallback_in_effect(self) -> FallbackConfig:
        """`fallback` as the device applies it: off when updates are off (no new model comes, none is watched)."""
        return self.fallback.model_copy(update={"enabled": self.fallback.enabled and self.enabled})


class OperatorViewConfig(StrictModel):
    """Local web page with the live overlay, plus /metrics (as `metrics` serves it) and /healthz; no
    authentication, so localhost only unless a reverse proxy guards it."""

    enabled: bool = False
    host: str = Field("127.0.0.1", min_length=1, description="address to listen on; 0.0.0.0 opens it to the LAN")
    port: int = Field(8080, ge=0, le=65535, description="TCP port; 0 picks any free port")
    recent_parts: int = Field(20, ge=1, le=500, description="verdicts listed on the page")
    refresh_s: float = Field(0.5, ge=0.1, le=60.0, description="how often the page asks for new state")
    healthz_stale_s: float = Field(
        10.0, gt=0.0, description="/healthz fails when the frame loop has not turned for this long"
    )
    max_connections: int = Field(
        16, ge=1, le=1024, description="requests served at once (a thread each); more are answered 503"
    )
    request_timeout_s: float = Field(
        10.0, gt=0.0, le=300.0, description="socket timeout of each request: a half-sent one is dropped after it"
    )


class MetricsConfig(StrictModel):
    """Prometheus `/metrics` of the service, served whenever it runs, with or without the operator view. Read-only
    counters and versions, no images; still no authentication, so localhost unless a proxy guards it."""

    enabled: bool = True
    host: str = Field("127.0.0.1", min_length=1, description="address to listen on; 0.0.0.0 opens it to the LAN")
    port: int = Field(9464, ge=0, le=65535, description="TCP port; 0 picks any free port")
    max_connections: int = Field(4, ge=1, le=1024, description="scrapes served at once; more are answered 503")
    request_timeout_s: float = Field(
        10.0, gt=0.0, le=300.0, description="socket timeout of each request: a half-sent one is dropped after it"
    )


class FeedbackConfig(StrictModel):
    """Operator feedback (`cmd/feedback`): parts marked good teach the device's overlay memory. The caps and
    the score guard keep a mistaken or malicious feedback from teaching it that defects are good."""

    enabled: bool = True
    window_s: float = Field(600.0, gt=0.0, description="only parts inspected this recently can be marked")
    recent_parts: int = Field(
        30, ge=1, le=1000, description="parts whose frames are kept in memory for feedback (the newest)"
    )
    max_vectors_per_feedback: int = Field(
        2048, ge=1, description="most patch vectors one feedback adds (the ones the memory knows least first)"
    )
    max_overlay_vectors: int = Field(20_000, ge=1, description="most vectors the overlay holds in all")
    refuse_score_ratio: float = Field(
        2.0, gt=1.0, description="a part scoring above this multiple of the threshold is refused unless forced"
    )
    max_note_chars: int = Field(500, ge=0, le=10_000, description="longest note a feedback may carry")

    @model_validator(mode="after")
    def _caps_ordered(self) -> FeedbackConfig:
        if self.max_vectors_per_feedback > self.max_overlay_vectors:
            raise ValueError("max_vectors_per_feedback must not exceed max_overlay_vectors")
        return self


class KeepPartsConfig(StrictModel):
    """Frames and results kept in state_dir/kept_parts for the next training (`python -m export collect`)."""

    enabled: bool = True
    defects: bool = Field(True, description="keep parts judged defective")
    uncertain_band: float = Field(
        0.1, ge=0.0, lt=1.0, description="keep parts scoring within this fraction of the threshold around it"
    )
    max_parts: int = Field(2000, ge=1, description="oldest kept parts are removed (and counted) beyond this")
    max_bytes: int = Field(512 * 1024**2, ge=1024, description="and beyond this many bytes on disk")
    max_age_s: float = Field(30 * 24 * 3600.0, gt=0.0, description="and when kept longer than this (wall clock)")
    pending: int = Field(16, ge=1, le=1000, description="parts waiting to be written before new ones are dropped")


class ServiceConfig(StrictModel):
    bundle: BundleConfig
    state_dir: Path = Path("state")
    camera: CameraConfig = CameraConfig()
    mode: ModeConfig = ModeConfig()
    mqtt: MqttConfig = MqttConfig()
    heatmaps: HeatmapConfig = HeatmapConfig()
    stats_interval_s: float = Field(10.0, gt=0.0)
    outbox: OutboxConfig = OutboxConfig()
    openvino: OpenVinoConfig = OpenVinoConfig()
    updates: UpdatesConfig = UpdatesConfig()
    operator_view: OperatorViewConfig = OperatorViewConfig()
    metrics: MetricsConfig = MetricsConfig()
    sparkplug: SparkplugConfig = SparkplugConfig()
    opcua: OpcUaConfig = OpcUaConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    keep_parts: KeepPartsConfig = KeepPartsConfig()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


def parse_config(raw: Any, source: str) -> ServiceConfig:
    """Validate a parsed YAML document; every problem is named by its key path in one ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"(top level): expected a mapping of keys, got {type(raw).__name__}"])
    try:
        return ServiceConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(source, describe_problems(error)) from error


def load_config(path: Path) -> ServiceConfig:
    """Read and validate a runtime config file, then check that the files it names exist."""
    config = read_config(path)
    problems = file_problems(config)
    if problems:
        raise ConfigError(str(path), problems)
    return config


def read_config(path: Path) -> ServiceConfig:
    """Read and validate a runtime config file's schema; the files it names are not looked for."""
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as error:
        raise ConfigError(source, ["(file): does not exist"]) from error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(source, [f"(file): cannot be read: {error}"]) from error
    except yaml.YAMLError as error:
        raise ConfigError(source, [f"(file): not valid YAML: {error}".replace("\n", " ")]) from error
    return parse_config(raw, source)


def file_problems(config: ServiceConfig) -> list[str]:
    """Files and folders the config names that are missing; checked before anything starts."""
    wanted: list[tuple[str, Path | None, bool]] = [
        ("bundle.slot", config.bundle.slot, True),
        ("bundle.archive", config.bundle.archive, False),
        ("mqtt.password_file", config.mqtt.password_file, False),
        ("updates.ca_file", config.updates.ca_file, False),
    ]
    wanted += [(f"bundle.trusted_keys.{i}", key, False) for i, key in enumerate(config.bundle.trusted_keys)]
    wanted += [(f"updates.command_keys.{i}", key, False) for i, key in enumerate(config.updates.command_keys)]
    if config.opcua.enabled:
        wanted += [(key, path, False) for key, path in config.opcua.files()]
    if config.mqtt.tls is not None:
        tls = config.mqtt.tls
        wanted += [("mqtt.tls.ca_file", tls.ca_file, False), ("mqtt.tls.cert_file", tls.cert_file, False)]
        wanted += [("mqtt.tls.key_file", tls.key_file, False)]
    problems = []
    for key, path, is_folder in wanted:
        if path is None:
            continue
        if is_folder and not path.is_dir():
            problems.append(f"{key}: folder {path} does not exist")
        elif not is_folder and not path.is_file():
            problems.append(f"{key}: file {path} does not exist")
    return problems


def metrics_summary(config: ServiceConfig) -> str:
    metrics = config.metrics
    if not metrics.enabled:
        return "off"
    host = f"[{metrics.host}]" if ":" in metrics.host else metrics.host
    return f"http://{host}:{metrics.port if metrics.port else '<any free port>'}/metrics"


def summary(config: ServiceConfig) -> str:
    """A few lines saying what the service will do with this config."""
    mode = config.mode.kind
    if mode == "continuous":
        mode += f", {'every frame' if not config.mode.max_fps else f'at most {config.mode.max_fps:g} fps'}"
    bundle = config.bundle.slot or config.bundle.archive
    mqtt = config.mqtt
    return "\n".join(
        [
            f"bundle:   {bundle}",
            f"camera:   {config.camera.pipeline}",
            f"mode:     {mode}",
            f"mqtt:     {mqtt.host}:{mqtt.port}{' (TLS)' if mqtt.tls else ''}, topics {mqtt.prefix}/{mqtt.device_id}/",
            f"heatmaps: {config.heatmaps.publish}",
            f"metrics:  {metrics_summary(config)}",
            f"state:    {config.state_dir}",
        ]
    )
