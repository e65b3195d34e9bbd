"""Expiry events, like ACM's: which days-before-NotAfter thresholds a key has newly crossed."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rotator.domain.history import EventKind, HistoryEvent
from rotator.domain.lifecycle import KeyRecord, KeyState

DEFAULT_EXPIRY_EVENT_DAYS = (45, 30, 14, 7, 3, 1)
EXPIRY_EVENT_SOURCE = "connect-key-rotator"
EXPIRY_EVENT_DETAIL_TYPE = "Connect Key Approaching Expiration"
# Keys that Connect encrypts with now; a previous key no longer encrypts and is retired at the
# end of its grace period, a pending one is minutes old.
EXPIRY_EVENT_STATES = frozenset({KeyState.ACTIVE})


@dataclass(frozen=True)
class KeyExpiry:
    """One key's days to expiry as the rotation job computed them, and the key's state then."""

    instance_id: str
    key_id: str
    state: str
    days: float


def parse_thresholds(text: str) -> tuple[int, ...]:
    """`"45,30,14"` -> (45, 30, 14), widest first; empty: no thresholds (no events). Raises
    ValueError saying what is wrong."""
    days: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        if not item and not text.strip():
            continue
        if not item.isdigit() or int(item) <= 0:
            raise ValueError(
                f"{item!r} is not a positive whole number of days (a list like 45,30,14,7,3,1)"
            )
        days.add(int(item))
    return tuple(sorted(days, reverse=True))


def format_thresholds(days: Iterable[int]) -> str:
    return ",".join(str(day) for day in sorted(set(days), reverse=True))


DEFAULT_EXPIRY_EVENT_DAYS_TEXT = format_thresholds(DEFAULT_EXPIRY_EVENT_DAYS)


@dataclass(frozen=True)
class Crossing:
    """What one run owes a key: one event for `threshold`, the tightest threshold crossed and
    not yet sent, standing for every threshold in `covered` (itself and any wider ones crossed
    since the last event, which get no event of their own)."""

    threshold: int
    covered: tuple[int, ...]


def newly_crossed(
    days_to_expiry: float, thresholds: Iterable[int], recorded: Iterable[int]
) -> Crossing | None:
    """The thresholds crossed (`days_to_expiry` at or below them) that are tighter than every
    threshold already recorded for the key; None when there is none. A key first seen at 13
    days with (45, 30, 14) gets one event, for 14, that covers 45 and 30 too: one alert that
    says how close expiry is, not three at once. Thresholds added to the setting later that
    are wider than one already sent are never owed."""
    sent = set(recorded)
    tightest_sent = min(sent, default=None)
    owed = sorted(
        (
            t
            for t in set(thresholds)
            if days_to_expiry <= t and (tightest_sent is None or t < tightest_sent)
        ),
        reverse=True,
    )
    if not owed:
        return None
    return Crossing(threshold=owed[-1], covered=tuple(owed))


def whole_days(days_to_expiry: float) -> int:
    """Days to expiry as the event states them: whole days left, rounded down (ACM's)."""
    return math.floor(days_to_expiry)


def event_detail(record: KeyRecord, now: datetime, threshold: int) -> dict[str, Any]:
    """The event's detail; its field names are a contract (rules and consumers match them)."""
    if record.not_after is None:
        raise ValueError(f"key {record.key_id} has no NotAfter")
    return {
        "keyId": record.key_id,
        "instanceId": record.instance_id,
        "state": record.state.value,
        "notAfter": record.not_after.isoformat(),
        "daysToExpiry": whole_days(record.days_to_expiry(now) or 0.0),
        "threshold": threshold,
    }


def sent_event(record: KeyRecord, crossing: Crossing, now: datetime, actor: str) -> HistoryEvent:
    """The history's record that the event for `crossing` was put on the bus (the keyring
    stamps which clock `now` is from)."""
    detail = event_detail(record, now, crossing.threshold)
    return HistoryEvent(
        kind=EventKind.EXPIRY_EVENT_SENT,
        at=now,
        actor=actor,
        instance_id=record.instance_id,
        key_id=record.key_id,
        reason=f"{detail['daysToExpiry']} days to expiry: crossed {crossing.threshold} days",
        details={
            "threshold": crossing.threshold,
            "covered": list(crossing.covered),
            "days_to_expiry": detail["daysToExpiry"],
            "not_after": detail["notAfter"],
        },
    )


def recorded_thresholds(events: Iterable[HistoryEvent]) -> dict[str, set[int]]:
    """Key ID -> every threshold its expiry_event_sent events cover."""
    found: dict[str, set[int]] = {}
    for event in events:
        if event.kind != EventKind.EXPIRY_EVENT_SENT or event.key_id is None:
            continue
        covered = event.details.get("covered", [event.details.get("threshold")])
        found.setdefault(event.key_id, set()).update(
            int(day) for day in covered if isinstance(day, int)
        )
    return found
