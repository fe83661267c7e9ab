"""A receiver's queue kept in the state database, so a restart loses nothing.

Every notification, trap or inform, is written to the store's outbox when it
is submitted (``write``, in the caller's transaction, together with the
service state that produced it) and deleted only once it has left (a trap) or
been acknowledged or given up (an inform). A crash between the two sends it
again after the restart: at least once, never lost. The queue speaks to the
store only through the async ``StateStore`` interface; the writes that follow
a delivery (the delete, an attempt's error) run in tasks of their own, in the
order they were made, so the dispatcher's calls never wait for the store.

Memory stays bounded however long a receiver is away: the queue holds at most
``window`` notifications in memory and reads the next ones from the database
as it goes. They are kept as stored and decoded one at a time, when one
becomes the head: decoding builds the message's SNMP values, and a whole
window of them at once would hold the event loop (and every check) for tens of
milliseconds in a burst.

Heartbeats are kept in memory only (``append_volatile``); a new one replaces
an older one still waiting, so a receiver away for days does not pile them up.

When the database cannot be written (a full disk, a read-only file system),
the caller hands notifications to ``append_volatile``: they are kept in
memory and lost only if the process stops before they leave. Stored and
volatile notifications leave in the order of their sequence numbers, which is
the order they were made in, so a Down kept in memory is not overtaken by the
Up stored after the database came back. A delivered notification whose
delete failed then is not sent again by this process, and its delete is
tried again (``retry_deletes``: once the database is writable again, and when
the queue settles at a stop), so that a restart does not send it twice.

Ages survive clock steps. The outbox stores when a notification was made as
wall-clock time (``created``: ``give_up_after`` counts across restarts), but
within this process the monotonic clock is the truth: a row this queue wrote
is read back with the wall-minus-monotonic offset it was written with, so a
step of the wall clock between the two (an NTP correction, an operator's
``date``) neither ages it (which could make it be given up unsent) nor makes
it younger. Rows of an earlier process are read with the offset seen when
this queue was made.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from snmp_watchdog.clocks import to_mono, to_wall
from snmp_watchdog.exceptions import StoreError
from snmp_watchdog.notify.message import Message, decode, encode
from snmp_watchdog.notify.outbox import Pending
from snmp_watchdog.store import OutboxRow

if TYPE_CHECKING:
    from snmp_watchdog.storage import StateStore

log = logging.getLogger("snmp_watchdog")

#: A change of the wall-minus-monotonic offset larger than this is a step of the
#: wall clock (NTP slewing moves it by far less between two notifications).
CLOCK_STEP = 1.0


class StoreQueue:
    """A ``PendingQueue`` backed by the store's outbox table."""

    def __init__(
        self,
        store: StateStore,
        receiver: str,
        *,
        window: int = 100,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._receiver = receiver
        self._window = window
        self._clock = clock
        self._wall = wall
        self._items: collections.deque[Pending] = collections.deque()  # the stored head, decoded
        # Loaded from the store, not decoded yet: (row, when it was submitted).
        self._rows: collections.deque[tuple[OutboxRow, float]] = collections.deque()
        self._volatile: collections.deque[Pending] = collections.deque()  # store not writable
        self._last_loaded = 0  # highest row id loaded so far
        # Rows stored beyond ``_last_loaded``, as far as this queue knows (exact after a load).
        self._unloaded = 0
        # (first row id, wall - monotonic offset) for the rows from that id on; a new
        # entry only when the offset moved (the wall clock was stepped).
        self._frames: list[tuple[int, float]] = [(0, wall() - clock())]
        # Delivered, their delete not yet committed: never loaded (so never sent) again.
        self._removed: set[int] = set()
        self._undeleted: list[int] = []  # delivered, their delete failed: to try again
        self._writes: asyncio.Task[None] | None = None  # the last of the writes in order
        self._added = asyncio.Event()

    async def count(self) -> int:
        """How many are waiting, counted in the store (at start: what a restart left)."""
        with contextlib.suppress(StoreError):
            self._unloaded = await self._store.count_pending(
                self._receiver, after=self._last_loaded
            )
        return len(self)

    async def write(self, item: Pending) -> int:
        """Write ``item`` to the outbox (in the caller's transaction, if any); its row id."""
        mono, wall = self._clock(), self._wall()
        offset = wall - mono
        row = await self._store.enqueue(
            self._receiver,
            encode(item.message),
            created=to_wall(item.submitted, mono_now=mono, wall_now=wall),
            sequence=item.message.sequence,
        )
        if abs(offset - self._frames[-1][1]) > CLOCK_STEP:
            self._frames.append((row, offset))
        self._unloaded += 1  # made exact by the next load, should the transaction fail
        self._added.set()
        return row

    def append(self, item: Pending) -> None:
        raise AssertionError("stored notifications are added with write(), in a transaction")

    def append_volatile(self, item: Pending) -> None:
        if item.message.kind == "heartbeat":
            # A heartbeat says how things are now: an older one still waiting behind
            # a receiver that is away has no value any more (the first one waiting
            # is left alone: it may be leaving right now). Memory stays bounded.
            stale = [p for p in list(self._volatile)[1:] if p.message.kind == "heartbeat"]
            for old in stale:
                self._volatile.remove(old)
        self._volatile.append(item)
        self._added.set()

    async def head(self) -> Pending:
        while True:
            if not self._items:
                if not self._rows:
                    await self._load()
                self._decode_next()
            if self._items and self._volatile:
                stored, volatile = self._items[0], self._volatile[0]
                return stored if stored.message.sequence < volatile.message.sequence else volatile
            if self._items:
                return self._items[0]
            if self._volatile:
                return self._volatile[0]
            self._added.clear()
            await self._added.wait()

    def remove(self, item: Pending) -> None:
        if item.key == 0:
            self._volatile.remove(item)
            return
        self._items.remove(item)
        self._removed.add(item.key)
        self._later(self._delete(item.key))

    async def _delete(self, key: int) -> None:
        try:
            await self._store.remove(key)
        except StoreError:
            self._undeleted.append(key)  # not sent again by this process; tried again later
            return
        self._removed.discard(key)

    def retry_deletes(self) -> None:
        """Try again the deletes that failed (the database may be writable again)."""
        if self._undeleted:
            self._later(self._retry_deletes())

    async def _retry_deletes(self) -> None:
        keys, self._undeleted = self._undeleted, []
        for done, key in enumerate(keys):
            try:
                await self._store.remove(key)
            except StoreError:
                self._undeleted = keys[done:] + self._undeleted
                return
            self._removed.discard(key)
        log.info(
            "outbox of %s: %d delivered notification(s) deleted now that the state database "
            "can be written",
            self._receiver,
            len(keys),
        )

    def failed(self, item: Pending, error: str) -> None:
        if item.key:
            self._later(self._store.mark_attempt(item.key, error))  # only for `watchdog status`

    def clear(self) -> int:
        dropped = len(self)
        self._items.clear()
        self._rows.clear()
        self._volatile.clear()
        self._unloaded = 0
        self._later(self._store.discard(self._receiver))
        return dropped

    def __len__(self) -> int:
        return len(self._items) + len(self._rows) + self._unloaded + len(self._volatile)

    def _later(self, write: Awaitable[object]) -> None:
        """Run ``write`` after the writes started before it (a failure is not fatal)."""
        previous = self._writes

        async def run() -> None:
            if previous is not None:
                await asyncio.shield(previous)
            try:
                await write
            except StoreError as exc:
                log.debug("outbox of %s: %s", self._receiver, exc)

        self._writes = asyncio.get_running_loop().create_task(run())

    async def settle(self) -> None:
        """Wait for the writes started so far (the failed deletes tried again)."""
        self.retry_deletes()
        if self._writes is not None:
            await asyncio.shield(self._writes)

    async def _load(self) -> None:
        """Read the next window of stored rows (not decoded: see ``_decode_next``)."""
        try:
            rows = await self._store.pending(self._receiver, self._window, after=self._last_loaded)
        except StoreError:
            return
        mono = self._clock()
        self._unloaded = max(0, self._unloaded - len(rows)) if len(rows) == self._window else 0
        for row in rows:
            self._last_loaded = row.id
            if row.id in self._removed:
                continue
            # Now on the wall clock as the row's writer saw it: a step since does not count.
            wall = mono + self._offset(row.id)
            self._rows.append((row, to_mono(row.created, mono_now=mono, wall_now=wall)))
        while len(self._frames) > 1 and self._frames[1][0] <= self._last_loaded + 1:
            self._frames.pop(0)  # only rows not loaded yet need their frame

    def _decode_next(self) -> None:
        """Decode loaded rows until one is readable; it becomes the stored head."""
        while self._rows:
            row, submitted = self._rows.popleft()
            try:
                message: Message = decode(row.payload)
            except ValueError as exc:
                log.error(
                    "stored notification %d for %s is unreadable and dropped: %s",
                    row.id,
                    self._receiver,
                    exc,
                )
                self._removed.add(row.id)
                self._later(self._delete(row.id))
                continue
            self._items.append(Pending(self._receiver, message, submitted, row.id))
            return

    def _offset(self, row: int) -> float:
        """The wall-minus-monotonic offset row ``row`` was written with (see the module)."""
        for first, offset in reversed(self._frames):
            if row >= first:
                return offset
        return self._frames[0][1]
