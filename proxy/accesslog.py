"""The access log's writer: JSON lines buffered on the event loop, written by a thread in batches.

A request must never wait on a disk or a slow reader of standard output, so `AccessLog.add`
only appends a line to a list. Every `interval_s` (or as soon as `flush_bytes` are waiting)
the buffered lines are joined and handed to one writer thread; while it writes, new lines keep
accumulating. Past `max_bytes` waiting, new lines are dropped and counted: a stuck sink costs
lines, never memory or latency. A write that fails (a full disk, a removed directory, a closed
pipe) drops its batch, is said once on stderr, and the file is opened again for the next
batch, so the log resumes by itself once the cause is gone. A file a log rotator moved away is
noticed before the next batch, and the path is opened again (created anew).

The lines themselves are made by `proxy/logexchange.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO

STDOUT = "-"
INTERVAL_S = 0.1
FLUSH_BYTES = 64 * 1024
MAX_BYTES = 8 * 1024 * 1024


class Sink:
    """Where the lines go: standard output, or a file opened for appending (owned by the
    writer thread once the log runs)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._file: tuple[int, int] = (0, 0)  # (device, inode) of the open file

    @property
    def name(self) -> str:
        return "standard output" if self.path == STDOUT else self.path

    def open(self) -> None:
        if self.path != STDOUT and self._fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o640)
            stat = os.fstat(self._fd)
            self._file = (stat.st_dev, stat.st_ino)

    def _rotated(self) -> bool:
        """The path no longer names the open file (a log rotator moved or removed it)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (stat.st_dev, stat.st_ino) != self._file

    def write(self, data: bytes) -> None:
        """Write all of `data`; raises OSError (the file is then opened again next time)."""
        try:
            if self._fd is not None and self._rotated():
                self.close()
            self.open()
            fd = 1 if self._fd is None else self._fd
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class AccessLog:
    """Buffers lines on the loop; one writer thread writes them in batches, in order."""

    def __init__(
        self,
        path: str,
        loop: asyncio.AbstractEventLoop,
        *,
        interval_s: float = INTERVAL_S,
        flush_bytes: int = FLUSH_BYTES,
        max_bytes: int = MAX_BYTES,
        stderr: TextIO | None = None,
    ) -> None:
        self.sink = Sink(path)
        self.loop = loop
        self.interval_s = interval_s
        self.flush_bytes = flush_bytes
        self.max_bytes = max_bytes
        self.stderr = stderr
        self.written = 0  # lines written
        self.dropped = 0  # lines lost: the buffer was full, or their write failed
        self._lines: list[bytes] = []
        self._size = 0
        self._writing: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._failing = False  # the last write failed (said once on stderr)
        self._behind = False  # lines were dropped because too many were waiting (said once)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="access-log")

    def start(self) -> None:
        """Open the file now (in the writer thread: a FIFO without a reader blocks its
        opener), so that a path that cannot be written is said at once."""
        opening = self.loop.run_in_executor(self._executor, self.sink.open)
        opening.add_done_callback(self._opened)
        self._timer = self.loop.call_later(self.interval_s, self._tick)

    def _opened(self, done: asyncio.Future[None]) -> None:
        error = None if done.cancelled() else done.exception()
        if isinstance(error, OSError):
            self._failed(error)

    def add(self, line: bytes) -> None:
        """One finished exchange's line (ending with a newline); never blocks."""
        if self._size > self.max_bytes:
            self.dropped += 1
            if not self._behind and not self._failing:
                self._behind = True
                self._say(f"{self.sink.name} does not keep up; lines are dropped and counted")
            return
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.flush_bytes and self._writing is None:
            self._flush()

    def _tick(self) -> None:
        self._flush()
        self._timer = self.loop.call_later(self.interval_s, self._tick)

    def _flush(self) -> None:
        if self._writing is not None or not self._lines:
            return
        lines = self._lines
        self._lines = []
        self._size = 0
        data = lines[0] if len(lines) == 1 else b"".join(lines)
        writing = self.loop.run_in_executor(self._executor, self.sink.write, data)
        self._writing = writing
        writing.add_done_callback(lambda done: self._done(done, len(lines)))

    def _done(self, done: asyncio.Future[None], count: int) -> None:
        self._writing = None
        error = None if done.cancelled() else done.exception()
        if done.cancelled() or error is not None:
            self.dropped += count
            if isinstance(error, OSError):
                self._failed(error)
            return
        self.written += count
        if self._failing:
            self._failing = False
            self._say(f"writing to {self.sink.name} again ({self.dropped} line(s) dropped so far)")
        if self._behind and self._size < self.max_bytes // 2:
            self._behind = False  # caught up: the next episode is said again
        if self._size >= self.flush_bytes:
            self._flush()

    def _failed(self, error: OSError) -> None:
        if not self._failing:
            self._failing = True
            self._say(
                f"cannot write to {self.sink.name} ({error}); lines are dropped and counted "
                "until it can be written again"
            )

    def _say(self, text: str) -> None:
        print(f"rollout-proxy: access log: {text}", file=self.stderr or sys.stderr, flush=True)

    async def close(self) -> None:
        """Write what is buffered, then stop the writer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._writing is not None or self._lines:
            if self._writing is not None:
                with contextlib.suppress(Exception):
                    await self._writing
                await asyncio.sleep(0)  # let the done callback run
            else:
                self._flush()
        self._executor.shutdown(wait=False)
        self.sink.close()
        if self.dropped:
            self._say(f"{self.dropped} line(s) dropped in all")
