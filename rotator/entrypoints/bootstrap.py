"""Composition root: builds AWS clients and adapters from settings, and services on them."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    CredentialProvider,
    CredentialResolver,
    DeferredRefreshableCredentials,
)
from botocore.exceptions import (
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)

from rotator.adapters.connect import ConnectGateway
from rotator.adapters.evidence_reads import KmsKeyEncryptionKeys, LambdaFunctionEnvironments
from rotator.adapters.identity import StsIdentity
from rotator.adapters.lock import SsmLock
from rotator.adapters.publishing import AwsPublisher
from rotator.adapters.runbook_audit import SsmRunbookAudit
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.adapters.stores import store_for
from rotator.config import Settings
from rotator.domain.fleet import Account, Partition, by_name
from rotator.domain.history import ClockKind
from rotator.errors import ConfigError
from rotator.ports import CiphertextStore, Publisher
from rotator.services.crypto_architecture import EvidenceSources
from rotator.services.rotation import KeyGenerator, RotationService
from rotator.services.verify import InvariantChecker

if TYPE_CHECKING:
    from mypy_boto3_connect import ConnectClient
    from mypy_boto3_ssm import SSMClient

# Throttling and transient errors are retried by botocore itself, with client-side rate limiting.
RETRY_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 8})


@dataclass(frozen=True)
class Adapters:
    """The adapters of one run. Each implements a port of rotator.ports (SsmKeyring: Keyring,
    ConnectGateway: Connect, SsmLock: Lock, StsIdentity: Identity); services are built here
    and see only the ports."""

    settings: Settings
    ssm: SSMClient
    connect_client: ConnectClient
    keyring: SsmKeyring
    connect: ConnectGateway
    lock: SsmLock
    identity: StsIdentity
    # Where the evidence reads' clients (KMS, Lambda) come from: None, boto3's default session
    # (this account); a member account's adapters make them on its assumed-role session.
    clients: Callable[[str], Any] | None = None

    def _client(self, service: str) -> Any:
        if self.clients is not None:
            return self.clients(service)
        return boto3.client(service, config=RETRY_CONFIG, region_name=aws_region())  # type: ignore[call-overload]

    def rotation(self, actor: str, generate: KeyGenerator | None = None) -> RotationService:
        return RotationService(
            self.keyring,
            self.connect,
            self.lock,
            self.settings,
            actor=actor,
            generate=generate,
            identity=self.identity,  # what it records names the caller's principal ARN
        )

    def invariants(self) -> InvariantChecker:
        return InvariantChecker(self.keyring, self.connect, self.lock)

    def ciphertext_stores(self, uris: Sequence[str]) -> list[CiphertextStore]:
        """The stores of stored Connect ciphertexts the URIs name (ConfigError if one is bad)."""
        clients: dict[str, Any] = {}

        def client(service: str) -> Any:
            if service not in clients:
                clients[service] = boto3.client(  # type: ignore[call-overload]
                    service, config=RETRY_CONFIG, region_name=aws_region()
                )
            return clients[service]

        stores: list[CiphertextStore] = []
        for uri in uris:
            try:
                stores.append(store_for(uri, client))
            except ValueError as error:
                raise ConfigError("--store", str(error)) from None
        return stores

    def evidence(self) -> EvidenceSources:
        """The report's evidence reads: KMS DescribeKey of the keyring's KMS keys, and the
        decrypt function's environment if ROTATOR_DECRYPT_FUNCTION names it. The clients are
        built here, on first use: no other command pays for them."""
        function = self.settings.decrypt_function
        return EvidenceSources(
            keks=KmsKeyEncryptionKeys(self._client("kms")),
            functions=None
            if function is None
            else LambdaFunctionEnvironments(self._client("lambda")),
            decrypt_function=function,
        )

    def runbook_audit(self) -> SsmRunbookAudit:
        """The legacy runbook audit (read only) and the runbook history."""
        return SsmRunbookAudit(self.ssm, self.settings.keyring_prefix)


def aws_region() -> str | None:
    """AWS_REGION, which the AWS CLI and the other SDKs read first and boto3 does not (it reads
    AWS_DEFAULT_REGION and the profile): None leaves the choice to boto3."""
    return os.environ.get("AWS_REGION") or None


def build_adapters(
    settings: Settings,
    *,
    ssm: SSMClient | None = None,
    connect: ConnectClient | None = None,
    simulated_clock: bool = False,
) -> Adapters:
    """Real clients unless given; AWS_ENDPOINT_URL(_<SERVICE>) points them at a sandbox.
    `simulated_clock`: the times passed in come from the sandbox's clock (the history says so)."""
    region = aws_region()
    ssm_client = (
        ssm if ssm is not None else boto3.client("ssm", config=RETRY_CONFIG, region_name=region)
    )
    connect_client = (
        connect
        if connect is not None
        else boto3.client("connect", config=RETRY_CONFIG, region_name=region)
    )
    return Adapters(
        settings=settings,
        ssm=ssm_client,
        connect_client=connect_client,
        keyring=SsmKeyring(
            ssm_client,
            settings.keyring_prefix,
            kms_key_id=settings.kms_key_id,
            clock=ClockKind.SIMULATED if simulated_clock else ClockKind.REAL,
        ),
        connect=ConnectGateway(connect_client),
        lock=SsmLock(ssm_client, settings.keyring_prefix),
        identity=StsIdentity(boto3.client("sts", config=RETRY_CONFIG, region_name=region)),
    )


