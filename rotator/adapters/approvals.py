"""Dual control's requests in SSM: history events, and a create-once claim per decision."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rotator.adapters.aws import aws_call
from rotator.adapters.history import TIER, SsmHistory
from rotator.domain.approval import APPROVAL_KINDS, check_request_id
from rotator.domain.history import REQUESTS_SCOPE, HistoryEvent
from rotator.errors import AwsCallError

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient


class SsmApprovals:
    """Implements ports.Approvals. Events go to `{prefix}/history/requests/` (the history's
    create-once parameters, so the report reads them with the rest of the audit trail). The
    claim is `{prefix}/requests/{request_id}/decision`, created with Overwrite=False: of two
    approvers (or an approver and a withdrawal) racing, SSM lets exactly one create it."""

    def __init__(self, ssm: SSMClient, prefix: str) -> None:
        self.ssm = ssm
        self.prefix = prefix
        self.history = SsmHistory(ssm, prefix)

    def record(self, event: HistoryEvent) -> None:
        self.history.append(event)  # its scope: REQUESTS_SCOPE

    def events(self) -> list[HistoryEvent]:
        return [e for e in self.history.events(REQUESTS_SCOPE) if e.kind in APPROVAL_KINDS]

    def claim(self, request_id: str, decision: HistoryEvent) -> bool:
        name = self.claim_parameter(request_id)
        try:
            with aws_call("ssm:PutParameter", name):
                self.ssm.put_parameter(
                    Name=name,
                    Value=decision.to_json(),
                    Type="String",
                    Overwrite=False,
                    Tier=TIER,
                )
        except AwsCallError as error:
            if error.reason != "ParameterAlreadyExists":
                raise
            return False
        return True

    def claim_parameter(self, request_id: str) -> str:
        # The ID is checked: it comes from the command line and becomes part of a name.
        return f"{self.prefix}/requests/{check_request_id(request_id)}/decision"
