"""The offset file's system calls: positional writes, the whole-file read, the lock, and
``fsync`` (off the gevent hub when asked). I/O only; no decisions about records."""

from __future__ import annotations

import errno
import fcntl
import os

import gevent
from gevent.exceptions import LoopExit

from electric.offsets.errors import OffsetFileLocked


def lock(fd: int, path: str) -> None:
    """Take the file's exclusive lock or raise :class:`OffsetFileLocked`."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OffsetFileLocked(f"offset file {path} is in use by another process") from None
        raise


def write_at(fd: int, pos: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


def read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = []
    pos = 0
    while pos < size:
        chunk = os.pread(fd, min(size - pos, 1 << 20), pos)
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


def fsync(fd: int, in_threadpool: bool) -> tuple[BaseException | None, BaseException | None]:
    """fsync ``fd``, in gevent's thread pool when ``in_threadpool``.

    Returns ``(failure, kill)``: what the fsync itself raised, and a kill (``GreenletExit``,
    a ``gevent.Timeout``...) that arrived while waiting for it, which the caller re-raises
    once its bookkeeping is done. The record is already in the file by then, so abandoning
    the wait would leave memory disagreeing with the disk; an fsync is short, so waiting it
    out on a kill costs little and leaves the interrupted put complete and durable.
    """
    if not in_threadpool:
        try:
            os.fsync(fd)
        except Exception as exc:
            return exc, None
        return None, None
    kill: BaseException | None = None
    result = None
    try:
        # ``os.fsync`` looked up at call time: tests patch it.
        result = gevent.get_hub().threadpool.spawn(os.fsync, fd)
        result.wait()
    except BaseException as exc:
        kill = exc
    while result is not None and not result.ready():
        if isinstance(kill, LoopExit):
            break  # the hub cannot deliver the result: never spin on it
        try:
            result.wait()
        except BaseException as exc:  # killed again: keep waiting, re-raise the first
            if kill is None:
                kill = exc
    if result is not None and result.ready():
        return result.exception, kill
    # Killed while waiting for a free pool thread (nothing is syncing yet), or the wait
    # cannot finish: sync inline. A record left unsynced would let a later put of the
    # same value return early, on data that may not be on disk.
    try:
        os.fsync(fd)
    except Exception as exc:
        return exc, kill
    return None, kill


def fsync_dir(path: str) -> None:
    """fsync the directory holding ``path`` (makes a rename in it durable)."""
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