# What to set when botocore finds no region or no credentials: these are configuration
# errors (exit 2), not failures of a call.
NO_REGION = (
    "no AWS region is configured: set AWS_REGION (for example `export AWS_REGION=eu-west-1`), "
    "or AWS_DEFAULT_REGION, or a region for your AWS_PROFILE in ~/.aws/config"
)
NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_PROFILE (a profile from `aws configure` or "
    "`aws sso login`), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN "
    "for temporary credentials), or run where an IAM role provides them"
)


def environment_problem(error: BaseException) -> ConfigError | None:
    """The missing region, credentials or profile behind an error (botocore's own, or wrapped
    in an AwsCallError), as a ConfigError naming what to set; None for any other error."""
    cause: BaseException | None = error
    seen: set[int] = set()  # a chain can loop back on itself
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, NoRegionError):
            return ConfigError("AWS_REGION", NO_REGION)
        if isinstance(cause, NoCredentialsError | PartialCredentialsError):
            return ConfigError("AWS credentials", NO_CREDENTIALS)
        if isinstance(cause, ProfileNotFound):
            return ConfigError(
                "AWS_PROFILE", f"{cause}: set AWS_PROFILE to a profile of ~/.aws/config"
            )
        cause = cause.__cause__ or cause.__context__
    return None


def build_publisher(settings: Settings) -> Publisher:
    """CloudWatch in the settings' namespace, notices on the alert topic; clients on first use.
    The scheduled Lambda and `rotator serve` both build theirs here, so both publish alike."""

    def client(service: str) -> Any:
        return boto3.client(service, config=RETRY_CONFIG, region_name=aws_region())  # type: ignore[call-overload]

    return AwsPublisher(
        client, namespace=settings.metrics_namespace, alert_topic_arn=settings.sns_topic_arn
    )


# -- fleet mode: adapters for a member account's region, through its assumed role -----------------

# Who the member account's CloudTrail sees: the member role's session names the rotator.
ROLE_SESSION_NAME = "connect-key-rotator"
# The keyring key deploy/member.yaml creates in each member account and region: private keys
# never leave the account of their instance, so each account's keyring has its own key. An
# alias resolves in the caller's (the assumed role's) account and region.
MEMBER_KEYRING_KEY_ALIAS = "alias/connect-key-rotator-keyring"


