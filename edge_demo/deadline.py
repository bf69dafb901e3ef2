"""Socket reads under one deadline per phase, for ``edge_demo serve``'s request handler.

A socket timeout alone bounds each wait, not the whole read: a client that sends one byte every
few seconds, or a body shorter than its Content-Length, holds a worker thread for as long as it
likes. :class:`DeadlineReader` is the raw stream under the handler's buffered ``rfile``; the
handler starts a phase (request line and headers, then the body) with :meth:`~DeadlineReader.start`,
and every read of that phase shares its deadline.
"""

from __future__ import annotations

import io
import time


class RequestTimeout(Exception):
    """A read phase ran past its deadline. Deliberately not a ``TimeoutError``: the standard
    library's handler would swallow that silently, and the server answers 408 instead."""


class DeadlineReader(io.RawIOBase):
    """Reads ``sock`` until the current phase's deadline; raises :class:`RequestTimeout` after it.

    ``received`` counts the bytes read from the socket since the phase started (0 in the
    header phase: the client sent nothing).
    Between reads the socket's timeout is ``send_timeout`` again, so a deadline nearly spent
    while reading never cuts short the writing of the answer.
    """

    def __init__(self, sock, send_timeout: float | None):
        super().__init__()
        self._sock, self._send_timeout = sock, send_timeout
        self._deadline, self._phase, self._seconds = None, "", None
        self.received = 0

    def start(self, phase: str, seconds: float) -> None:
        self._deadline, self._phase, self._seconds = time.monotonic() + seconds, phase, seconds
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = None if self._deadline is None else self._deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise RequestTimeout(self._message())
        self._sock.settimeout(remaining)
        try:
            n = self._sock.recv_into(buffer)
        except TimeoutError:
            raise RequestTimeout(self._message()) from None
        finally:
            self._sock.settimeout(self._send_timeout)
        self.received += n
        return n

    def _message(self) -> str:
        return f"{self._phase} not complete within {self._seconds:g} s"
