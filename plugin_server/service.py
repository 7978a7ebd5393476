"""One base for every thread of the main process: started, stopped, health-checked and restarted alike.

A :class:`Service` runs its :meth:`~Service.run` loop on a daemon thread of
its own until :meth:`~Service.stop`. What every service gets from the base:

- **start / stop the same way.** ``start()`` starts the service's children
  (the lock keeper of the scheduler, ...; those already running are left so)
  then runs :meth:`prepare` on the
  caller's thread (a failure there fails the start) and the thread.
  ``stop()`` sets the stop flag, calls :meth:`interrupt` (to break a blocking
  wait), joins the thread, calls :meth:`cleanup`, then stops the children.
  ``run()`` is expected to return once :attr:`stopping` is set.
- **a crash is restarted with backoff, and logged.** An exception out of
  ``run()`` (or ``run()`` returning while no stop was asked for) is logged
  with its traceback, reported to Sentry (tag ``service``), counted in
  ``service.crashed`` and retried after ``restart_backoff × 2^(n-1)`` seconds
  (at most ``restart_backoff_max``); :meth:`recover` runs before the next
  ``run()``. A service that then ran for ``HEALTHY_AFTER`` seconds starts its
  backoff afresh.
- **health the same way.** :meth:`health` reports the state (``new``,
  ``starting``, ``running``, ``restarting``, ``stopping``, ``stopped``), the
  restarts so far, the last crash and :meth:`problem` (a service's own
  liveness test, such as a consumer whose loop has not gone round for
  minutes); :meth:`healthy` says whether it and its children are running
  without a problem. ``/_ready`` shows every service's health
  (:class:`ServiceGroup`).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

logger = logging.getLogger(__name__)

# A service that ran this long since its last (re)start is considered recovered: backoff starts over.
HEALTHY_AFTER = 60.0


class ServiceState(enum.StrEnum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Service:
    """A part of the main process that runs on its own thread (see the module docstring)."""

    name = "service"
    # False: a service with no thread of its own (its children have theirs); start/stop still apply.
    threaded = True
    restart_backoff = 1.0
    restart_backoff_max = 60.0

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = name
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = ServiceState.NEW
        self.restarts = 0
        self.last_error: str | None = None

    # --- what a service defines -----------------------------------------------------

    def run(self) -> None:
        """The service's work; loops until :attr:`stopping` is set, then returns."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Runs in :meth:`start` on the caller's thread, before the service's thread."""

    def interrupt(self) -> None:
        """Called by :meth:`stop` once the flag is set: wake ``run()`` from a blocking wait."""

    def cleanup(self) -> None:
        """Called by :meth:`stop` after the thread ended: release what the service holds."""

    def recover(self) -> None:
        """Called after a crash, before ``run()`` is called again."""

    def problem(self) -> str | None:
        """Why a running service is not healthy (None: it is)."""
        return None

    def children(self) -> Sequence[Service]:
        """Services started before this one and stopped after it."""
        return ()

    # --- the same for every service --------------------------------------------------

    @property
    def state(self) -> ServiceState:
        return self._state

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless stopped meanwhile; True when stopping."""
        return self._stopping.wait(seconds)

    def is_alive(self) -> bool:
        if not self.threaded:
            return self._state is ServiceState.RUNNING
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"service {self.name} already started")
        for child in self.children():
            if not child.is_alive():  # a child its owner started already is left running
                child.start()
        self._stopping.clear()
        self._state = ServiceState.STARTING
        self.prepare()
        if not self.threaded:
            self._state = ServiceState.RUNNING
            return
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Set the stop flag and interrupt ``run()`` without waiting for it."""
        if not self._stopping.is_set():
            self._stopping.set()
            self._state = ServiceState.STOPPING
            self.interrupt()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (joined up to ``timeout`` s), clean up, then stop the children."""
        self.request_stop()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("service %s did not stop within %.1fs", self.name, timeout)
        try:
            self.cleanup()
        finally:
            self._state = ServiceState.STOPPED
            for child in reversed(self.children()):
                child.stop()

    def health(self) -> dict[str, Any]:
        """This service's state, restarts, last crash and current problem."""
        report: dict[str, Any] = {"state": self._state.value, "restarts": self.restarts}
        if self.last_error:
            report["last_error"] = self.last_error
        if self._state is ServiceState.RUNNING:
            problem = self.problem()
            if problem:
                report["problem"] = problem
        return report

    def healthy(self) -> bool:
        return (
            self._state is ServiceState.RUNNING
            and self.problem() is None
            and all(child.healthy() for child in self.children())
        )

    def _main(self) -> None:
        failures = 0
        while True:
            self._state = ServiceState.RUNNING
            started = time.monotonic()
            try:
                self.run()
                if self._stopping.is_set():
                    return
                error: BaseException = RuntimeError("run() returned while no stop was asked for")
            except Exception as crash:  # noqa: BLE001 -- any crash is logged, reported and restarted
                if self._stopping.is_set():
                    logger.exception("service %s failed while stopping", self.name)
                    return
                error = crash
            failures = 1 if time.monotonic() - started >= HEALTHY_AFTER else failures + 1
            if not self._crashed(error, failures):
                return

    def _crashed(self, error: BaseException, failures: int) -> bool:
        """Log, report and wait out the backoff; False when stopped meanwhile."""
        from plugin_server.metrics import SERVICE_CRASHED, get_metrics

        self.restarts += 1
        self.last_error = f"{type(error).__name__}: {error}"
        delay = min(self.restart_backoff * 2 ** (failures - 1), self.restart_backoff_max)
        self._state = ServiceState.RESTARTING
        logger.error(
            "service %s crashed (%s); restarting in %.1fs",
            self.name,
            self.last_error,
            delay,
            exc_info=(type(error), error, error.__traceback__),
            extra={"service": self.name, "restarts": self.restarts},
        )
        # The ERROR line above is what Sentry receives (its logging integration), tagged service.
        get_metrics().incr(SERVICE_CRASHED, 1, {"service": self.name})
        while not self._stopping.wait(delay):
            try:
                self.recover()
                return True
            except Exception as again:  # noqa: BLE001 -- recovering failed: wait longer and try again
                delay = min(delay * 2, self.restart_backoff_max)
                self.last_error = f"{type(again).__name__}: {again}"
                logger.exception("service %s could not recover; trying again in %.1fs", self.name, delay)
        return False