class _AssumedRole(CredentialProvider):
    """botocore's own assume-role fetcher as a session's only credential source: fetched on
    first use, refreshed before they expire (a long fleet run outlives one hour's credentials)."""

    METHOD = "assume-role"
    CANONICAL_NAME = "connect-key-rotator-member-role"

    def __init__(self, fetcher: AssumeRoleCredentialFetcher) -> None:
        super().__init__()
        self._fetcher = fetcher

    def load(self) -> DeferredRefreshableCredentials:
        return DeferredRefreshableCredentials(
            refresh_using=self._fetcher.fetch_credentials, method=self.METHOD
        )


def assumed_role_session(
    account: Account, region: str, *, source: botocore.session.Session | None = None
) -> boto3.Session:
    """A session in `account`'s `region` on the credentials of its member role, assumed with its
    external ID from the `source` session's credentials (default: the usual chain: the rotator
    Lambda's role, or the operator's)."""
    source = source if source is not None else botocore.session.get_session()
    fetcher = AssumeRoleCredentialFetcher(
        client_creator=source.create_client,
        source_credentials=source.get_credentials(),
        role_arn=account.role_arn_in(region),
        extra_args={"RoleSessionName": ROLE_SESSION_NAME, "ExternalId": account.external_id},
    )
    member = botocore.session.get_session()
    member.register_component("credential_provider", CredentialResolver([_AssumedRole(fetcher)]))
    return boto3.Session(botocore_session=member, region_name=region)


def build_account_adapters(
    settings: Settings,
    account: Account,
    region: str,
    *,
    session: boto3.Session | None = None,
    simulated_clock: bool = False,
) -> Adapters:
    """The adapters of one member account's region: its keyring (same prefix, the member's own
    KMS key), its Connect, its lock and its evidence reads (the keyring key, the decrypt
    function's environment), all on the assumed role's credentials. Clients are
    created here, up front: boto3 sessions are not thread-safe, its clients are."""
    session = session if session is not None else assumed_role_session(account, region)
    # The member's own keyring key and its own decrypt function (the account's decrypt_function,
    # deploy/member.yaml's DecryptFunctionName): the report's evidence reads both through the
    # member role, on this session's clients. The central ROTATOR_DECRYPT_FUNCTION names the
    # central account's function, never a member's.
    member_settings = replace(
        settings, kms_key_id=MEMBER_KEYRING_KEY_ALIAS, decrypt_function=account.decrypt_function
    )
    adapters = build_adapters(
        member_settings,
        ssm=session.client("ssm", config=RETRY_CONFIG, region_name=region),
        connect=session.client("connect", config=RETRY_CONFIG, region_name=region),
        simulated_clock=simulated_clock,
    )
    sts = session.client("sts", config=RETRY_CONFIG, region_name=region)
    made: dict[str, Any] = {}
    making = threading.Lock()  # a boto3 session is not thread-safe; its clients are

    def clients(service: str) -> Any:
        with making:
            if service not in made:
                made[service] = session.client(  # type: ignore[call-overload]
                    service, config=RETRY_CONFIG, region_name=region
                )
            return made[service]

    return replace(adapters, identity=StsIdentity(sts), clients=clients)


# Builds one partition's adapters (tests give one over fakes or moto).
PartitionBuilder = Callable[[Account, str], Adapters]


def build_fleet_adapters(
    settings: Settings,
    partitions: Iterable[Partition],
    *,
    simulated_clock: bool = False,
    build: PartitionBuilder | None = None,
) -> dict[Partition, Adapters]:
    """Adapters per (account, region) of the fleet: each on its own assumed-role session."""
    accounts = by_name(settings.fleet)

    def default(account: Account, region: str) -> Adapters:
        return build_account_adapters(settings, account, region, simulated_clock=simulated_clock)

    builder = build if build is not None else default
    return {p: builder(accounts[p.account], p.region) for p in partitions}
