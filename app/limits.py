"""What keeps one demo client from holding the others back: the model's time handed out in turns, a cap on each
client's requests, and memory handed back to the system when the server goes idle.

A request's work is cut into slices (its loudest window, a few hops of its timeline, one live chunk); every slice
takes a turn in arrival order. A request that wants another slice queues behind the slices already waiting, so the
requests in flight share the model round-robin, and a short clip waits at most one slice per request ahead of it,
however long those requests are.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections import deque
from contextlib import contextmanager

MAX_IN_FLIGHT_PER_SESSION = 2  # one browser tab or one gradio_client.Client
MAX_IN_FLIGHT_PER_ADDRESS = 8
MAX_REQUESTS_PER_MINUTE_PER_ADDRESS = 60


class TooManyRequests(Exception):
    """A client over its limits; the message says which and is shown to it."""


class FairTurns:
    """One slice of model work at a time, handed out first come, first served (a ticket lock: Python's own Lock
    lets a thread that releases it take it straight back, starving the others). `active` counts the requests in
    flight; when the last one ends, the server is idle and `on_idle` runs (memory trimming)."""

    def __init__(self, on_idle=None):
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self.active = 0
        self.on_idle = on_idle

    @property
    def taken(self) -> int:
        """Turns handed out so far."""
        return self._next_ticket

    @contextmanager
    def turn(self):
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._cond.wait_for(lambda: self._serving == ticket)
        try:
            yield
        finally:
            with self._cond:
                self._serving += 1
                self._cond.notify_all()

    @contextmanager
    def request(self):
        """Counts a request in flight for as long as it runs."""
        with self._cond:
            self.active += 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self.active -= 1
                idle = self.active == 0
                self._cond.notify_all()
            if idle and self.on_idle is not None:
                self.on_idle()

    def wait_active(self, n: int, timeout: float | None = None) -> bool:
        """Wait until at least `n` requests are in flight (for tests); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.active >= n, timeout)


class ClientLimits:
    """Requests in flight per session and per address, and requests a minute per address. `admit` raises
    TooManyRequests before any work is done, so a refused request costs next to nothing."""

    def __init__(self, per_session=MAX_IN_FLIGHT_PER_SESSION, per_address=MAX_IN_FLIGHT_PER_ADDRESS,
                 per_minute=MAX_REQUESTS_PER_MINUTE_PER_ADDRESS, clock=time.monotonic):
        self.per_session, self.per_address, self.per_minute = per_session, per_address, per_minute
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, int] = {}
        self._addresses: dict[str, int] = {}
        self._recent: dict[str, deque] = {}  # address -> times of its requests in the last minute

    @contextmanager
    def admit(self, address: str, session: str):
        with self._lock:
            now = self.clock()
            recent = self._recent.setdefault(address, deque())
            while recent and recent[0] <= now - 60:
                recent.popleft()
            if len(recent) >= self.per_minute:
                raise TooManyRequests(f"Too many requests from {address}: at most {self.per_minute} a minute. "
                                      f"Try again in {recent[0] + 60 - now:.0f} s.")
            if self._addresses.get(address, 0) >= self.per_address:
                raise TooManyRequests(f"Too many requests from {address} at once: at most {self.per_address} "
                                      "in flight. Wait for an answer before sending more.")
            if self._sessions.get(session, 0) >= self.per_session:
                raise TooManyRequests(f"Too many requests from this session at once: at most {self.per_session} "
                                      "in flight. Wait for an answer before sending more.")
            recent.append(now)
            self._addresses[address] = self._addresses.get(address, 0) + 1
            self._sessions[session] = self._sessions.get(session, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for counts, key in ((self._addresses, address), (self._sessions, session)):
                    counts[key] -= 1
                    if counts[key] == 0:
                        del counts[key]  # the tables hold only clients with requests in flight
                for key in [k for k, times in self._recent.items() if times and times[-1] <= self.clock() - 60]:
                    del self._recent[key]  # and addresses heard from in the last minute


def trim_memory() -> bool:
    """Hand the heap's free memory back to the system (glibc's malloc_trim). The CLI raises glibc's trim threshold
    for training speed, so without this a demo keeps the peak of its busiest minute forever. False where there is
    no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
