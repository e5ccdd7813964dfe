"""The event uplink: the outbox's events, in order, to the cloud; deleted only once accepted.

Batches go up one at a time at QoS 1 (docs/cloud-contract.md, "Events up"). A batch's events are
deleted from the outbox only after a PUBACK whose reason code is a success; any other reason code
(the broker refusing us, e.g. "not authorized") keeps them, raises one ``uplink.refused`` alarm per
run of refusals, and they are sent again after the backoff's delay. A crash between the PUBACK and
the delete sends that batch again after the restart: events carry unique ids for the cloud to
drop duplicates (at least once, never lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from gateway.backoff import Backoff
from gateway.cloud_messages import events_batches
from gateway.events import EventLog, LoggedEvent, new_event
from gateway.model import EventType
from gateway.mqtt_link import LinkClosed, MqttError, MqttLink
from gateway.outbox import Outbox, OutboxError

_LOGGER = logging.getLogger(__name__)

#: Events read from the outbox at a time (each read is cut into batches of the contract's size).
READ_CHUNK = 500
#: MQTT 5 reason codes that mean the broker took the message.
ACCEPTED = frozenset({0x00, 0x10})  # success; no matching subscribers


class EventUplink:
    """Drains the outbox to the broker while the link is up; ``sent`` counts delivered events."""

    def __init__(
        self,
        outbox: Outbox,
        link: MqttLink,
        events: EventLog,
        *,
        gateway_id: str,
        topic: str,
        clock: Callable[[], datetime],
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self._outbox = outbox
        self._link = link
        self._events = events
        self._gateway_id = gateway_id
        self._topic = topic
        self._clock = clock
        self._policy = backoff()
        self._more = asyncio.Event()
        self._more.set()  # whatever waits from before the start
        self._refused = False
        self._task: asyncio.Task[None] | None = None
        self._remove_listener: Callable[[], None] | None = None
        self.sent = 0

    async def start(self) -> None:
        """Start draining; new events wake it up."""
        self._remove_listener = self._events.add_listener(self._on_event)
        self._task = asyncio.create_task(self._run(), name="event-uplink")

    async def stop(self) -> None:
        """Stop; events not yet accepted stay in the outbox for the next start."""
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None

    def _on_event(self, logged: LoggedEvent) -> None:
        self._more.set()

    async def _run(self) -> None:
        while True:
            await self._more.wait()
            await self._link.wait_connected()
            self._more.clear()
            try:
                await self._drain()
            except LinkClosed:
                return
            # The outbox logs its own failures; paho not taking a message is not the end of the
            # uplink either: the events stay, the task lives on and tries again later.
            except (OutboxError, MqttError) as err:
                _LOGGER.warning("event uplink paused: %s", err)
                self._more.set()
                await asyncio.sleep(self._policy.next_delay())
            except Exception:  # e.g. an outbox row that no longer decodes: say it, keep going
                _LOGGER.exception("event uplink failed; trying again later")
                self._more.set()
                await asyncio.sleep(self._policy.next_delay())

    async def _drain(self) -> None:
        """Send everything the outbox holds, in order, until it is empty."""
        while True:
            stored = await self._outbox.pending(limit=READ_CHUNK)
            if not stored:
                return
            for payload, seqs in events_batches(self._gateway_id, stored):
                await self._deliver(payload, seqs)

    async def _deliver(self, payload: bytes, seqs: list[int]) -> None:
        """Publish one batch until the broker accepts it, then delete its events."""
        while True:
            code = await self._link.publish(self._topic, payload, qos=1)
            if code.value in ACCEPTED:
                await self._outbox.ack(seqs)
                self.sent += len(seqs)
                if self._refused:
                    _LOGGER.info("the broker accepts events again")
                    self._refused = False
                self._policy.reset()
                return
            await self._refusal(code.getName(), code.value, seqs)
            await asyncio.sleep(self._policy.next_delay())

    async def _refusal(self, name: str, value: int, seqs: list[int]) -> None:
        """Say so once per run of refusals: the events stay, nothing is dropped."""
        if self._refused:  # a transition is logged, its repetitions only at DEBUG
            _LOGGER.debug("the broker refused %d events again (%s)", len(seqs), name)
            return
        _LOGGER.error(
            "the broker refused %d events (%s, 0x%02X); they stay in the outbox",
            len(seqs),
            name,
            value,
        )
        self._refused = True
        data = {"reason": name, "code": value, "kept": len(seqs), "first_seq": seqs[0]}
        # Recorded without waiting on the uplink: it is in the outbox, it goes up when it can.
        await self._events.record(new_event(EventType.UPLINK_REFUSED, self._clock(), data))
