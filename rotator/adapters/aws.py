"""Translate botocore failures into the project's AwsCallError, naming the call and resource."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import BotoCoreError, ClientError

from lambda_decrypt.errors import aws_reason
from rotator.errors import AwsCallError


@contextmanager
def aws_call(call: str, resource: str) -> Iterator[None]:
    """`AwsCallError.reason` carries the AWS error code, for callers that handle one."""
    try:
        yield
    except (ClientError, BotoCoreError) as error:
        raise AwsCallError(call, resource, aws_reason(error)) from error
