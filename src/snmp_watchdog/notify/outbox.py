"""Notifications waiting for their receivers, and the workers that deliver them.

Rules:

* ``submit()`` never blocks and never touches the network: it appends the
  message to the queue of each named receiver and returns.
* Each receiver has its own queue and its own worker task, so a slow or dead
  receiver delays nothing but itself: not the checks, not other receivers.
* Per receiver, notifications leave in the order they were submitted: the
  worker finishes with the oldest (delivered, or given up) before it starts
  the next, so a receiver that pairs Down with Up sees them in order.
* A trap is sent once; its outcome is logged. A trap that could not leave
  at all because the receiver has no address yet (``Delivery.unsent``: its
  name does not resolve, or not yet) stays queued, in the outbox, and is
  tried again like an inform.
* An inform is sent until it is acknowledged or ``give_up_after`` has passed
  since it was submitted. Each attempt waits up to ``receiver.timeout``;
  between attempts the pause grows exponentially with random jitter
  (tenacity's ``wait_exponential_jitter``) up to ``backoff_max``. An attempt
  that would start after the deadline is not made. Every failed attempt is
  logged with its reason, and so is giving up.
* A worker that dies of an unexpected exception (a bug, a library that
  changed under us) is logged as an error with its traceback and started
  again after ``restart_delay`` seconds: what it was delivering stays queued.
* The receiver's current definition is read at every attempt, so a reload
  that changes its keys or address applies to notifications already queued.
  A receiver removed by a reload loses its queue (logged with the count).
* Queues sit behind the small ``PendingQueue`` interface; ``MemoryQueue`` is
  the in-memory one. A durable queue (notifications not yet acknowledged kept
  across restarts) implements the same four methods.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tenacity import AsyncRetrying, RetryCallState, retry_if_result, wait_exponential_jitter
from tenacity.stop import stop_base

from snmp_watchdog import model
from snmp_watchdog.notify.message import Message
from snmp_watchdog.notify.sender import Delivery, Sender


@dataclass(frozen=True, slots=True)
class Pending:
    """One notification waiting for one receiver."""

    receiver: str
    message: Message
    submitted: float  # on the dispatcher's clock (monotonic seconds)
    key: int = 0  # the queue's own handle (a durable queue's row id)


class PendingQueue(Protocol):
    """The notifications of one receiver, oldest first."""

    def append(self, item: Pending) -> None: ...

    def append_volatile(self, item: Pending) -> None:
        """Queue ``item`` in memory only (a durable queue whose storage is failing)."""
        ...

    async def head(self) -> Pending:
        """The oldest notification, waiting until there is one."""
        ...

    def remove(self, item: Pending) -> None:
        """Forget ``item`` (the head): it was delivered or given up."""
        ...

    def failed(self, item: Pending, error: str) -> None:
        """Note a failed attempt (what ``watchdog status`` shows)."""
        ...

    def clear(self) -> int:
        """Forget everything (the receiver was removed); returns how many were dropped."""
        ...

    def __len__(self) -> int: ...


class MemoryQueue:
    """A ``PendingQueue`` in memory: lost when the process stops."""

    def __init__(self) -> None:
        self._items: collections.deque[Pending] = collections.deque()
        self._added = asyncio.Event()

    def append(self, item: Pending) -> None:
        self._items.append(item)
        self._added.set()

    append_volatile = append

    async def head(self) -> Pending:
        while not self._items:
            self._added.clear()
            await self._added.wait()
        return self._items[0]

    def remove(self, item: Pending) -> None:
        self._items.remove(item)

    def failed(self, item: Pending, error: str) -> None:
        pass

    def clear(self) -> int:
        dropped = len(self._items)
        self._items.clear()
        return dropped

    def __len__(self) -> int:
        return len(self._items)


class _GiveUpAt(stop_base):
    """Stop when the next attempt would start at or after ``deadline``."""

    def __init__(self, deadline: float, clock: Callable[[], float]) -> None:
        self.deadline = deadline
        self.clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock() + retry_state.upcoming_sleep >= self.deadline


def notification_label(message: Message) -> str:
    """How logs name a notification: ``down #17 (mail)``."""
    about = f" ({message.service})" if message.service is not None else ""
    return f"{message.kind} #{message.sequence}{about}"


