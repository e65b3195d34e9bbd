"""The runbook audit trail: each record a new version of one SSM String parameter."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lambda_decrypt.keyring import KeyringLayout
from rotator.adapters.aws import aws_call

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient


class SsmRunbookAudit:
    """`{prefix}/audit/runbook-runs`: its version history is the trail (SSM keeps 100 versions).

    Intelligent-Tiering: a record stays on the free Standard tier while it fits in 4 KB and is
    still written (as an Advanced parameter) if a long run does not."""

    def __init__(self, ssm: SSMClient, prefix: str) -> None:
        self.ssm = ssm
        self.name = KeyringLayout(prefix).runbook_audit()

    def write(self, record_json: str) -> None:
        with aws_call("ssm:PutParameter", self.name):
            self.ssm.put_parameter(
                Name=self.name,
                Value=record_json,
                Type="String",
                Overwrite=True,
                Tier="Intelligent-Tiering",
            )
