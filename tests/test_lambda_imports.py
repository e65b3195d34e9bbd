"""The decrypt Lambda stays deployable alone: no rotator, scheduler or test imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.wire  # a child Python proves what the Lambda imports
ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("rotator", "apscheduler", "moto", "pytest", "hypothesis")

PROBE = f"""
import sys

class Forbid:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {FORBIDDEN!r}:
            raise ImportError("the decrypt Lambda must not import " + name)
        return None

sys.meta_path.insert(0, Forbid())
import lambda_decrypt.handler
from lambda_decrypt import ConnectKey, Decryptor, StaticKeys

vectors = {str(ROOT / "tests" / "vectors" / "connect-real")!r}
key_id = "a5ecd749-4bd8-4a94-bfde-27eefe4f12b1"
key = ConnectKey.from_pem(key_id, open(vectors + "/private.key.pem").read(), trusted=False)
ciphertext = open(vectors + "/ciphertext.b64").read()
assert Decryptor(StaticKeys({{key_id: key}})).decrypt(ciphertext).plaintext == b"112344567789"
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})
print("loaded:", loaded)
"""


def test_decrypt_lambda_imports_and_decrypts_without_rotator_dependencies() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "loaded: []"


def test_lambda_package_source_never_mentions_rotator_imports() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "lambda_decrypt").glob("*.py")
        if "import rotator" in path.read_text() or "from rotator" in path.read_text()
    ]
    assert offenders == []


# The keyring's SSM client loads botocore's models through ServiceModelLoader, which skips
# botocore's scan of every service; what it loads must be what botocore's own loader loads.
MODELS = [
    ("ssm", "service-2", None),
    ("ssm", "endpoint-rule-set-1", None),
    ("docdb", "service-2", None),  # a model with sdk-extras merged into it
    ("cloudfront", "service-2", "2016-01-28"),  # one of several API versions, named
    ("ssm", "paginators-1", None),
]


@pytest.mark.parametrize(("service", "type_name", "api_version"), MODELS)
def test_the_service_model_loader_loads_what_botocores_loader_loads(
    service: str, type_name: str, api_version: str | None
) -> None:
    from botocore.loaders import Loader

    from lambda_decrypt.model_loader import ServiceModelLoader

    ours = ServiceModelLoader()
    assert ours.search_paths == Loader().search_paths
    assert ours.load_service_model(service, type_name, api_version) == Loader().load_service_model(
        service, type_name, api_version
    )


def test_the_service_model_loader_lists_no_service_for_a_known_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lambda_decrypt.model_loader import ServiceModelLoader

    listed: list[str] = []
    loader = ServiceModelLoader()
    monkeypatch.setattr(loader, "list_available_services", listed.append)
    loader.load_service_model("ssm", "service-2")
    loader.load_service_model("ssm", "endpoint-rule-set-1")
    assert listed == []


def test_a_botocore_without_the_extras_helpers_takes_botocores_own_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The two private helpers are botocore's: a release that renames them costs the shortcut,
    never a cold start."""
    from botocore.loaders import Loader

    from lambda_decrypt.model_loader import ServiceModelLoader

    own: list[tuple[str, str]] = []

    def botocores_own(self: Loader, service: str, type_name: str, api_version: object) -> str:
        own.append((service, type_name))
        return "botocore's model"

    monkeypatch.setattr(Loader, "load_service_model", botocores_own)
    monkeypatch.delattr(Loader, "_find_extras")
    assert ServiceModelLoader().load_service_model("ssm", "service-2") == "botocore's model"
    assert own == [("ssm", "service-2")]


def test_the_service_model_loader_fails_an_unknown_service_or_version_as_botocore_does() -> None:
    from botocore.exceptions import DataNotFoundError, UnknownServiceError
    from botocore.loaders import Loader

    from lambda_decrypt.model_loader import ServiceModelLoader

    for loader in (Loader(), ServiceModelLoader()):
        with pytest.raises(UnknownServiceError) as unknown:
            loader.load_service_model("no-such-service", "service-2")
        assert "ssm" in str(unknown.value)  # botocore names the known services
        with pytest.raises(DataNotFoundError):
            loader.load_service_model("ssm", "service-2", "1999-01-01")


def test_the_keyrings_default_session_loads_models_like_botocores_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A default session the keyring creates: the ServiceModelLoader, AWS_DATA_PATH honoured,
    and the client it makes is botocore's SSM client with the reader's settings."""
    import boto3

    from lambda_decrypt import keyring
    from lambda_decrypt.model_loader import ServiceModelLoader

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    client = keyring.default_ssm_client(0.5)
    assert boto3.DEFAULT_SESSION is not None
    loader = boto3.DEFAULT_SESSION._session.get_component("data_loader")
    assert isinstance(loader, ServiceModelLoader)
    # The search paths of the session boto3.client would have made: AWS_DATA_PATH's first.
    assert loader.search_paths == boto3.Session()._loader.search_paths
    assert loader.search_paths[0] == str(tmp_path)
    assert client.meta.service_model.service_name == "ssm"
    assert client.meta.region_name == "eu-west-1"
    assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (0.5, 0.5)
    assert client.meta.config.retries["total_max_attempts"] == 1
