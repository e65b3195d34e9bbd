"""The caller's identity from STS GetCallerIdentity, asked once per run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rotator.adapters.aws import aws_call

if TYPE_CHECKING:
    from mypy_boto3_sts import STSClient


class StsIdentity:
    """Implements ports.Identity. GetCallerIdentity needs no IAM permission, so every
    principal that can run the rotator can be named."""

    def __init__(self, sts: STSClient) -> None:
        self.sts = sts
        self._arn: str | None = None

    def caller_arn(self) -> str:
        if self._arn is None:
            with aws_call("sts:GetCallerIdentity", "caller"):
                self._arn = self.sts.get_caller_identity()["Arn"]
        return self._arn
