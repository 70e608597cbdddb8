"""Background services we own: start detached, track by pid file, stop for sure.

A pid file alone is not proof: after a reboot the pid may belong to someone
else. A service is "ours" only if the pid is alive *and* its command line
contains the marker we started it with (its config path under our state dir).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mediafm.errors import PortInUseError, StackError

# Popen objects of the services this process started: kept so they are reaped
# (no zombies) and never garbage-collected while running (no ResourceWarning).
_children: dict[int, subprocess.Popen] = {}


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def require_free_ports(service: str, host: str, ports: dict[str, int]) -> None:
    for name, port in ports.items():
        if not port_is_free(host, port):
            raise PortInUseError(
                f"{service}: port {host}:{port} ({name}) is already in use by another process; "
                f"stop it, or pick another port with MEDIAFM_{name.upper()}=<port>"
            )


def wipeable(path: Path) -> None:
    """StackError if `wipe` would refuse `path`: a symbolic link (it deletes only inside the state dir)."""
    if path.is_symlink():
        raise StackError(f"{path} is a symbolic link (to {os.readlink(path)}); --wipe deletes only inside the state "
                         "dir: empty what it points to yourself, or remove the link")


def wipe(path: Path) -> None:
    """Delete the folder `path` of a stack's state (a broker's log, the workers' tables), or StackError saying why
    it could not be: before, `rmtree(ignore_errors=True)` said "wiped" over a folder it had left as it was (a
    symbolic link, which rmtree refuses; a file it may not delete), and the next `up` then met the old data."""
    wipeable(path)
    if not path.exists():
        return
    failed: list[str] = []
    shutil.rmtree(path, onerror=lambda _fn, p, info: failed.append(f"{p}: {info[1]}"))  # onexc from Python 3.12
    if failed:
        raise StackError(f"could not wipe {path}: {failed[0]}" + (f" (and {len(failed) - 1} more)" if len(failed) > 1
                                                                     else ""))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _settled_cmdline(pid: int, *, wait_s: float = 1.0) -> str:
    """_cmdline, read again while it is empty for a live process: while a process execs, the kernel switches its
    memory before it sets the new arguments up, and /proc/PID/cmdline reads empty in between (1,360 of 534 k reads
    of a process exec'ing in a loop). A tied service execs twice after it starts (tied_to_this_process), so a
    `stack status` or test reading then took it for dead and cleared its pid file. A zombie or a process gone is
    empty at once; a kernel thread stays empty, after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while not (cmd := _cmdline(pid)) and time.monotonic() < deadline:
        fields = _stat(pid)
        if fields is None or fields[0] == "Z":
            break
        time.sleep(0.005)
    return cmd


@dataclass
class Service:
    """A detached process of ours, known by its pid file and a command-line marker."""

    name: str
    pid_file: Path
    log_file: Path
    marker: str
    """A string only our instance has on its command line (a config path)."""

    def pid(self) -> int | None:
        """The pid if the process is alive and ours; clears a stale pid file."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        child = _children.get(pid)
        if child is not None:
            # Started by this process: ask the handle. (/proc/<pid>/cmdline still shows
            # *our* command line between fork and exec, so the marker test would race.)
            if child.poll() is None:
                return pid
            del _children[pid]
        elif self.marker in _settled_cmdline(pid):
            return pid
        self.pid_file.unlink(missing_ok=True)  # stale: dead, or the pid was reused
        return None

    def start(self, argv: list[str], *, env: dict[str, str] | None = None, tied: bool = False) -> int:
        """Start argv detached (its own session and process group), logging to log_file. It outlives us unless
        `tied`: then it gets SIGTERM when this process ends, even by SIGKILL (tied_to_this_process)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if shutil.which(argv[0], path=(env or os.environ).get("PATH")) is None:
            raise StackError(f"{self.name}: cannot run {argv[0]}: not found, or not executable")
        with open(self.log_file, "ab") as log:
            try:
                proc = subprocess.Popen(
                    tied_to_this_process(argv) if tied else argv, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=env, start_new_session=True,  # own process group
                )
            except FileNotFoundError as e:
                raise StackError(f"{self.name}: cannot run {argv[0]}: {e}") from None
        _children[proc.pid] = proc
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc.pid

    def alive(self) -> bool:
        return self.pid() is not None

    def stop(self, *, timeout_s: float = 30.0) -> bool:
        """SIGTERM the process group, SIGKILL after timeout. True if one was running."""
        pid = self.pid()
        if pid is None:
            return False
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _alive(pid):
                    break
                time.sleep(0.2)
            else:
                continue
            break
        child = _children.pop(pid, None)
        if child is not None:
            child.wait(timeout=10)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...: proc(5) from field 3), or None
    once the process is gone. The name is cut at its last ')': it may hold spaces and parentheses."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    if fields is None:
        return False
    if fields[0] == "Z":  # a zombie child is dead for our purpose
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has spent so far; 0.0 once it is gone."""
    fields = _stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (Triton: the server, then its model processes), as /proc has them now."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (fields := _stat(int(d.name))) is not None:  # None: gone meanwhile
            children.setdefault(int(fields[1]), []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        out.append(p := todo.pop())
        todo += children.get(p, [])
    return out


def interrupt_on_sigterm() -> None:
    """From now on SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does, so the `finally` blocks of
    a script (and pytest's fixture teardowns) stop what it started: a private Triton with its model processes, a
    broker, workers, busy loops. Python's default dies at once and leaves all of those running. For scripts that
    own such processes (bench/, the test session); call it from the main thread."""

    def interrupt(signum: int, frame) -> None:
        raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")

    signal.signal(signal.SIGTERM, interrupt)


def tied_to_this_process(argv: list[str]) -> list[str]:
    """argv run under util-linux's `setpriv --pdeathsig TERM`, which sets Linux's PR_SET_PDEATHSIG and execs it: the
    process gets SIGTERM when the thread that started it ends, however it ends (`kill -9` included), where
    interrupt_on_sigterm's `finally` blocks never run. For what a script owns and stops itself anyway (a bench's
    workers and private Triton), started from its main thread; not for `mediafm stack up`, whose services outlive
    it by design. Only the process itself is signalled (it stops its own children, as on `kill`). argv unchanged
    where setpriv is missing (not Linux, no util-linux).

    The kernel signals only a death after the tie is made, and setpriv makes it in the child, some time after the
    fork: a script killed in between would leave argv running untied (seen under load: a worker outlived its
    `kill -9`ed owner). So after the tie a shell checks that its parent is still this process and exits 143 (as
    if it had got the SIGTERM) where it is not, before argv runs. Start the argv from this process, then: started
    by any other, it only exits."""
    setpriv = shutil.which("setpriv")
    if not setpriv:
        return argv
    check = f'[ "$PPID" = {os.getpid()} ] || exit 143; exec "$@"'
    return [setpriv, "--pdeathsig", "TERM", "--", "/bin/sh", "-c", check, "tied", *argv]


def wait_until(check, *, timeout_s: float, what: str, service: Service, interval_s: float = 0.5) -> None:
    """Poll `check()` until it returns True; fail with the log's tail if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if not service.alive():
            raise StackError(
                f"{service.name} exited while starting; last lines of {service.log_file}:\n"
                f"{service.log_tail()}"
            )
        time.sleep(interval_s)
    raise StackError(
        f"{service.name} did not become ready ({what}) within {timeout_s:.0f}s; "
        f"see {service.log_file}, or raise MEDIAFM_START_TIMEOUT_S"
    )


def start_and_wait(service: Service, check, *, timeout_s: float, what: str, explain=None) -> None:
    """Wait for a just-started service; stop it if it never gets ready (no orphans). `explain`, called while it
    still runs, may raise a clearer error than "not ready" (e.g. a broker refusing our login)."""
    try:
        try:
            wait_until(check, timeout_s=timeout_s, what=what, service=service)
        except StackError:
            if explain is not None:
                explain()
            raise
    except BaseException:
        service.stop(timeout_s=10)
        raise
