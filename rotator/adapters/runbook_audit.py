"""The runbook audit trail: each run's records as events of the history's `runbooks` scope."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from lambda_decrypt.keyring import KeyringLayout
from rotator.adapters.aws import aws_call
from rotator.adapters.history import SsmHistory
from rotator.domain.history import RUNBOOKS_SCOPE, HistoryEvent
from rotator.errors import AwsCallError, KeyringError

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient


class SsmRunbookAudit:
    """A run is recorded twice, as it starts and as it ends, each record its own event, so the
    trail has no length limit. Earlier versions wrote each record as a new version of
    `{prefix}/audit/runbook-runs` (SSM keeps the last 100); those are still read."""

    def __init__(self, ssm: SSMClient, prefix: str) -> None:
        self.ssm = ssm
        self.history = SsmHistory(ssm, prefix)
        self.legacy_name = KeyringLayout(prefix).runbook_audit()

    def write(self, event: HistoryEvent) -> None:
        """Append a runbook_run event (see RunRecord.event)."""
        self.history.append(event)

    def records(self) -> list[dict[str, Any]]:
        """Every run record, oldest first: the legacy versions, then the events."""
        return [
            *self._legacy_records(),
            *(dict(event.details) for event in self.history.events(RUNBOOKS_SCOPE)),
        ]

    def _legacy_records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        try:
            with aws_call("ssm:GetParameterHistory", self.legacy_name):
                paginator = self.ssm.get_paginator("get_parameter_history")
                for page in paginator.paginate(Name=self.legacy_name):
                    records.extend(_record(p["Value"]) for p in page["Parameters"])
        except AwsCallError as error:
            if error.reason != "ParameterNotFound":
                raise
        return records


def _record(raw: str) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise KeyringError("a legacy runbook audit record is not readable")
    return record
