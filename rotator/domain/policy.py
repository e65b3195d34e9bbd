"""Rotation policy: when a key is due, computed from its certificate's dates and a given time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from rotator.domain.lifecycle import KeyRecord


@dataclass(frozen=True)
class RotationPolicy:
    """Rotate when the certificate has less than `renew_before` left or the key is older than
    its cryptoperiod, whichever comes first."""

    renew_before: timedelta = timedelta(days=30)
    cryptoperiod: timedelta = timedelta(days=365)


@dataclass(frozen=True)
class Due:
    """Whether a key must be rotated at a given time, and why (for output and reports)."""

    due: bool
    reason: str
    due_at: datetime | None


def rotation_due(key: KeyRecord, policy: RotationPolicy, now: datetime) -> Due:
    """Pure: the key's dates and the time are all it looks at."""
    if key.not_after is None or key.not_before is None:
        return Due(True, "certificate unknown (adopted without one): replace it", None)
    renew_at = key.not_after - policy.renew_before
    cryptoperiod_ends = cryptoperiod_end(key, policy)
    due_at = min(renew_at, cryptoperiod_ends)
    if now >= key.not_after:
        return Due(True, f"certificate expired on {key.not_after:%Y-%m-%d}", due_at)
    if now >= renew_at:
        return Due(
            True,
            f"certificate expires on {key.not_after:%Y-%m-%d}, inside the renew window",
            due_at,
        )
    if now >= cryptoperiod_ends:
        return Due(True, f"cryptoperiod ended on {cryptoperiod_ends:%Y-%m-%d}", due_at)
    return Due(False, f"next rotation due {due_at:%Y-%m-%d}", due_at)


def key_age_start(key: KeyRecord) -> datetime:
    """Where a key's cryptoperiod starts: its certificate's NotBefore, else its creation."""
    return key.not_before or key.created_at


def cryptoperiod_end(key: KeyRecord, policy: RotationPolicy) -> datetime:
    return key_age_start(key) + policy.cryptoperiod


def renew_window_start(key: KeyRecord, policy: RotationPolicy) -> datetime | None:
    """When the certificate enters its renew window (None if its expiry is unknown)."""
    return None if key.not_after is None else key.not_after - policy.renew_before


def should_rotate(key: KeyRecord, policy: RotationPolicy, now: datetime) -> bool:
    return rotation_due(key, policy, now).due
