"""Evidence (issue 11): a private key copy left outside the keyring, and one key pair shared."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from rotator.domain.checks import ReportOptions, findings
from rotator.domain.findings import FindingCode, Severity
from rotator.domain.keys import KeyMaterial
from rotator.domain.state import KeyringState, ProtectionSweep, blog_source, copied_from
from rotator.entrypoints.cli import main
from tests.conftest import NOW, make_record
from tests.fakes import HeldKeys

INSTANCE = "adopted-instance"
BLOG_KEY_ID = "blog-key"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out), out.getvalue()


def report_findings(*argv: str) -> list[dict[str, Any]]:
    code, out = run("report", "--format", "json", *argv)
    assert code in (0, 1), out
    found: list[dict[str, Any]] = json.loads(out)["findings"]
    return found


def test_the_blog_parameter_left_after_adoption_is_a_finding_until_deleted(
    ssm: Any, tmp_path: Path, material_a: KeyMaterial, connect_holds: HeldKeys
) -> None:
    connect_holds.hold(INSTANCE, BLOG_KEY_ID, material_a.public_key_pem)
    for name, value in (
        ("CONNECT_INPUT_DECRYPTION_KEY", material_a.private_key_pem),
        ("CONNECT_INPUT_KEY_ID", BLOG_KEY_ID),
    ):
        ssm.put_parameter(Name=name, Value=value, Type="SecureString")
    certificate = tmp_path / "cert.pem"
    certificate.write_text(material_a.certificate_pem)
    assert [f["code"] for f in report_findings()] == []  # nothing adopted: nothing looked for
    code, out = run(
        "import", "--from-blog-parameters", "--certificate", str(certificate),
        "--instance-id", INSTANCE,
    )  # fmt: skip
    assert code == 0, out

    copies = [f for f in report_findings() if f["code"] == "private-key-copy"]
    assert copies == [
        {
            "severity": "warning",
            "code": "private-key-copy",
            "title": "an adopted private key is still stored outside the keyring",
            "instance_id": INSTANCE,
            "key_id": BLOG_KEY_ID,
            "message": "parameter CONNECT_INPUT_DECRYPTION_KEY still holds the private key "
            f"adopted as key {BLOG_KEY_ID}: delete it once the adoption is verified",
            "runbook": "adopt-blog-deployment",
        }
    ]
    assert "BEGIN" not in json.dumps(copies)  # the name, never the value

    ssm.delete_parameter(Name="CONNECT_INPUT_DECRYPTION_KEY")
    assert [f for f in report_findings() if f["code"] == "private-key-copy"] == []


def test_a_custom_blog_parameter_is_recorded_as_the_source_and_looked_for() -> None:
    assert blog_source("CONNECT_INPUT_DECRYPTION_KEY") == "blog"
    assert copied_from("blog") == "CONNECT_INPUT_DECRYPTION_KEY"
    assert copied_from(blog_source("/custom/blog-key")) == "/custom/blog-key"
    assert copied_from("imported") is None


def state_of(*records: Any) -> KeyringState:
    return KeyringState(
        prefix="/p", records=records, current={}, instances=(), protection=ProtectionSweep.unread()
    )


def test_one_key_pair_under_two_key_ids_or_instances_is_a_critical_finding(
    material_a: KeyMaterial, material_b: KeyMaterial
) -> None:
    prod = make_record("prod-key", material_a, instance_id="prod-instance")
    test = make_record("test-key", material_b, instance_id="test-instance")
    assert [f for f in findings(state_of(prod, test), ReportOptions(), NOW) if
            f.code is FindingCode.KEY_SHARED] == []  # fmt: skip

    shared = replace(test, public_key_sha256=prod.public_key_sha256)
    (finding,) = [
        f
        for f in findings(state_of(prod, shared), ReportOptions(), NOW)
        if f.code is FindingCode.KEY_SHARED
    ]
    assert finding.severity is Severity.CRITICAL
    assert (finding.instance_id, finding.key_id) == (None, "prod-key")
    assert "prod-key (prod-instance), test-key (test-instance)" in finding.message
