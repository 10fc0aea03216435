"""Start and stop a real ``dagster dev`` for tests: free loopback port, private instance, clean exit.

``dagster dev`` runs in its own session (``start_new_session=True``), so every process it starts
(webserver, daemon, code servers, run workers) shares that session id. Stopping sends SIGTERM,
which ``dagster dev`` handles by shutting its children down; anything still alive after the
grace period is killed, and the processes found then are reported in ``DevServer.leftover`` so
a test can assert that nothing was left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cross_sell_tests.conftest import PROJECT_ROOT, dagster_cli

LOCATION = "cross_sell"
STARTUP_TIMEOUT = 180.0
SHUTDOWN_GRACE = 30.0

WORKSPACE_QUERY = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } } } }
    ... on PythonError { message } } }
"""
RUN_QUERY = """
query($id: ID!) { runOrError(runId: $id) { __typename
    ... on Run { status stepStats { stepKey status } }
    ... on PythonError { message } } }
"""
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

# A shell's background job inherits SIGINT as ignored, and ``dagster dev`` maps SIGTERM onto its
# SIGINT handling, so it would then ignore both. Reset them to the defaults, then exec.
_RESET_SIGNALS_THEN_EXEC = (
    "import os, signal, sys; "
    "signal.signal(signal.SIGINT, signal.SIG_DFL); signal.signal(signal.SIGTERM, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_processes(session_id: int) -> list[int]:
    """PIDs of live (non-zombie) processes in a session, read from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        # Field 2 (comm) is in parentheses and may hold spaces; fields after it are plain.
        fields = text[text.rindex(")") + 2 :].split()
        state, sid = fields[0], int(fields[3])
        if sid == session_id and state != "Z":
            pids.append(int(stat.parent.name))
    return sorted(pids)


def _descendants(root: int) -> set[int]:
    """Every live descendant of ``root`` (also those that left the session)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(text[text.rindex(")") + 2 :].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@dataclass
class DevServer:
    """A running ``dagster dev`` and what is needed to talk to it."""

    process: subprocess.Popen
    port: int
    log_path: Path
    started_in: float = 0.0
    stopped_in: float = 0.0
    exit_code: int | None = None
    leftover: list[int] = field(default_factory=list)
    seen_children: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 60.0) -> dict:
        """POST a GraphQL query; returns ``data`` and fails loudly on GraphQL errors."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
        if payload.get("errors"):
            raise AssertionError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"dagster dev exited with {self.process.returncode}:\n{self.log_tail()}")

    def wait_until_loaded(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait for the webserver to answer and the code location to be LOADED (fail on load errors)."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                entries = self.graphql(WORKSPACE_QUERY, timeout=10)["workspaceOrError"].get("locationEntries", [])
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                entries = []
            loaded = [e for e in entries if e["loadStatus"] == "LOADED"]
            if loaded and len(loaded) == len(entries):
                errors = [e for e in loaded if e["locationOrLoadError"]["__typename"] != "RepositoryLocation"]
                if errors:
                    raise AssertionError(f"code location failed to load: {errors}")
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"dagster dev not ready after {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.5)

    def wait_for_run(self, run_id: str, timeout: float = 300.0) -> dict:
        """Poll a run until it finishes; returns the run (status, step stats)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.graphql(RUN_QUERY, {"id": run_id})["runOrError"]
            if run["__typename"] != "Run":
                raise AssertionError(f"run {run_id}: {run}")
            if run["status"] in FINISHED:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still {run['status']} after {timeout:.0f}s:\n{self.log_tail()}")
            self._check_alive()
            self.seen_children |= _descendants(self.process.pid)
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM, wait, then kill whatever is left; records exit code, timing and leftovers."""
        started = time.monotonic()
        session = self.process.pid  # start_new_session: the session id is the leader's pid
        self.seen_children |= _descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=SHUTDOWN_GRACE)
            except subprocess.TimeoutExpired:
                pass
        # Children may need a moment after the parent to finish their own shutdown.
        deadline = time.monotonic() + 10
        while (alive := self._alive(session)) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.leftover = alive
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process.poll() is None:
            self.process.kill()
        self.exit_code = self.process.wait(timeout=10)
        self.stopped_in = time.monotonic() - started

    def _alive(self, session: int) -> list[int]:
        known = {pid for pid in self.seen_children if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)}
        return sorted(set(session_processes(session)) | known)


def _is_zombie(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return text[text.rindex(")") + 2 :].split()[0] == "Z"


@contextmanager
def dagster_dev(
    env: dict[str, str], log_path: Path, args: Sequence[str] = (), cwd: Path = PROJECT_ROOT
) -> Iterator[DevServer]:
    """``dagster dev`` on a free loopback port, loaded and ready; always stopped on exit.

    ``env`` should hold a temporary DAGSTER_HOME and the CROSS_SELL_* paths (see
    ``conftest.cli_env``). After the block, check ``server.leftover == []`` and ``server.exit_code``.
    """
    port = free_port()
    started = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _RESET_SIGNALS_THEN_EXEC, *dagster_cli()[1:], "dev",
             "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = DevServer(process=process, port=port, log_path=log_path)
    try:
        server.wait_until_loaded()
        server.started_in = time.monotonic() - started
        yield server
    finally:
        server.stop()
