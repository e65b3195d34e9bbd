"""KMS DescribeKey and Lambda GetFunctionConfiguration, read for the report's evidence only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from rotator.adapters.aws import aws_call
from rotator.domain.key_protection import FunctionEnvironment, KekDescription, holds_private_key
from rotator.errors import NotFound

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_lambda import LambdaClient

_NOT_FOUND = {"NotFoundException", "ResourceNotFoundException"}


class KmsKeyEncryptionKeys:
    """Implements ports.KeyEncryptionKeys with kms:DescribeKey (metadata only)."""

    def __init__(self, kms: KMSClient) -> None:
        self.kms = kms

    def describe(self, key_id: str) -> KekDescription:
        with aws_call("kms:DescribeKey", key_id), _not_found(f"KMS key {key_id}"):
            metadata = self.kms.describe_key(KeyId=key_id)["KeyMetadata"]
        return KekDescription(
            reference=key_id,
            key_id=metadata["KeyId"],
            arn=metadata["Arn"],
            key_spec=str(metadata.get("KeySpec") or metadata.get("CustomerMasterKeySpec", "")),
            key_usage=str(metadata.get("KeyUsage", "")),
            key_manager=str(metadata.get("KeyManager", "")),
        )


class LambdaFunctionEnvironments:
    """Implements ports.FunctionEnvironments with lambda:GetFunctionConfiguration. The values
    are looked at here and dropped: only the names of the variables holding private-key text
    leave this method (botocore logs response bodies at DEBUG only, which the project's logging
    keeps at WARNING: lambda_decrypt.logs.QUIET_LIBRARIES)."""

    def __init__(self, client: LambdaClient) -> None:
        self.client = client

    def private_key_variables(self, function_name: str) -> FunctionEnvironment:
        call = "lambda:GetFunctionConfiguration"
        with aws_call(call, function_name), _not_found(f"Lambda function {function_name}"):
            configuration = self.client.get_function_configuration(FunctionName=function_name)
        arn = configuration["FunctionArn"]
        variables = configuration.get("Environment", {}).get("Variables", {})
        names = tuple(sorted(name for name, value in variables.items() if holds_private_key(value)))
        del variables, configuration  # nothing of a value outlives the scan
        return FunctionEnvironment(function_name, arn, names)


@contextmanager
def _not_found(what: str) -> Iterator[None]:
    """An unknown key or function is NotFound (the rest stays botocore's, for aws_call)."""
    try:
        yield
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in _NOT_FOUND:
            raise NotFound(f"{what} does not exist") from None
        raise
