"""One builder at a time for shared generated data, with any number of concurrent jobs.

The synthetic CelebA and the image caches are built on first use, and every job of a sweep
(several processes on one machine, or SLURM jobs on many machines sharing a filesystem) may
reach that point in the same second. The rules:

* **Correctness never depends on the lock.** Each builder writes into its own partial
  name (``<target>.partial-<host>-<pid>``) and publishes it with one atomic rename, so two
  builders can never write into or delete each other's files, and an interrupted build never
  looks finished. If two builders do finish, the second sees the first's result and drops its own.
* **The lock only avoids duplicate work.** :func:`build_lock` takes a ``filelock.FileLock``
  on ``<target>.lock`` (an OS ``flock``; the file is removed on release, even after a failed
  build, so none is left behind); the others log that they are waiting, with the lock
  path, and reuse the result once the lock is free. The kernel releases a flock when its
  holder dies (even from SIGKILL), and NFSv4 does so when a dead client's lease expires.
* **A lock that stays held is detected as stale.** Where a lock can outlive its builder (a
  hung node, or a filesystem without flock, where filelock falls back to a marker file that
  a killed process leaves behind), the builder touches a heartbeat file
  (``<target>.lock.owner``: host, pid, beat count) every :data:`HEARTBEAT_S` seconds. A waiter
  that sees the heartbeat unchanged for :data:`STALE_AFTER_S` seconds, timed on its own clock
  (so clock skew between machines does not matter), logs that the lock is stale and builds
  without it, which the unique partial names make safe.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

#: Seconds between a builder's heartbeats (and between a waiter's checks).
HEARTBEAT_S = 5.0
#: A held lock whose heartbeat has not changed for this long is treated as stale.
STALE_AFTER_S = 120.0


def builder_id() -> str:
    """``<host>-<pid>``: unique among the processes sharing a filesystem."""
    return f"{socket.gethostname()}-{os.getpid()}"


def partial_path(target: Path) -> Path:
    """The sibling this process builds ``target`` in before renaming it into place."""
    return target.with_name(f"{target.name}.partial-{builder_id()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_partials(target: Path) -> None:
    """Delete partial builds of ``target`` left by dead processes of this host.

    Partials of other hosts are left alone: whether their builder lives cannot be told from here.
    """
    prefix = f"{target.name}.partial-{socket.gethostname()}-"
    for partial in target.parent.glob(f"{prefix}*"):
        pid = partial.name[len(prefix) :]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            else:
                partial.unlink(missing_ok=True)


def _heartbeat_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".owner")


def _read_owner(heartbeat: Path) -> str | None:
    """The heartbeat file's content (changes on every beat), or None while there is none."""
    try:
        return heartbeat.read_text(encoding="utf-8")
    except OSError:
        return None


def _describe_owner(state: str | None) -> str:
    try:
        owner = json.loads(state or "")
        return f"{owner['host']} pid {owner['pid']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


@contextmanager
def _beating(heartbeat: Path) -> Iterator[None]:
    """Rewrite ``heartbeat`` every HEARTBEAT_S seconds while the block runs."""
    stop = threading.Event()
    since = time.time()

    def beat() -> None:
        count = 0
        while True:
            owner = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": since,
                "beat": count,
            }
            with suppress(OSError):
                heartbeat.write_text(json.dumps(owner), encoding="utf-8")
            count += 1
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, name="build-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        heartbeat.unlink(missing_ok=True)


def _acquire(lock: FileLock, lock_path: Path, what: str) -> bool:
    """Take ``lock``; False if its holder went stale and the caller should build without it."""
    try:
        lock.acquire(timeout=0)
        return True
    except Timeout:
        pass
    heartbeat = _heartbeat_path(lock_path)
    seen = _read_owner(heartbeat)
    log.warning(
        f"Waiting for another job ({_describe_owner(seen)}) to finish {what}; lock: {lock_path}"
    )
    changed = time.monotonic()
    while True:
        try:
            lock.acquire(timeout=HEARTBEAT_S)
            log.warning(f"Lock {lock_path} is free; continuing")
            return True
        except Timeout:
            pass
        state = _read_owner(heartbeat)
        if state != seen:
            seen, changed = state, time.monotonic()
        elif time.monotonic() - changed > STALE_AFTER_S:
            log.warning(
                f"Lock {lock_path} looks stale (no heartbeat from {_describe_owner(seen)} for "
                f"{STALE_AFTER_S:.0f} s): building {what} without it"
            )
            return False


@contextmanager
def build_lock(target: Path, what: str) -> Iterator[None]:
    """Hold the build lock of ``target`` (``<target>.lock``) while the block builds it.

    Callers check again inside the block whether ``target`` appeared while they waited, build
    into :func:`partial_path` and rename into place; see the module docstring.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.with_name(f"{target.name}.lock")
    lock = FileLock(lock_path)
    held = _acquire(lock, lock_path, what)
    try:
        if held:
            with _beating(_heartbeat_path(lock_path)):
                yield
        else:
            yield
    finally:
        if held:
            # remove the lock file while holding it, so none is left behind (filelock keeps it):
            # a waiter already queued on it still gets it and finds the target built; a job
            # arriving later locks a new file, and the partial names keep two builders safe
            with suppress(OSError):
                lock_path.unlink()
            lock.release()


def publish(partial: Path, target: Path) -> bool:
    """Rename the finished ``partial`` onto ``target`` atomically; False if another builder won.

    A file replaces ``target`` (``os.replace``); a folder takes ``target``'s place only if
    ``target`` is absent or empty. When another builder published first, ``partial`` is removed.
    """
    try:
        if partial.is_dir():
            with suppress(FileNotFoundError, OSError):
                target.rmdir()  # an empty placeholder; a finished folder is never removed
            partial.rename(target)
        else:
            os.replace(partial, target)
        return True
    except OSError:
        if not target.exists():
            raise
        shutil.rmtree(partial, ignore_errors=True)
        return False
