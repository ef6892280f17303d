"""Message reads done by a process of their own (POP3 RETR; see context.Services for IMAP).

A read is three system calls and a conversion (LF to CRLF, dot-stuffing for POP3), a few
microseconds each; in a thread of the server, each one then waited for Python's global lock,
held by the event loop serving the sessions. Measured with bench/pop3.py, 20 clients: the server
spent 62 µs of CPU a message with reads in a thread (0.74-0.80x Dovecot's rate) and 43 µs with the
same reads done in the event loop itself (0.94x; but every session would stall whenever the disk
is slow); with the reader process (child.py: started, stopped and restarted like every helper
process) 48 µs, the reader's own CPU counted, and 1.09-1.11x: the reads run beside the event
loop, on another core when there is one.

`ReaderProcess.run(function, *args)` runs a module-level function there and returns its result
(or raises its exception). Both travel pickled, message texts out of band (protocol 5: sent
beside the pickle, not copied into it): the socket pair is private to the server and its own
child, nothing else can write to it. `ThreadReaders` does the same in a thread of this process.
"""

from __future__ import annotations

import array
import asyncio
import concurrent.futures
import errno
import importlib
import logging
import os
import pickle
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from appliance.store.child import ChildProcess, Reply, main

log = logging.getLogger("appliance.store")

THREADS = 2  # reads in the process at once: one waits for the disk while the other converts
OUT_OF_BAND = 512  # bytes objects at least this long travel beside the pickle
_COUNT = struct.Struct("!I")
PRELOAD_VARIABLE = "APPLIANCE_READER_PRELOAD"  # the `preload` modules, for the process
_T = TypeVar("_T")


class Readers(Protocol):
    async def run(self, function: Callable[..., _T], *args: Any) -> _T: ...

    async def close(self) -> None: ...


class ReaderProcess(ChildProcess):
    module = "appliance.store.reader"
    label = "reader process"
    failed_name = "failed_reads"
    threads = THREADS

    def __init__(self, threads: int | None = None, *, preload: Sequence[str] = ()) -> None:
        """`preload`: the modules whose functions the process will run, imported when it starts
        rather than at the first request (a request names its function by module and name)."""
        super().__init__(threads)
        self.preload = tuple(preload)

    def process_environment(self) -> dict[str, str]:
        return self.environment | {PRELOAD_VARIABLE: " ".join(self.preload)}

    async def run(self, function: Callable[..., _T], *args: Any) -> _T:
        ok, value = await self.request(pickle.dumps((function, args), pickle.HIGHEST_PROTOCOL))
        if not ok:
            raise value
        result: _T = value
        return result

    def decode(self, meta: bytes, data: memoryview) -> tuple[bool, Any]:
        """(ok, result or exception): the pickle in `meta`, its large bytes taken from `data`."""
        (count,) = _COUNT.unpack_from(meta)
        lengths = array.array("Q")
        lengths.frombytes(meta[_COUNT.size : _COUNT.size + 8 * count])
        buffers = []
        position = 0
        for length in lengths:
            buffers.append(bytes(data[position : position + length]))
            position += length
        outcome: tuple[bool, Any] = pickle.loads(meta[_COUNT.size + 8 * count :], buffers=buffers)
        return outcome


class ThreadReaders:
    """Reads in one thread of this process (no reader process)."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="read")

    async def run(self, function: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)


# -- the process -----------------------------------------------------------------------------
def _handle(meta: bytes, data: bytes) -> Reply:
    """Run the function; its result (or exception) pickled, large bytes (message texts) sent
    beside the pickle rather than copied into it (pickle protocol 5, out-of-band buffers)."""
    try:
        function, args = pickle.loads(meta)
        outcome: tuple[bool, Any] = (True, _out_of_band(function(*args)))
    except Exception as error:
        outcome = (False, error)
    buffers: list[pickle.PickleBuffer] = []
    try:
        pickled = pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL, buffer_callback=buffers.append)
    except Exception as error:  # a result or an exception that cannot travel: a defect here
        log.exception("reader process: the result could not be sent")
        buffers = []
        failure = OSError(errno.EIO, f"reader process: {error!r}")
        pickled = pickle.dumps((False, failure), pickle.HIGHEST_PROTOCOL)
    pieces = [buffer.raw() for buffer in buffers]
    lengths = array.array("Q", [piece.nbytes for piece in pieces]).tobytes()
    return _COUNT.pack(len(pieces)) + lengths + pickled, pieces


def _out_of_band(value: Any) -> Any:
    """`value` with the bytes in it (itself, or one level down in a list, tuple or dict) marked
    to travel out of band."""
    if isinstance(value, list):
        return [_marked(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_marked(item) for item in value)
    if isinstance(value, dict):
        return {key: _marked(item) for key, item in value.items()}
    return _marked(value)


def _marked(item: Any) -> Any:
    return pickle.PickleBuffer(item) if isinstance(item, bytes) and len(item) >= OUT_OF_BAND else item


if __name__ == "__main__":
    # What the reads call (POP3's read-ahead, as the server named it), imported once now.
    for preloaded in os.environ.get(PRELOAD_VARIABLE, "").split():
        importlib.import_module(preloaded)
    sys.exit(main(sys.argv[1:], _handle, "read"))
