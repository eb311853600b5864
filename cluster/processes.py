"""The processes a launcher starts and owns, on Linux's /proc: who a recorded pid is (start
time and command line, so a reused pid is left alone), whether its process group is alive,
and stopping a group (SIGTERM, then SIGKILL after a timeout). Also the small helpers a
launcher needs around them: a free loopback port, a private folder, a log's last error.
`cluster.local` (the stack) uses these; they know nothing of Ray or MLflow."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

from plasticity.errors import ConfigError
from plasticity.redact import redact


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_dir(path: Path) -> Path:
    """`path` as a folder only its owner can enter (0700), created if missing."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise ConfigError(f"{path} belongs to another user: remove it or pick another --state-dir")
    path.chmod(0o700)
    return path


def last_error(log: Path) -> str:
    """The last line of a log that names an error (else its last line), and the log."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"error|exception", ln, re.I)]
    return f"{redact((errors or lines or ['no output'])[-1])[:300]} (log: {log})"


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot; /proc/PID/stat field 22): with the pid,
    it names one process for the machine's uptime, however often pids are reused."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def redacted_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [redact(arg) for arg in raw.decode(errors="replace").split("\0") if arg] or None


def pid_exists(pid: int) -> bool:
    return _stat(pid) is not None


def owned(entry: dict) -> bool:
    """True while the process group recorded in `entry` is still the one we started.

    The leader alive (or a zombie): same start time and, once recorded after its exec, the
    same command line. The leader gone: its group's members (processes whose group id is
    its pid) are ours: Linux does not hand out a pid that is still some group's id, so a
    new process with that pid, and its group, cannot exist while they do; each started
    after our leader and in its session."""
    pid, recorded = entry["pid"], entry.get("start_time")
    if recorded is None:  # written by an older launcher: nothing to check against
        return False
    fields = _stat(pid)
    if fields is not None:
        if int(fields[19]) != recorded:
            return False
        return fields[0] == "Z" or redacted_cmdline(pid) == entry.get("cmdline")
    members = [f for f in map(_stat, _group_pids(pid)) if f is not None]
    return bool(members) and all(int(f[19]) >= recorded and int(f[3]) == pid for f in members)


def alive(entry: dict) -> bool:
    """Our recorded process group, with a live (not zombie) process in it."""
    return owned(entry) and _group_members(entry["pid"]) > 0


def alive_pid(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _group_pids(pgid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(int(stat.parent.name))
        if fields is not None and int(fields[2]) == pgid:
            out.append(int(stat.parent.name))
    return out


def _group_members(pgid: int) -> int:
    """Live (not zombie) processes in process group `pgid`."""
    return sum(1 for pid in _group_pids(pgid) if alive_pid(pid))


def stop_group(pgid: int, sig: int, timeout: float, leader_only: bool = False, owner=lambda: True) -> bool:
    """Signal a process group (or only its leader) and wait until no live process is left
    in it; SIGKILL what is left after `timeout`. `owner()` is asked again before each
    signal: False means the group is no longer ours, and nothing is sent."""
    if not owner():
        return False
    try:
        os.kill(pgid, sig) if leader_only and alive_pid(pgid) else os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _group_members(pgid) == 0:
            return True
        time.sleep(0.2)
    if owner():
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True
