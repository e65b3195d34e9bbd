"""Flow-language JSON of a payment IVR (flow and flow module) for the sandbox, demos and tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rotator.domain.lambda_functions import DECRYPT_ALIAS

if TYPE_CHECKING:
    from mypy_boto3_connect import ConnectClient

FLOW_LANGUAGE_VERSION = "2019-10-30"  # the only version the flow language has
CARD_INPUT_ACTION = "card-number"
DECRYPT_LAMBDA_NAME = "connect-decrypt"  # a placeholder: a real flow names the deployed Lambda


def decrypt_lambda_arn(account: str, region: str) -> str:
    """The placeholder decrypt Lambda of an instance's own account and region (a member account
    runs its own decrypt Lambda: private keys never leave the account), on its `live` alias as
    the template's DecryptFunctionArn output names it (SnapStart runs published versions only)."""
    return f"arn:aws:lambda:{region}:{account}:function:{DECRYPT_LAMBDA_NAME}:{DECRYPT_ALIAS}"


# In the sandbox's account (moto's default) and region.
DECRYPT_LAMBDA_ARN = decrypt_lambda_arn("123456789012", "us-east-1")


def payment_flow_content(
    key_id: str | None, certificate_pem: str | None, *, lambda_arn: str = DECRYPT_LAMBDA_ARN
) -> str:
    """An inbound flow: greet, store the card number (encrypted if key_id is given), decrypt
    it with the Lambda, thank the caller and hang up."""
    return _payment_content(
        key_id, certificate_pem, lambda_arn, end=_action("hang-up", "DisconnectParticipant")
    )


def payment_module_content(
    key_id: str | None, certificate_pem: str | None, *, lambda_arn: str = DECRYPT_LAMBDA_ARN
) -> str:
    """The same steps as a flow module, which returns to its calling flow instead of hanging up."""
    return _payment_content(
        key_id, certificate_pem, lambda_arn, end=_action("return", "EndFlowModuleExecution")
    )


def _payment_content(
    key_id: str | None, certificate_pem: str | None, lambda_arn: str, end: dict[str, Any]
) -> str:
    card_input: dict[str, Any] = {
        "Text": "Please enter your card number, then press the pound key.",
        "StoreInput": "True",
        "InputTimeLimitSeconds": "6",
        "InputValidation": {"CustomValidation": {"MaximumLength": "19"}},
        "DTMFConfiguration": {"InputTerminationSequence": "#"},
    }
    if key_id is not None:
        if certificate_pem is None:
            raise ValueError("an encrypting block needs the key's certificate PEM")
        card_input["InputEncryption"] = {"EncryptionKeyId": key_id, "Key": certificate_pem}
    document = {
        "Version": FLOW_LANGUAGE_VERSION,
        "StartAction": "greeting",
        "Actions": [
            _action(
                "greeting",
                "MessageParticipant",
                {"Text": "Welcome to card payments. Your card number is encrypted as you type."},
                CARD_INPUT_ACTION,
            ),
            _action(CARD_INPUT_ACTION, "GetParticipantInput", card_input, "decrypt-card"),
            _action(
                "decrypt-card",
                "InvokeLambdaFunction",
                {
                    "LambdaFunctionARN": lambda_arn,
                    # Connect's maximum; the decrypt Lambda answers well within it.
                    "InvocationTimeLimitSeconds": "8",
                    "LambdaInvocationAttributes": {"EncryptedCreditCard": "$.StoredCustomerInput"},
                    "ResponseValidation": {"ResponseType": "STRING_MAP"},
                },
                "thank-you",
            ),
            _action(
                "thank-you",
                "MessageParticipant",
                {"Text": "Thank you. Your payment is being processed."},
                end["Identifier"],
            ),
            _action(
                "input-failed",
                "MessageParticipant",
                {"Text": "Sorry, we could not take your card number."},
                end["Identifier"],
            ),
            end,
        ],
    }
    return json.dumps(document)


def _action(
    identifier: str,
    action_type: str,
    parameters: dict[str, Any] | None = None,
    next_action: str | None = None,
) -> dict[str, Any]:
    """An action; one with a next action routes its Error branch to `input-failed` (which
    itself goes on to the end either way)."""
    transitions: dict[str, Any] = {}
    if next_action is not None:
        on_error = "input-failed" if identifier != "input-failed" else next_action
        transitions = {
            "NextAction": next_action,
            "Errors": [{"NextAction": on_error, "ErrorType": "NoMatchingError"}],
            "Conditions": [],
        }
    return {
        "Identifier": identifier,
        "Type": action_type,
        "Parameters": parameters or {},
        "Transitions": transitions,
    }


@dataclass(frozen=True)
class PaymentInstance:
    """A Connect instance holding a payment flow and a card-capture module."""

    instance_id: str
    flow_id: str
    module_id: str

    def encrypt_block_args(self, *flow_ids: str) -> list[str]:
        """`--encrypt-block` for the card-number block of each of these flows (default: both):
        the blocks have no encryption yet, so the operator names them."""
        ids = flow_ids or (self.flow_id, self.module_id)
        return [arg for i in ids for arg in ("--encrypt-block", f"{i}:{CARD_INPUT_ACTION}")]


def card_blocks(*flow_ids: str) -> dict[str, set[str]]:
    """The card-number block of each of these flows or modules, to name for encryption."""
    return {flow_id: {CARD_INPUT_ACTION} for flow_id in flow_ids}


def create_payment_instance(connect: ConnectClient, alias: str) -> PaymentInstance:
    """What an administrator sets up in the Connect console: an instance, a payment flow and a
    card-capture module whose 'Store customer input' blocks have no encryption key yet."""
    instance_id = connect.create_instance(
        IdentityManagementType="CONNECT_MANAGED",
        InstanceAlias=alias,
        InboundCallsEnabled=True,
        OutboundCallsEnabled=False,
    )["Id"]
    flow_id = connect.create_contact_flow(
        InstanceId=instance_id,
        Name="Payment IVR",
        Type="CONTACT_FLOW",
        Content=payment_flow_content(None, None),
    )["ContactFlowId"]
    module_id = connect.create_contact_flow_module(
        InstanceId=instance_id, Name="Card capture", Content=payment_module_content(None, None)
    )["Id"]
    return PaymentInstance(instance_id, flow_id, module_id)