class ServiceGroup:
    """The services of one server: started in order, stopped in a given order, health of all."""

    def __init__(self, stop_order: Sequence[str] = ()) -> None:
        self._services: list[Service] = []
        self._stop_order = {name: index for index, name in enumerate(stop_order)}

    def add(self, service: Service) -> Service:
        """Start ``service`` and keep it (stopped by :meth:`stop_all`)."""
        service.start()
        self._services.append(service)
        return service

    def __iter__(self) -> Iterator[Service]:
        return iter(list(self._services))

    def get(self, name: str) -> Service | None:
        return next((service for service in self._services if service.name == name), None)

    def all_services(self) -> Iterator[Service]:
        """Every service with its children, depth first."""

        def walk(service: Service) -> Iterator[Service]:
            yield service
            for child in service.children():
                yield from walk(child)

        for service in list(self._services):
            yield from walk(service)

    def health(self) -> dict[str, dict[str, Any]]:
        return {service.name: service.health() for service in self.all_services()}

    def healthy(self) -> bool:
        return all(service.healthy() for service in self._services)

    def stop_all(self) -> None:
        """Stop every service: named ones in the stop order, the others last in reverse start order."""
        rest = len(self._stop_order)
        ordered = sorted(
            enumerate(self._services),
            key=lambda item: (self._stop_order.get(item[1].name, rest), -item[0]),
        )
        for _index, service in ordered:
            try:
                service.stop()
            except Exception:  # noqa: BLE001 -- one service failing to stop must not keep the others running
                logger.exception("stopping the %s failed", service.name)
        self._services.clear()
