"""A production line on one machine: a local mosquitto on a free port and the edge service as a child process,
both stopped again however the caller leaves."""

from __future__ import annotations

import contextlib
import getpass
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from edge_runtime.local_ports import free_port

SERVICE_STOP_S = 30.0


class LocalLineError(RuntimeError):
    """The broker or the service could not be started; the message says why and where the log is."""


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).is_file()), None
    )
    if found is None:
        raise LocalLineError("mosquitto not found: install it (`make setup` does, or `apt-get install mosquitto`)")
    return found


class LocalBroker:
    """mosquitto on a free loopback port with its own config in `folder`; stopped on leaving the context.

    `extra_config` lines are added to its config (TLS, an ACL, password files...); without `allow_anonymous`,
    clients must authenticate. start() after stop() comes back on the same port, as after a broker outage."""

    def __init__(
        self,
        folder: Path,
        persistent: bool = False,
        extra_config: Sequence[str] = (),
        allow_anonymous: bool = True,
    ) -> None:
        self.folder = folder
        self.persistent = persistent
        self.extra_config = tuple(extra_config)
        self.allow_anonymous = allow_anonymous
        self.port = 0
        self.config = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        self.process: subprocess.Popen | None = None
        self._last_port = 0  # the port of the last run, kept across stop() for start() again

    @property
    def persistence_folder(self) -> Path:
        return self.folder / "persistence"

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def start(self) -> None:
        """Start mosquitto: on a free port the first time, on the same port again after stop()."""
        if self._last_port:
            self.restart()
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # another program may take the free port before mosquitto binds it
            if self._start_on(free_port()):
                return
        raise LocalLineError(f"mosquitto did not start; its log {self.log}:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop mosquitto (SIGTERM: a persistent broker saves its sessions and queued messages first)."""
        self.__exit__()

    def restart(self) -> None:
        """Start mosquitto again on the same port with the same persistence, as after a broker outage."""
        if self.process is not None:
            raise LocalLineError("mosquitto is still running; stop it before restarting it")
        if not self._last_port:
            raise LocalLineError("mosquitto was never started, so it has no port to restart on")
        port, self.port = self._last_port, 0
        # The port was free a moment ago; a client's connection attempts do not hold it, so retry briefly.
        deadline = time.monotonic() + 30
        while not self._start_on(port):
            if time.monotonic() > deadline:
                raise LocalLineError(f"mosquitto did not restart on port {port}; its log {self.log}")
            time.sleep(0.5)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _config_lines(self, port: int) -> list[str]:
        # `user`: started as root, mosquitto would switch to the `mosquitto` user, which cannot read this folder.
        lines = [f"listener {port} 127.0.0.1", f"allow_anonymous {str(self.allow_anonymous).lower()}"]
        lines.append(f"user {getpass.getuser()}")
        if not self.persistent:
            return [*lines, "persistence false", *self.extra_config]
        self.persistence_folder.mkdir(parents=True, exist_ok=True)
        # Sessions (subscriptions, queued QoS 1 messages) survive a restart: saved on SIGTERM, read at start.
        persistence = ["persistence true", f"persistence_location {self.persistence_folder}/"]
        return [*lines, *persistence, *self.extra_config]

    def _start_on(self, port: int) -> bool:
        self.config.write_text("\n".join(self._config_lines(port)) + "\n")
        with self.log.open("a") as log:
            self.process = subprocess.Popen([mosquitto_binary(), "-c", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                self.port = self._last_port = port
                return True
            time.sleep(0.05)
        self.__exit__()
        return False

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            stop_process(self.process, 10)
            self.process = None


def stop_process(process: subprocess.Popen, wait_s: float) -> int | None:
    """SIGTERM, then SIGKILL if it has not ended within wait_s; returns its exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


class ServiceProcess:
    """`python -m edge_runtime run --config ...` as a child process, its output in a log file."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.command = [sys.executable, "-m", "edge_runtime", "run", "--config", str(config_path)]
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def start(self) -> None:
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        if self.process is None:
            return None
        code = stop_process(self.process, SERVICE_STOP_S)
        self.process = None
        return code

    def peak_rss_mb(self) -> float | None:
        """The service's peak resident set so far (VmHWM, Linux); None where /proc does not say."""
        if self.process is None:
            return None
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
        return None

    def kill(self) -> int | None:
        """SIGKILL: the process ends at once, with no chance to flush or clean up (a crash, a power cut)."""
        if self.process is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        code = self.process.wait(timeout=30)
        self.process = None
        return code

    def __exit__(self, *_: object) -> None:
        self.stop()
