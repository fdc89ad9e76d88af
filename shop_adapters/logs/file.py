"""An append-only file :class:`~shop_adapters.protocols.EventLog`.

File format
-----------
A sequence of records, each framed as::

    [u32 length][u32 crc32c][payload: length bytes]

both integers little-endian; ``crc32c`` is the CRC-32C (Castagnoli) of the
payload, computed with the ``crc32c`` package; ``length`` is 1 to
:data:`MAX_RECORD_BYTES`. The payload is the entry's fields as a MessagePack
map of bin -> bin (``msgpack.packb(fields, use_bin_type=True)``), read back with
msgspec's typed MessagePack decoder: a record of any other shape (a str or an int
among its names or values) is an ``IntegrityError`` naming its offset. Record ``i``
(1-based, in file order) is at ``Position(i, 0)``. Source: the framing follows
the LevelDB/RocksDB write-ahead log (length + CRC-32C per record).

Dead letters go to the sibling file ``<path>.dead`` with the same framing; each
payload is a MessagePack map ``{b"position": b"<major>-<minor>", b"reason":
<UTF-8>, b"fields": {bin: bin}}``, in increasing position order.

Durability (``fsync``)
----------------------
- ``"always"``: every record is written and ``fdatasync``-ed on its own, so a
  crash in the middle of an ``append`` call keeps every record before it.
- ``"batch"`` (default): one ``write`` and one ``fdatasync`` per ``append``
  call; a crash inside the call keeps a prefix of its records (the torn rest
  is truncated on the next open).
- ``"never"``: no fsync; the OS writes back when it likes (data survives a
  process crash, not a power loss).

Recovery
--------
On open the whole file is scanned, without a lock. A corrupt record with more
data after it (bad CRC, or an impossible length) raises
:class:`~shop_adapters.errors.IntegrityError` naming the file and the byte
offset: it is never skipped silently. An incomplete last record (short header,
short payload, a bad CRC on a record reaching end of file, or a tail of zero
bytes) is not indexed: it is a writer mid-append, or a torn write. The next
``append`` (under an exclusive ``flock``) truncates a torn tail away with a
:class:`TornRecordWarning` and a logging warning naming the byte offset. Known
limit: a length field corrupted to a plausible value that reaches past end of
file looks exactly like a torn write and is truncated.

Concurrency
-----------
Several processes may open the same file; appends take ``flock(LOCK_EX)`` and
first index (and, if torn, truncate) whatever other writers left. Readers never
lock, so a writer stopped inside ``append`` never blocks them: records another
process is still writing are simply not seen yet. A file that shrinks, or whose
last record read changes (truncated and written again), is an
``IntegrityError`` for its readers, never a silent stall.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
import threading
import time
import warnings
from array import array
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple

import crc32c
import msgpack
import msgspec

from .._fs import fsync_dir
from ..errors import IntegrityError
from ..protocols import ORIGIN, DeadLetter, LogHistory, Position, Record
from ._common import check_limit, check_timeout, encode_entries

__all__ = ["MAX_RECORD_BYTES", "FileLog", "FsyncPolicy", "TornRecordWarning"]

logger = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "batch", "never"]
MAX_RECORD_BYTES = 64 * 1024 * 1024
"""Largest payload a record may have (bytes); a bigger length is corruption."""

_HEADER = struct.Struct("<II")
_HEADER_SIZE = _HEADER.size
_fdatasync = getattr(os, "fdatasync", os.fsync)
_unpack = msgspec.msgpack.Decoder().decode
"""A MessagePack payload as Python values (bin -> bytes, str -> str, map -> dict);
``msgspec.DecodeError`` if it is not exactly one MessagePack value."""
_unpack_fields = msgspec.msgpack.Decoder(dict[bytes, bytes]).decode
"""A log record's payload: a map of bin to bin, checked in C (``msgspec.ValidationError``
for any other shape, ``msgspec.DecodeError`` for bytes that are not MessagePack)."""


class TornRecordWarning(UserWarning):
    """A torn last record was truncated away when a file log was opened."""


def frame(payload: bytes) -> bytes:
    """``[u32 length][u32 crc32c][payload]``, little-endian."""
    if not 0 < len(payload) <= MAX_RECORD_BYTES:
        raise ValueError(
            f"a record payload must be 1 to {MAX_RECORD_BYTES} bytes, got {len(payload)}"
        )
    return _HEADER.pack(len(payload), crc32c.crc32c(payload)) + payload


class _Scan(NamedTuple):
    offsets: array[int]  # file offsets of the valid records found
    end: int  # file offset just after the last valid record
    torn: str | None  # why the tail after ``end`` is not a record (None if no tail)


def _all_zero(buf: Any, start: int, stop: int) -> bool:
    step = 1 << 20
    for a in range(start, stop, step):
        chunk = bytes(buf[a : min(a + step, stop)])
        if chunk.count(0) != len(chunk):
            return False
    return True


def _scan(buf: Any, base: int, path: Path, *, strict: bool) -> _Scan:
    """Index the records in ``buf`` (file bytes starting at offset ``base``).

    ``strict`` (recovery under the writer lock): a corrupt record with more data
    after it raises ``IntegrityError``. Otherwise (a reader racing a writer) the
    scan just stops at the first record that is not complete and valid.
    """
    offsets: array[int] = array("q")
    n = len(buf)
    pos = 0
    torn: str | None = None
    unpack = _HEADER.unpack_from
    crc = crc32c.crc32c
    while pos < n:
        remaining = n - pos
        if remaining < _HEADER_SIZE:
            torn = f"short header ({remaining} of {_HEADER_SIZE} bytes)"
            break
        length, expected = unpack(buf, pos)
        if length == 0 or length > MAX_RECORD_BYTES:
            if remaining == _HEADER_SIZE or _all_zero(buf, pos, n):
                torn = f"impossible length {length} in the last header"
                break
            if strict:
                raise IntegrityError(
                    f"{path}: corrupt record at byte offset {base + pos}: impossible length "
                    f"{length} (expected 1 to {MAX_RECORD_BYTES}) with "
                    f"{remaining - _HEADER_SIZE} more bytes after the header"
                )
            break
        stop = pos + _HEADER_SIZE + length
        if stop > n:
            torn = f"short payload ({n - pos - _HEADER_SIZE} of {length} bytes)"
            break
        actual = crc(buf[pos + _HEADER_SIZE : stop])
        if actual != expected:
            if stop == n or _all_zero(buf, stop, n):
                torn = f"bad crc32c on the last record ({actual:#010x}, expected {expected:#010x})"
                break
            if strict:
                raise IntegrityError(
                    f"{path}: corrupt record at byte offset {base + pos}: crc32c {actual:#010x} "
                    f"!= stored {expected:#010x}, with {n - stop} more bytes after it"
                )
            break
        offsets.append(base + pos)
        pos = stop
    return _Scan(offsets, base + pos, torn)


def _read_tail(fd: int, start: int, size: int) -> bytes:
    return os.pread(fd, size - start, start) if size > start else b""


def _decode_fields(payload: Any, path: Path, offset: int) -> dict[bytes, bytes]:
    try:
        fields = _unpack(payload)
    except (msgspec.DecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise IntegrityError(f"{path}: record at byte offset {offset} is not MessagePack") from e
    if type(fields) is not dict:
        raise IntegrityError(
            f"{path}: record at byte offset {offset} holds a {type(fields).__name__}, "
            "expected a map of bytes to bytes"
        )
    return fields


class _Framed:
    """One framed, append-only file with its record index (used for the log and ``.dead``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        existed = path.exists()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        if not existed:
            fsync_dir(path.parent)
        self.offsets: array[int] = array("q")
        self.end = 0
        self.refresh()  # no lock: a reader never waits for a writer

    @contextmanager
    def flock(self) -> Iterator[None]:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def recover(self) -> None:
        """Index new records strictly; truncate a torn tail. Caller holds :meth:`flock`."""
        size = self.size()
        if size < self.end:
            raise IntegrityError(
                f"{self.path}: file shrank to {size} bytes below the {self.end} already indexed"
            )
        if size == self.end:
            return
        if self.end == 0:
            with (
                open(self.fd, "rb", closefd=False) as f,
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm,
            ):
                scan = _scan(mm, 0, self.path, strict=True)
        else:
            scan = _scan(_read_tail(self.fd, self.end, size), self.end, self.path, strict=True)
        self.offsets.extend(scan.offsets)
        self.end = scan.end
        if scan.torn is not None:
            message = (
                f"{self.path}: torn last record at byte offset {scan.end}: {scan.torn}; "
                f"truncating {size - scan.end} bytes (the records before it are intact)"
            )
            logger.warning(message)
            warnings.warn(message, TornRecordWarning, stacklevel=4)
            os.ftruncate(self.fd, scan.end)
            _fdatasync(self.fd)

    def refresh(self) -> None:
        """Index records other writers completed since, without a lock: a partial
        last record (a writer mid-append) is simply not indexed yet; a corrupt
        record with data after it is an ``IntegrityError``, and so is a file that
        shrank or whose last indexed record changed (truncated and written again)."""
        size = self.size()
        if size < self.end:
            raise IntegrityError(
                f"{self.path}: file shrank to {size} bytes below the {self.end} already indexed"
            )
        if size == self.end:
            return
        if self.offsets:
            self._check_record(len(self.offsets) - 1)
        if self.end == 0:
            with (
                open(self.fd, "rb", closefd=False) as f,
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm,
            ):
                scan = _scan(mm, 0, self.path, strict=True)
        else:
            scan = _scan(_read_tail(self.fd, self.end, size), self.end, self.path, strict=True)
        self.offsets.extend(scan.offsets)
        self.end = scan.end

    def _check_record(self, index: int) -> None:
        """``IntegrityError`` unless the record at 0-based ``index`` still holds what
        was indexed (its length and CRC-32C)."""
        offset = self.offsets[index]
        stop = self.offsets[index + 1] if index + 1 < len(self.offsets) else self.end
        data = os.pread(self.fd, stop - offset, offset)
        if len(data) == stop - offset:
            length, expected = _HEADER.unpack_from(data, 0)
            body = data[_HEADER_SIZE:]
            if length == len(body) and crc32c.crc32c(body) == expected:
                return
        raise IntegrityError(
            f"{self.path}: the record at byte offset {offset} changed after it was read "
            "(the file was truncated and written again?); refusing to read on"
        )

    def write(self, frames: list[bytes], fsync: FsyncPolicy) -> None:
        """Append ``frames`` (caller holds :meth:`flock` and has called :meth:`recover`).

        All or nothing: on an ``OSError`` the file is truncated back and it is re-raised.
        """
        start = self.end
        offsets: list[int] = []
        try:
            if fsync == "always":
                at = start
                for f in frames:
                    _write_all(self.fd, f)
                    _fdatasync(self.fd)
                    offsets.append(at)
                    at += len(f)
            else:
                _write_all(self.fd, b"".join(frames))
                if fsync == "batch":
                    _fdatasync(self.fd)
                at = start
                for f in frames:
                    offsets.append(at)
                    at += len(f)
        except OSError:
            os.ftruncate(self.fd, start)
            raise
        self.offsets.extend(offsets)
        self.end = at

    def read_range(self, first: int, stop: int) -> bytes:
        """Bytes of records with 0-based indices ``first..stop-1``; ``IntegrityError``
        naming the file and offset if the file no longer holds them all (it shrank)."""
        a = self.offsets[first]
        b = self.offsets[stop] if stop < len(self.offsets) else self.end
        data = os.pread(self.fd, b - a, a)
        if len(data) != b - a:
            raise IntegrityError(
                f"{self.path}: expected {b - a} bytes of records at byte offset {a}, the "
                f"file holds {len(data)}: it was truncated under the reader"
            )
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _encode_dead(letter: DeadLetter) -> bytes:
    payload = {
        b"position": str(letter.position).encode("ascii"),
        b"reason": letter.reason.encode("utf-8", errors="backslashreplace"),
        b"fields": dict(letter.fields),
    }
    packed: bytes = msgpack.packb(payload, use_bin_type=True)
    return packed


def _decode_dead(payload: Any, path: Path, offset: int) -> DeadLetter:
    data = _decode_fields(payload, path, offset)
    try:
        position = Position.parse(data[b"position"])
        reason = data[b"reason"].decode("utf-8", errors="replace")
        fields: Any = data[b"fields"]
    except (KeyError, ValueError, AttributeError) as e:
        raise IntegrityError(f"{path}: dead letter at byte offset {offset} is malformed") from e
    if type(fields) is not dict:
        raise IntegrityError(f"{path}: dead letter at byte offset {offset} has no fields map")
    return DeadLetter(position, fields, reason)


class FileLog:
    """An append-only file log; see the module docstring for format and guarantees.

    :param path: the log file (created if missing); dead letters go to ``<path>.dead``.
    :param fsync: ``"always"`` (per record), ``"batch"`` (per :meth:`append` call,
        default) or ``"never"``.
    :param poll_interval_ms: how often :meth:`wait_after` checks the file size (ms).

    Raises :class:`~shop_adapters.errors.IntegrityError` on open if a record
    before the end is corrupt; warns :class:`TornRecordWarning` when it
    truncates a torn last record. Thread safe within a process; safe across
    processes (appends under ``flock``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fsync: FsyncPolicy = "batch",
        *,
        poll_interval_ms: int = 10,
    ) -> None:
        if fsync not in ("always", "batch", "never"):
            raise ValueError(f"fsync must be 'always', 'batch' or 'never', got {fsync!r}")
        if poll_interval_ms < 1:
            raise ValueError(f"poll_interval_ms must be >= 1, got {poll_interval_ms}")
        self.path = Path(path)
        self.fsync: FsyncPolicy = fsync
        self.poll_interval_ms = poll_interval_ms
        self._lock = threading.RLock()
        self._log = _Framed(self.path)
        self.dead_path = Path(str(self.path) + ".dead")
        self._dead: _Framed | None = None
        self._dead_max = ORIGIN
        if self.dead_path.exists():
            self._open_dead()

    # -- the log ----------------------------------------------------------------------

    def append(self, entries: Sequence[Mapping[str | bytes, str | bytes | int]]) -> list[Position]:
        """Append ``entries`` (see :data:`fsync` policy); returns ``Position(i, 0)``, increasing.

        All or nothing per call unless the process crashes (then a prefix
        survives). Raises ``TypeError``/``ValueError`` for a bad entry (nothing
        written) and ``OSError`` if the disk refuses (file left as before the call).
        """
        encoded = encode_entries(entries)
        if not encoded:
            return []
        frames = [frame(msgpack.packb(f, use_bin_type=True)) for f in encoded]
        with self._lock:
            log = self._open_log()
            with log.flock():
                log.recover()
                first = len(log.offsets) + 1
                log.write(frames, self.fsync)
        return [Position(first + k, 0) for k in range(len(frames))]

    def read_after(self, position: Position, limit: int) -> list[Record]:
        """Up to ``limit`` (>= 1) records strictly after ``position``; ``[]`` at the end.

        One ``pread`` for the whole batch. Raises ``IntegrityError`` if a record
        no longer matches its CRC (the file was altered after it was indexed).
        """
        check_limit(limit)
        start = max(position.major, 0)  # records strictly after (major, any minor)
        with self._lock:
            log = self._open_log()
            if start + limit > len(log.offsets):  # a short batch: look for other writers'
                log.refresh()
                if start >= len(log.offsets):
                    return []
            stop = min(start + limit, len(log.offsets))
            data = log.read_range(start, stop)
            base = log.offsets[start]
        return self._parse(data, start, stop, base)

    def _parse(self, data: bytes, start: int, stop: int, base: int) -> list[Record]:
        out: list[Record] = []
        view = memoryview(data)
        unpack = _HEADER.unpack_from
        crc = crc32c.crc32c
        unpack_fields = _unpack_fields
        new = tuple.__new__  # Position and Record without NamedTuple's __new__ (a Python frame)
        pos = 0
        for index in range(start + 1, stop + 1):
            length, expected = unpack(data, pos)
            body = view[pos + _HEADER_SIZE : pos + _HEADER_SIZE + length]
            if crc(body) != expected:
                raise IntegrityError(
                    f"{self.path}: record at byte offset {base + pos} fails its crc32c "
                    "(the file changed after it was indexed)"
                )
            try:
                fields = unpack_fields(body)
            except msgspec.ValidationError as e:
                raise IntegrityError(
                    f"{self.path}: record at byte offset {base + pos} is not a map of "
                    f"bytes to bytes ({e})"
                ) from e
            except msgspec.DecodeError as e:
                raise IntegrityError(
                    f"{self.path}: record at byte offset {base + pos} is not MessagePack"
                ) from e
            out.append(new(Record, (new(Position, (index, 0)), fields)))
            pos += _HEADER_SIZE + length
        return out

    def wait_after(self, position: Position, limit: int, timeout_ms: int) -> list[Record]:
        """:meth:`read_after`, polling the file size every ``poll_interval_ms`` for up
        to ``timeout_ms`` ms (0: no wait) until another thread or process appends."""
        check_limit(limit)
        check_timeout(timeout_ms)
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            found = self.read_after(position, limit)
            if found:
                return found
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                time.sleep(min(self.poll_interval_ms / 1000, remaining))
                with self._lock:
                    if self._open_log().size() != self._log.end:
                        break  # grew, or shrank (read_after then says so)

    def last_position(self) -> Position:
        """``Position(n, 0)`` for ``n`` records (including other writers'), ORIGIN if empty."""
        with self._lock:
            log = self._open_log()
            log.refresh()
            return Position(len(log.offsets), 0) if log.offsets else ORIGIN

    def first_position(self) -> Position:
        """``Position(1, 0)`` if the log has a record, else :data:`ORIGIN`."""
        with self._lock:
            log = self._open_log()
            log.refresh()
            return Position(1, 0) if log.offsets else ORIGIN

    def read_at(self, position: Position) -> Record | None:
        """The record at ``Position(i, 0)``, or ``None`` if there is none."""
        if position.minor != 0 or position.major < 1:
            return None
        found = self.read_after(Position(position.major - 1, 0), 1)
        return found[0] if found and found[0].position == position else None

    def history(self) -> LogHistory:
        """Records ``1..n``; a file log never deletes a record."""
        with self._lock:
            log = self._open_log()
            log.refresh()
            n = len(log.offsets)
            return LogHistory(Position(1, 0) if n else ORIGIN, Position(n, 0), n, n, None)

    # -- dead letters -------------------------------------------------------------------

    def _open_dead(self) -> _Framed:
        if self._dead is None:
            self._dead = _Framed(self.dead_path)
            self._dead_max = self._last_dead(self._dead)
        return self._dead

    def _last_dead(self, dead: _Framed) -> Position:
        if not dead.offsets:
            return ORIGIN
        n = len(dead.offsets)
        data = dead.read_range(n - 1, n)
        return _decode_dead(memoryview(data)[_HEADER_SIZE:], dead.path, dead.offsets[-1]).position

    def dead_letter(self, letter: DeadLetter) -> bool:
        """Append ``letter`` to ``<path>.dead``; ``False`` if the dead letter of that
        record (same position and fields; the reason may be worded otherwise) is
        already there (so it is written once per position, across crashes: the
        highest position is re-read on open and under the file lock).

        Raises ``IntegrityError`` if a position at or below the highest one
        already there does not hold this dead letter (never dropped silently).
        """
        payload = frame(_encode_dead(letter))
        with self._lock:
            if self._log.fd < 0:
                raise ValueError(f"I/O on closed FileLog {self.path}")
            if letter.position > self._dead_max:
                dead = self._open_dead()
                with dead.flock():
                    dead.recover()
                    self._dead_max = self._last_dead(dead)
                    if letter.position > self._dead_max:
                        dead.write([payload], "never" if self.fsync == "never" else "always")
                        self._dead_max = letter.position
                        return True
        kept = next((d for d in self.dead_letters() if d.position == letter.position), None)
        if kept is not None and kept.fields == dict(letter.fields):
            return False
        held = "holds no entry at that position" if kept is None else "holds another one there"
        raise IntegrityError(
            f"cannot record the dead letter of {letter.position}: {self.dead_path} already "
            f"goes past it and {held}; something else wrote there. Refusing to drop it silently"
        )

    def dead_letters(self) -> list[DeadLetter]:
        """All dead letters in ``<path>.dead``, in position order."""
        with self._lock:
            if self._log.fd < 0:
                raise ValueError(f"I/O on closed FileLog {self.path}")
            if self._dead is None and not self.dead_path.exists():
                return []
            dead = self._open_dead()
            dead.refresh()
            n = len(dead.offsets)
            if n == 0:
                return []
            data = dead.read_range(0, n)
            offsets = list(dead.offsets)
        view = memoryview(data)
        out: list[DeadLetter] = []
        for off in offsets:
            rel = off - offsets[0]
            (length,) = struct.unpack_from("<I", data, rel)
            body = view[rel + _HEADER_SIZE : rel + _HEADER_SIZE + length]
            out.append(_decode_dead(body, self.dead_path, off))
        return out

    # -- lifecycle ---------------------------------------------------------------------

    def _open_log(self) -> _Framed:
        if self._log.fd < 0:
            raise ValueError(f"I/O on closed FileLog {self.path}")
        return self._log

    def close(self) -> None:
        """Close the file handles; later calls raise ``ValueError``."""
        with self._lock:
            self._log.close()
            if self._dead is not None:
                self._dead.close()

    def __enter__(self) -> FileLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileLog({str(self.path)!r}, fsync={self.fsync!r})"