class Dispatcher:
    """Delivers submitted notifications to their receivers through one ``Sender``."""

    def __init__(
        self,
        sender: Sender,
        receivers: Sequence[model.Receiver],
        *,
        log: logging.Logger,
        queue_factory: Callable[[str], PendingQueue] = lambda _name: MemoryQueue(),
        backoff_initial: float = 1.0,
        backoff_max: float = 300.0,
        backoff_jitter: float = 1.0,
        restart_delay: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sender = sender
        self._receivers = {r.name: r for r in receivers}
        self._log = log
        self._queue_factory = queue_factory
        self._backoff = (backoff_initial, backoff_max, backoff_jitter)
        self._clock = clock
        self._queues: dict[str, PendingQueue] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._restart_delay = restart_delay
        self._restarts: dict[str, asyncio.TimerHandle] = {}
        # What each worker is delivering, and how often in a row it died on it.
        self._sending: dict[str, Pending] = {}
        self._crashes: dict[str, int] = {}
        self._closed = False
        self._progress = asyncio.Event()  # set whenever a queue shrinks

    def submit(
        self, message: Message, receiver_names: Sequence[str], *, volatile: bool = False
    ) -> None:
        """Queue ``message`` for each receiver; returns at once (needs the running loop).

        ``volatile``: keep it in memory only, even in a durable queue (its storage failed).
        """
        now = self._clock()
        for name in receiver_names:
            if name not in self._receivers:
                self._log.warning("%s: no receiver named %r", notification_label(message), name)
                continue
            if name not in self._queues:
                self._queues[name] = self._queue_factory(name)
            queue = self._queues[name]
            if volatile:
                queue.append_volatile(Pending(name, message, now))
            else:
                queue.append(Pending(name, message, now))
            self._ensure_worker(name)

    def wake(self, name: str) -> bool:
        """Deliver what the queue of ``name`` holds (written to it directly, not submitted).

        False when there is no such receiver.
        """
        if name not in self._receivers:
            return False
        if name not in self._queues:
            self._queues[name] = self._queue_factory(name)
        self._ensure_worker(name)
        return True

    def resume(self) -> None:
        """Start delivering what the queues already hold (a durable queue after a restart)."""
        for name in self._receivers:
            if name not in self._queues:
                self._queues[name] = self._queue_factory(name)
            if len(self._queues[name]):
                self._ensure_worker(name)

    def pending(self, receiver: str | None = None) -> int:
        """How many notifications wait (including those being sent now)."""
        if receiver is not None:
            queue = self._queues.get(receiver)
            return len(queue) if queue is not None else 0
        return sum(len(q) for q in self._queues.values())

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 (shutdown gives it a budget)
        """Wait until every queue is empty, or ``timeout`` seconds; see ``pending()`` after."""
        try:
            async with asyncio.timeout(timeout):
                while self.pending():
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            return

    async def reconfigure(
        self, receivers: Sequence[model.Receiver], *, allow_weak_crypto: bool | None = None
    ) -> None:
        """Apply a reload to the sender and the queues (removed receivers lose theirs)."""
        await self._sender.reconfigure(receivers, allow_weak_crypto=allow_weak_crypto)
        self._receivers = {r.name: r for r in receivers}
        for name in [n for n in self._queues if n not in self._receivers]:
            restart = self._restarts.pop(name, None)
            if restart is not None:
                restart.cancel()
            worker = self._workers.pop(name, None)
            if worker is not None:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
            self._sending.pop(name, None)
            self._crashes.pop(name, None)
            dropped = self._queues.pop(name).clear()
            if dropped:
                self._log.warning(
                    "receiver %s removed: %d notification(s) for it dropped", name, dropped
                )
        self._progress.set()

    async def close(self) -> None:
        """Stop the workers (before closing the sender); what is queued stays queued."""
        self._closed = True
        for restart in self._restarts.values():
            restart.cancel()
        self._restarts.clear()
        workers = list(self._workers.values())
        self._workers.clear()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    # -- workers ------------------------------------------------------------

    def _ensure_worker(self, name: str) -> None:
        if self._closed or name in self._restarts:
            return  # a crashed worker comes back by itself after its delay
        worker = self._workers.get(name)
        if worker is None or worker.done():
            worker = asyncio.get_running_loop().create_task(self._work(name), name=f"notify {name}")
            worker.add_done_callback(functools.partial(self._worker_done, name))
            self._workers[name] = worker

    def _worker_done(self, name: str, worker: asyncio.Task[None]) -> None:
        if worker.cancelled() or worker.exception() is None:
            return
        error = worker.exception()
        item = self._sending.pop(name, None)
        crashes = self._crashes[name] = self._crashes.get(name, 0) + 1
        # Each death in a row on the same notification doubles the pause, and one
        # older than ``give_up_after`` is given up: a notification that always
        # makes delivery fail cannot hold its receiver's queue for ever.
        delay = min(self._restart_delay * 2 ** (crashes - 1), self._backoff[1])
        queue = self._queues.get(name)
        receiver = self._receivers.get(name)
        if (
            item is not None
            and queue is not None
            and receiver is not None
            and self._clock() >= item.submitted + receiver.give_up_after
        ):
            self._give_up(item, crashes, f"delivery stopped by an internal error: {error!r}")
            queue.remove(item)
            self._crashes.pop(name, None)
            delay = 0.0
        self._log.error(
            "delivery to %s stopped by an internal error; %d notification(s) wait, "
            "restarting it in %.0f s",
            name,
            len(queue) if queue is not None else 0,
            delay,
            exc_info=error,
        )
        if self._closed or self._workers.get(name) is not worker:
            return
        self._restarts[name] = asyncio.get_running_loop().call_later(delay, self._restart, name)

    def _restart(self, name: str) -> None:
        self._restarts.pop(name, None)
        if name in self._receivers and name in self._queues:
            self._log.info("delivery to %s restarted", name)
            self._ensure_worker(name)

    async def _work(self, name: str) -> None:
        queue = self._queues[name]
        while True:
            item = await queue.head()
            self._sending[name] = item
            receiver = self._receivers[name]
            if receiver.informs:
                await self._inform(item)
            else:
                await self._trap(item)
            queue.remove(item)
            del self._sending[name]
            self._crashes.pop(name, None)
            self._progress.set()
            # A trap send and the queue's bookkeeping never suspend: without this,
            # a burst of traps would hold the event loop (and every check) until
            # the whole burst had left.
            await asyncio.sleep(0)

    async def _trap(self, item: Pending) -> None:
        delivery = await self._attempt(item)
        if delivery.unsent:  # the receiver has no address yet: wait for it
            retried = await self._retry(item, lambda d: d.unsent, first=delivery)
            if retried is None:
                return
            delivery = retried
        if delivery.ok:
            self._log.info("%s sent to %s", notification_label(item.message), item.receiver)
        else:
            self._log.warning(
                "%s to %s failed: %s",
                notification_label(item.message),
                item.receiver,
                delivery.error,
            )

    async def _inform(self, item: Pending) -> None:
        delivery = await self._retry(item, lambda d: d.error is not None)
        if delivery is not None:
            self._log.info("%s to %s %s", notification_label(item.message), item.receiver, delivery)

    async def _retry(
        self,
        item: Pending,
        again: Callable[[Delivery], bool],
        first: Delivery | None = None,
    ) -> Delivery | None:
        """Attempts until ``again`` is false (that delivery) or the deadline (None: given up).

        ``first``: the outcome of an attempt already made.
        """
        multiplier, maximum, jitter = self._backoff
        deadline = item.submitted + self._receivers[item.receiver].give_up_after
        if self._clock() >= deadline:  # possible for a queue that survived a restart
            self._give_up(item, 0, "too old before the first attempt")
            return None
        made = [first] if first is not None else []

        async def attempt(item: Pending) -> Delivery:
            if made:
                return made.pop()
            return await self._attempt(item)

        retrying = AsyncRetrying(
            retry=retry_if_result(again),
            wait=wait_exponential_jitter(multiplier=multiplier, max=maximum, jitter=jitter),
            stop=_GiveUpAt(deadline, self._clock),
            before_sleep=lambda state: self._failed_attempt(item, state),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        delivery: Delivery | None = await retrying(attempt, item)
        if delivery is not None and not again(delivery):
            return delivery
        attempts = retrying.statistics.get("attempt_number", 0)
        self._give_up(item, attempts, delivery.error if delivery is not None else "?")
        return None

    def _give_up(self, item: Pending, attempts: int, error: str | None) -> None:
        self._log.error(
            "%s to %s given up after %d attempt(s) in %.0f s: %s",
            notification_label(item.message),
            item.receiver,
            attempts,
            self._clock() - item.submitted,
            error,
        )

    async def _attempt(self, item: Pending) -> Delivery:
        return await self._sender.send(self._receivers[item.receiver], item.message)

    def _failed_attempt(self, item: Pending, state: RetryCallState) -> None:
        delivery = state.outcome.result() if state.outcome is not None else None
        error = delivery.error if isinstance(delivery, Delivery) and delivery.error else "?"
        self._queues[item.receiver].failed(item, error)
        self._log.warning(
            "%s to %s not %s (attempt %d): %s; next attempt in %.1f s",
            notification_label(item.message),
            item.receiver,
            "sent" if isinstance(delivery, Delivery) and delivery.unsent else "acknowledged",
            state.attempt_number,
            delivery.error if isinstance(delivery, Delivery) else "?",
            state.upcoming_sleep,
        )
