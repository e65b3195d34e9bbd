"""Inventory of stored Connect ciphertexts per key ID (headers only), and destroy's check of it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rotator.domain.history import ClockKind, EventKind, HistoryEvent
from rotator.domain.stored_ciphertext import Inventory
from rotator.domain.stored_ciphertext import last_inventories as domain_last_inventories
from rotator.errors import ConnectKeyRotatorError
from rotator.ports import CiphertextStore, Keyring


class StoredCiphertextsRemain(ConnectKeyRotatorError):
    """A key cannot be destroyed: registered stores still hold ciphertexts under it."""


def take_inventory(stores: Sequence[CiphertextStore], *, key_id: str | None = None) -> Inventory:
    """Count every stored Connect ciphertext per key ID (only `key_id`'s if given). Reads each
    record once and each value's header only; nothing is decrypted."""
    inventory = Inventory([store.uri for store in stores])
    for store in stores:
        for record in store.records():
            inventory.add(record, only_key=key_id)
    return inventory


def inventory_event(
    inventory: Inventory,
    at: datetime,
    actor: str,
    *,
    key_id: str | None = None,
    reason: str = "",
    extra: Mapping[str, Any] | None = None,
    clock: ClockKind = ClockKind.REAL,
) -> HistoryEvent:
    """The history's record of an inventory: the stores read and the count per key ID."""
    details: dict[str, Any] = {
        "stores": list(inventory.stores),
        "counts": inventory.counts(),
        "records_read": inventory.records_read,
        "only_key": key_id,
        **(extra or {}),
    }
    return HistoryEvent(
        kind=EventKind.STORED_CIPHERTEXTS,
        at=at,
        actor=actor,
        key_id=key_id,
        reason=reason,
        details=details,
        clock=clock,
    )


def last_inventories(
    events: Sequence[HistoryEvent], stores: Sequence[str] | None = None
) -> dict[str, tuple[datetime, int]]:
    """Key ID -> (time, count) of the newest inventory that counted it; with `stores`, only
    inventories of exactly those stores (see domain.stored_ciphertext.last_inventories)."""
    return {
        key_id: (last.at, last.count)
        for key_id, last in domain_last_inventories(events, stores).items()
    }


def check_destroy(
    stores: Sequence[CiphertextStore],
    keyring: Keyring,
    key_id: str,
    at: datetime,
    actor: str,
    *,
    ignore_reason: str | None = None,
    record: bool = True,
    clock: ClockKind = ClockKind.REAL,
) -> int:
    """Before `destroy`: count `key_id`'s ciphertexts in the registered stores, record the count
    in the history, and refuse while any remain, unless overridden with a reason (recorded).
    The count back; `record=False` (a dry run or what-if) writes nothing."""
    if not stores:
        return 0
    inventory = take_inventory(stores, key_id=key_id)
    remaining = inventory.count(key_id)
    overridden = bool(remaining and ignore_reason)
    if record:
        keyring.append_event(
            inventory_event(
                inventory,
                at,
                actor,
                key_id=key_id,
                reason=(ignore_reason or "") if overridden else "",
                extra={"destroy_check": True, "ignored": overridden},
                clock=clock,
            )
        )
    if remaining and not ignore_reason:
        stores_text = " ".join(f"--store {uri}" for uri in inventory.stores)
        raise StoredCiphertextsRemain(
            f"cannot destroy key {key_id}: {remaining} stored ciphertexts under it remain in "
            f"the registered stores; rewrap them first (rotator rewrap --from {key_id} "
            f"{stores_text}), or --ignore-stored-ciphertexts --reason TEXT"
        )
    return remaining
