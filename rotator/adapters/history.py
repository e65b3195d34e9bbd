"""The append-only history in SSM: String parameters, each created once and kept, holding one
event or the events of one step in order."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from lambda_decrypt.keyring import KeyringLayout
from rotator.adapters.aws import aws_call
from rotator.domain.history import HistoryEvent
from rotator.errors import AwsCallError, KeyringConflict, KeyringError

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
# Standard tier while an event fits in 4 KB and the account holds fewer than 10,000 Standard
# parameters; past either, SSM stores it as an Advanced parameter instead of refusing it.
TIER: Final = "Intelligent-Tiering"
# A step's events share a parameter while they fit in a Standard one (4 KB): one PutParameter a
# step instead of one an event; past it they go on into the next parameter, order kept.
STANDARD_VALUE_LIMIT: Final = 4096


class SsmHistory:
    """`{prefix}/history/{scope}/{stamp}-{event_id}` (see KeyringLayout): PutParameter with
    Overwrite=False only (one a step, not one an event), never an overwrite or a delete, so
    SSM's 100-version limit and a later writer cannot shorten it. Read back with paginated
    GetParametersByPath."""

    def __init__(self, ssm: SSMClient, prefix: str) -> None:
        self.ssm = ssm
        self.layout = KeyringLayout(prefix)
        # (event time, stamp used) of the last append: see _stamp.
        self._last: tuple[datetime, datetime] | None = None

    def append(self, event: HistoryEvent) -> str:
        """Create the event's parameter and return its name."""
        return self.append_all([event])[0]

    def append_all(self, events: Sequence[HistoryEvent]) -> list[str]:
        """Create the parameters of events recorded together (one step's), in order, and return
        their names: per scope, as many events a parameter as fit in a Standard one (a JSON
        list; a lone event keeps the one-event form that every reader knows)."""
        return [
            self._create(batch[0].scope, batch[0].at, _value(batch)) for batch in _batches(events)
        ]

    def _create(self, scope: str, at: datetime, value: str) -> str:
        """ParameterAlreadyExists with the same value is botocore's retry of a create whose
        answer was lost: that is done."""
        name = self.layout.history_event(scope, self._stamp(at), secrets.token_hex(4))
        try:
            with aws_call("ssm:PutParameter", name):
                self.ssm.put_parameter(
                    Name=name, Value=value, Type="String", Overwrite=False, Tier=TIER
                )
        except AwsCallError as error:
            if error.reason != "ParameterAlreadyExists":
                raise
            with aws_call("ssm:GetParameters", name):
                found = self.ssm.get_parameters(Names=[name])["Parameters"]
            if [p["Value"] for p in found] != [value]:
                raise KeyringConflict(
                    f"{name} already holds another event; history is never overwritten"
                ) from None
        return name

    def events(self, scope: str | None = None) -> list[HistoryEvent]:
        """One scope's events (None: every scope's), oldest first, 10 a page."""
        path = self.layout.history_root() if scope is None else self.layout.history_scope(scope)
        found: list[tuple[str, int, str]] = []
        with aws_call("ssm:GetParametersByPath", path):
            paginator = self.ssm.get_paginator("get_parameters_by_path")
            for page in paginator.paginate(Path=path, Recursive=True):
                for parameter in page["Parameters"]:
                    leaf = parameter["Name"].rsplit("/", 1)[-1]
                    for index, raw in enumerate(_event_values(parameter["Value"])):
                        found.append((leaf, index, raw))
        # The leaf starts with the fixed-width stamp: sorting by it orders across scopes too,
        # and a parameter's events keep their order after it.
        return [HistoryEvent.from_json(raw) for _, _, raw in sorted(found)]

    def _stamp(self, at: datetime) -> str:
        """The event's time in UTC; one microsecond past the last stamp when this writer records
        several events in the same instant (a rotation's steps share one `now`), so that the
        names keep the order the events happened in. The event itself keeps its exact time."""
        moment = at.astimezone(UTC)
        stamp = moment
        if self._last is not None and self._last[0] <= moment <= self._last[1]:
            stamp = self._last[1] + timedelta(microseconds=1)
        self._last = (moment, stamp)
        return stamp.strftime(STAMP_FORMAT)


def _value(events: Sequence[HistoryEvent]) -> str:
    if len(events) == 1:
        return events[0].to_json()
    return "[" + ",".join(event.to_json() for event in events) + "]"


def _batches(events: Sequence[HistoryEvent]) -> Iterator[list[HistoryEvent]]:
    """Consecutive events of one scope, as many as fit in a Standard parameter (at least one)."""
    batch: list[HistoryEvent] = []
    for event in events:
        if batch and (
            event.scope != batch[0].scope or len(_value([*batch, event])) > STANDARD_VALUE_LIMIT
        ):
            yield batch
            batch = []
        batch.append(event)
    if batch:
        yield batch


def _event_values(value: str) -> list[str]:
    """The events a parameter holds, each as its own JSON: one (every parameter written before
    step events were grouped, and a lone event since), or a list."""
    if not value.startswith("["):
        return [value]
    try:
        items = json.loads(value)
        if not isinstance(items, list):
            raise TypeError("not a list")
        return [json.dumps(item) for item in items]
    except (ValueError, TypeError) as error:
        raise KeyringError(f"history event is not readable: {type(error).__name__}") from None
