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
