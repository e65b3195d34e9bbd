"""Amazon Connect: security keys and the content of contact flows and flow modules (boto3)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from rotator.adapters.aws import aws_call
from rotator.domain.connect_ids import SecurityKey as SecurityKey
from rotator.domain.connect_ids import association_id_of_key, key_id_of_association
from rotator.domain.flows import FlowKind, FlowRef
from rotator.errors import AwsCallError, NotFound

if TYPE_CHECKING:
    from mypy_boto3_connect import ConnectClient


class ConnectGateway:
    """Every Connect call the rotator makes (the `Connect` port); failures name the call and
    the resource. Keys go in and out by key ID, mapped to AssociationIds in connect_ids."""

    def __init__(self, client: ConnectClient) -> None:
        self.client = client

    def list_security_keys(self, instance_id: str) -> list[SecurityKey]:
        keys: list[SecurityKey] = []
        kwargs: dict[str, Any] = {"InstanceId": instance_id, "MaxResults": 2}
        while True:
            page = self._call(
                "ListSecurityKeys", instance_id, self.client.list_security_keys, **kwargs
            )
            keys.extend(
                SecurityKey(k["AssociationId"], k["Key"]) for k in page.get("SecurityKeys", [])
            )
            if not page.get("NextToken"):
                return keys
            kwargs["NextToken"] = page["NextToken"]

    def associate_security_key(
        self, instance_id: str, public_key_pem: str, client_token: str
    ) -> str:
        response = self._call(
            "AssociateSecurityKey",
            instance_id,
            self.client.associate_security_key,
            InstanceId=instance_id,
            Key=public_key_pem,
            ClientToken=client_token,
        )
        return key_id_of_association(str(response["AssociationId"]))

    def disassociate_security_key(self, instance_id: str, key_id: str) -> None:
        association_id = association_id_of_key(key_id)
        self._call(
            "DisassociateSecurityKey",
            f"{instance_id}/{association_id}",
            self.client.disassociate_security_key,
            InstanceId=instance_id,
            AssociationId=association_id,
        )

    def flow_content(self, instance_id: str, ref: FlowRef) -> str:
        if ref.kind is FlowKind.FLOW:
            response = self._call(
                "DescribeContactFlow",
                f"{instance_id}/{ref.flow_id}",
                self.client.describe_contact_flow,
                InstanceId=instance_id,
                ContactFlowId=ref.flow_id,
            )
            return str(response["ContactFlow"]["Content"])
        response = self._call(
            "DescribeContactFlowModule",
            f"{instance_id}/{ref.flow_id}",
            self.client.describe_contact_flow_module,
            InstanceId=instance_id,
            ContactFlowModuleId=ref.flow_id,
        )
        return str(response["ContactFlowModule"]["Content"])

    def update_flow_content(self, instance_id: str, ref: FlowRef, content: str) -> None:
        if ref.kind is FlowKind.FLOW:
            self._call(
                "UpdateContactFlowContent",
                f"{instance_id}/{ref.flow_id}",
                self.client.update_contact_flow_content,
                InstanceId=instance_id,
                ContactFlowId=ref.flow_id,
                Content=content,
            )
        else:
            self._call(
                "UpdateContactFlowModuleContent",
                f"{instance_id}/{ref.flow_id}",
                self.client.update_contact_flow_module_content,
                InstanceId=instance_id,
                ContactFlowModuleId=ref.flow_id,
                Content=content,
            )

    @staticmethod
    def _call(operation: str, resource: str, method: Any, **kwargs: Any) -> Any:
        try:
            with aws_call(f"connect:{operation}", resource):
                return method(**kwargs)
        except AwsCallError as error:
            if error.reason == "ResourceNotFoundException":
                raise NotFound(
                    f"connect:{operation}: {resource} not found{_what(error.__cause__)}"
                ) from error
            raise


def _what(error: BaseException | None) -> str:
    """Connect's own words on which ID it did not find ("Instance not found: ID"), if it said."""
    if not isinstance(error, ClientError):
        return ""
    message = str(error.response.get("Error", {}).get("Message", ""))[:200]
    return f" ({message})" if message else ""
