"""The ``--workers`` supervisor: forks the workers, restarts each that dies, forwards
SIGTERM/SIGINT to them, and hands them a pipe whose end tells them that it died.

A worker that keeps dying is restarted with a growing delay (at once the first time, then
``FIRST_DELAY`` doubling up to ``MAX_DELAY``) while the others keep serving; the supervisor
never gives up. One line is logged when a worker starts failing and one when it has run
``STABLE_AFTER`` seconds again, not one per death (docs/deploying.md).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable

import attrs

from midway.config import ConfigError

log = logging.getLogger("midway")

FIRST_DELAY = 0.25  # seconds before the second restart in a row of one worker
MAX_DELAY = 30.0  # the longest wait between two restarts of one worker
EX_CONFIG = 78  # a worker's exit status for a configuration mistake (sysexits.h)
STABLE_AFTER = 60.0  # a worker that has run this long is healthy again (its delays reset)

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}


def restart_delay(failures: int) -> float:
    """Seconds before restarting a worker that died ``failures`` times in a row."""
    if failures <= 1:
        return 0.0
    return float(min(FIRST_DELAY * 2 ** (failures - 2), MAX_DELAY))


@attrs.define
class Slot:
    """One worker's place: the process in it now, and how it has been failing."""

    index: int
    pid: int = 0
    started: float = 0.0
    failures: int = 0  # deaths in a row, each within STABLE_AFTER of its start
    since: float = 0.0  # when the first of them happened
    due: float | None = None  # when to start it again (None: running, or stopping)


def supervise(count: int, work: Callable[[int, int], None]) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT; the exit status.

    ``work(index, supervisor)`` runs one worker in a forked child; ``supervisor`` is the
    read end of a pipe that becomes readable (at its end) once this process is gone, however
    it died: the worker must then stop.
    """
    alive_r, alive_w = os.pipe()  # only this process holds the write end
    wake_r, wake_w = os.pipe()  # signals wake the loop below (signal.set_wakeup_fd)
    # One token: the first worker to find a configuration mistake takes it and says it; the
    # others (read: end of file) stay quiet. Worker 0 alone saying it would say nothing when
    # another worker fails first and the stop that follows ends worker 0.
    said_r, said_w = os.pipe()
    os.write(said_w, b"!")
    os.close(said_w)
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    slots = [Slot(index) for index in range(count)]
    running: dict[int, Slot] = {}
    stopping = False

    def spawn(slot: Slot) -> None:
        # Signals stay blocked across the fork: a child must not run this process's handlers.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _child(slot.index, work, alive_r, said_r, (alive_w, wake_r, wake_w))
            slot.pid, slot.started, slot.due = pid, time.monotonic(), None
            running[pid] = slot  # before a SIGTERM held back by the mask can look for it
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in running:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the loop
    for slot in slots:
        spawn(slot)
    status = 0
    while True:
        for pid, code in _reap():
            gone = running.pop(pid, None)
            if gone is None:
                continue
            exit_code = os.waitstatus_to_exitcode(code)
            if stopping:
                status = status or exit_code
            elif exit_code == EX_CONFIG:  # a configuration mistake: restarting cannot help
                status = 1
                stop(signal.SIGTERM, None)
            else:
                _died(gone, exit_code)
        if stopping and not running:
            break
        now = time.monotonic()
        wait: float | None = None
        for slot in slots:
            if slot.due is not None and not stopping:
                if slot.due <= now:
                    spawn(slot)
                else:
                    wait = _sooner(wait, slot.due - now)
            elif slot.failures and slot.pid in running:
                healthy_at = slot.started + STABLE_AFTER
                if healthy_at <= now:
                    log.warning("worker %d has run %.0f s again after %d restart(s) in %.0f s",
                                slot.index, STABLE_AFTER, slot.failures, slot.started -
                                slot.since)
                    slot.failures = 0
                else:
                    wait = _sooner(wait, healthy_at - now)
        select.select([wake_r], [], [], wait)
        try:
            while os.read(wake_r, 512):
                pass
        except BlockingIOError:
            pass
    signal.set_wakeup_fd(-1)
    os.close(said_r)
    return status


def _child(index: int, work: Callable[[int, int], None], supervisor: int, said: int,
           close: tuple[int, ...]) -> None:
    """The forked worker: the supervisor's signal handling undone, then ``work``; exits."""
    code = 0
    try:
        signal.set_wakeup_fd(-1)
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        for fd in close:
            os.close(fd)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        work(index, supervisor)
    except ConfigError as exc:  # every worker would fail alike: said once, never restarted
        if os.read(said, 1):  # the first to fail says it; the rest read end of file
            # One write (print makes two: the text, then its newline), so that another
            # worker's log line cannot land between them on the shared stderr.
            sys.stderr.write(f"Error: {exc}\n")
            sys.stderr.flush()
        code = EX_CONFIG
    except BaseException:
        log.exception("worker %d failed", index)
        code = 1
    os._exit(code)


def _died(slot: Slot, exit_code: int) -> None:
    now = time.monotonic()
    if now - slot.started >= STABLE_AFTER:
        slot.failures = 0
    slot.failures += 1
    delay = restart_delay(slot.failures)
    slot.due = now + delay
    if slot.failures == 1:
        slot.since = now
        log.error("worker %d (pid %d) exited with %d: restarting it; while it keeps exiting, "
                  "restarts back off (%.2f s doubling to %.0f s) and the other workers serve",
                  slot.index, slot.pid, exit_code, FIRST_DELAY, MAX_DELAY)


def _reap() -> list[tuple[int, int]]:
    """The children that have exited (pid, wait status), without blocking."""
    done: list[tuple[int, int]] = []
    while True:
        try:
            pid, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append((pid, code))


def _sooner(wait: float | None, seconds: float) -> float:
    return seconds if wait is None else min(wait, seconds)
