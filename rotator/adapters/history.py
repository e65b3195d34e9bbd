"""The append-only history in SSM: each event its own String parameter, created once, kept."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from lambda_decrypt.keyring import KeyringLayout
from rotator.adapters.aws import aws_call
from rotator.domain.history import HistoryEvent
from rotator.errors import AwsCallError, KeyringConflict

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
# Standard tier while an event fits in 4 KB and the account holds fewer than 10,000 Standard
# parameters; past either, SSM stores it as an Advanced parameter instead of refusing it.
TIER: Final = "Intelligent-Tiering"


class SsmHistory:
    """`{prefix}/history/{scope}/{stamp}-{event_id}` (see KeyringLayout): PutParameter with
    Overwrite=False only, never an overwrite or a delete, so SSM's 100-version limit and a
    later writer cannot shorten it. Read back with paginated GetParametersByPath."""

    def __init__(self, ssm: SSMClient, prefix: str) -> None:
        self.ssm = ssm
        self.layout = KeyringLayout(prefix)
        # (event time, stamp used) of the last append: see _stamp.
        self._last: tuple[datetime, datetime] | None = None

    def append(self, event: HistoryEvent, *, scope: str | None = None) -> str:
        """Create the event's parameter (in `scope`, default the event's own) and return its
        name. ParameterAlreadyExists with the same value is botocore's retry of a create whose
        answer was lost: that is done."""
        folder = event.scope if scope is None else scope
        name = self.layout.history_event(folder, self._stamp(event.at), secrets.token_hex(4))
        value = event.to_json()
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
        found: list[tuple[str, str, str]] = []
        with aws_call("ssm:GetParametersByPath", path):
            paginator = self.ssm.get_paginator("get_parameters_by_path")
            for page in paginator.paginate(Path=path, Recursive=True):
                for parameter in page["Parameters"]:
                    name = parameter["Name"]
                    found.append((name.rsplit("/", 1)[-1], name, parameter["Value"]))
        # The leaf starts with the fixed-width stamp: sorting by it orders across scopes too.
        return [HistoryEvent.from_json(value) for _, _, value in sorted(found)]

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
