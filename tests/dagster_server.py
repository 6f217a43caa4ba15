"""A real `dagster dev` (webserver and daemon) for the end-to-end tests.

It runs in a process group of its own, like `set -m` in a shell script, so that one signal
reaches the webserver, the daemon, the code server and any run worker, and it is stopped by
that group's id, never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import dagster as dg

T = TypeVar("T")
STARTUP_SECONDS = 180  # far above an idle start: other workers share the cores
STOP_SECONDS = 30


def free_port() -> int:
    """A port nothing listens on now (the kernel's choice; the server takes it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group `process` leads (started with `start_new_session`), then
    SIGKILL to whatever is left after STOP_SECONDS."""
    group = process.pid  # the session leader: its pid is the group's id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    # Servers, daemons and workers shut their children down on their own; wait for all of them,
    # not only the leader, then kill whatever is left.
    deadline = time.monotonic() + STOP_SECONDS
    while _group_alive(group) and time.monotonic() < deadline:
        time.sleep(0.5)
    if _group_alive(group):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    process.wait(timeout=STOP_SECONDS)


def wait_for(what: str, check: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
    """Poll `check` until it returns something truthy (a run, a non-empty list); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# `dagster dev` maps SIGTERM to its SIGINT handler; a shell without job control starts
# background commands with SIGINT ignored, and an ignored signal stays ignored across exec, so
# the server would then ignore both. This launcher restores them, whoever started pytest.
DEFAULT_SIGNALS_THEN_EXEC = (
    "import os, signal, sys\n"
    "for number in (signal.SIGINT, signal.SIGTERM):\n"
    "    signal.signal(number, signal.SIG_DFL)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


@dataclass
class DagsterServer:
    """`dagster dev -w workspace.yaml` on a loopback port, with its own DAGSTER_HOME."""

    project: Path
    home: Path
    environment: dict[str, str]
    log: Path
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = self.port or free_port()
        command = [sys.executable, "-c", DEFAULT_SIGNALS_THEN_EXEC,
                   str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml",
                   "--host", "127.0.0.1", "--port", str(self.port)]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.project,
                env=self.environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group of its own: `set -m`
            )
        wait_for(f"{self.url}/server_info", self._answers, STARTUP_SECONDS)

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {self.process.returncode}")
        try:
            with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        stop_group(self.process)
        self.process = None

    def tail(self, characters: int = 6000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-characters:]

    def instance(self) -> dg.DagsterInstance:
        """The server's instance, read from this process (SQLite storage under `home`)."""
        return dg.DagsterInstance.from_config(str(self.home))

    def command(self, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        """A project command (`dagster`, `lakehouse`) against this server's instance and lake."""
        return subprocess.run(
            [str(Path(sys.executable).parent / args[0]), *args[1:]],
            cwd=self.project, env=self.environment, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip


def _group_alive(group: int) -> bool:
    """Whether a process of the group still runs (zombies waiting for their reaper do not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The fields after the command name, which may itself hold spaces and parentheses.
            state, _parent, process_group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        if int(process_group) == group and state != "Z":
            return True
    return False
