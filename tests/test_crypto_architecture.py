"""The report's cryptographic architecture (PCI DSS 3.6.1.1): keys, KEKs, strengths, a weak KEK."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import jsonschema

from rotator.adapters.evidence_reads import KmsKeyEncryptionKeys
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.domain.checks import ReportOptions, findings
from rotator.domain.crypto_architecture import crypto_architecture
from rotator.domain.findings import FindingCode, Severity
from rotator.domain.key_protection import KekDescription, holds_private_key, rsa_strength
from rotator.domain.keys import KeyMaterial
from rotator.domain.state import KeyringState, ProtectedKey, ProtectionSweep
from rotator.services.report import EvidenceSources, make_report
from rotator.services.report_render import ReportFormat, render
from tests.conftest import NOW, REGION, make_record
from tests.fakes import FakeConnect, FakeKeyEncryptionKeys, FakeKeyring, FakeLock

SCHEMA = Path(__file__).parents[1] / "rotator" / "services" / "report.schema.json"
KEY_4096, KEY_2048 = "key-4096", "key-2048"


def test_strengths_follow_nist_and_sizes_between_rows_count_as_the_lower() -> None:
    assert [rsa_strength(n) for n in (2048, 3072, 4096, 8192)] == [112, 128, 152, 192]
    assert rsa_strength(2560) == 112


def test_the_section_names_each_key_its_size_expiry_store_and_the_kms_key_with_its_spec(
    ssm: Any, material_a: KeyMaterial, material_2048: KeyMaterial
) -> None:
    kms = boto3.client("kms", region_name=REGION)
    arn = kms.create_key(Description="keyring")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName="alias/keyring", TargetKeyId=arn.rsplit("/", 1)[1])
    keyring = SsmKeyring(ssm, "/arch", kms_key_id="alias/keyring")
    keyring.store_key(KEY_4096, material_a, make_record(KEY_4096, material_a))
    keyring.store_key(KEY_2048, material_2048, make_record(KEY_2048, material_2048))
    evidence = EvidenceSources(keks=KmsKeyEncryptionKeys(kms))

    report = make_report(
        keyring, FakeConnect(), FakeLock(lambda: NOW), ReportOptions(), NOW, evidence=evidence
    )
    document = json.loads(render(report, ReportFormat.JSON))
    jsonschema.validate(document, json.loads(SCHEMA.read_text()))
    section = document["cryptographic_architecture"]
    keys = {k["key_id"]: k for k in section["keys"]}
    assert set(keys) == {KEY_4096, KEY_2048}
    assert (keys[KEY_4096]["algorithm"], keys[KEY_4096]["strength_bits"]) == ("RSA-4096", 152)
    assert (keys[KEY_2048]["algorithm"], keys[KEY_2048]["strength_bits"]) == ("RSA-2048", 112)
    for key_id, material in ((KEY_4096, material_a), (KEY_2048, material_2048)):
        assert keys[key_id]["not_after"] == material.not_after.isoformat()
        assert keys[key_id]["stored_at"] == f"/arch/keys/{key_id}/private-key"
        assert keys[key_id]["kms_key"] == "alias/keyring"
        assert "encrypt customer input" in keys[key_id]["use"]
    (kek,) = section["key_encrypting_keys"]
    assert (kek["arn"], kek["aliases"], kek["key_spec"]) == (
        arn,
        ["alias/keyring"],
        "SYMMETRIC_DEFAULT",
    )
    assert (kek["strength_bits"], sorted(kek["protects"])) == (256, [KEY_2048, KEY_4096])
    assert kek["strongest_protected_key_bits"] == 152
    roles = {a["role"]: a["algorithm"] for a in section["algorithms"]}
    assert "RSA-OAEP with SHA-512 and MGF1-SHA-512" in roles["data key wrapping"]
    assert roles["message signature"] == "ECDSA on P-384 with SHA-384"
    assert "0x0378" in roles["message format"]
    assert section["decrypt_function"]["status"].startswith("not checked")
    assert FindingCode.KEK_WEAKER_THAN_KEY.value not in {f["code"] for f in document["findings"]}

    html = render(report, ReportFormat.HTML)
    assert "Cryptographic architecture" in html
    for text in (KEY_4096, KEY_2048, "RSA-4096", "RSA-2048", arn, "alias/keyring"):
        assert text in html
    assert "SYMMETRIC_DEFAULT" in html and "not checked" in html
    assert "BEGIN" not in html and "BEGIN" not in json.dumps(document)


def _state(*records: Any, kek: KekDescription | None) -> KeyringState:
    protection = {
        r.key_id: ProtectedKey(f"/p/keys/{r.key_id}/private-key", "alias/weak") for r in records
    }
    return KeyringState(
        prefix="/p",
        records=records,
        current={},
        instances=(),
        protection=ProtectionSweep(protection, {}),
        keks={} if kek is None else {"alias/weak": kek},
    )


def test_a_kek_weaker_than_a_key_it_protects_is_a_finding_naming_key_and_kek(
    material_a: KeyMaterial, material_2048: KeyMaterial
) -> None:
    strong, weak = make_record(KEY_4096, material_a), make_record(KEY_2048, material_2048)
    fakes = FakeKeyEncryptionKeys()
    rsa_2048 = fakes.add("weak-kek", "RSA_2048", alias="alias/weak")
    described = fakes.describe("alias/weak")
    assert described.strength == 112

    found = [
        f
        for f in findings(_state(strong, weak, kek=described), ReportOptions(), NOW)
        if f.code is FindingCode.KEK_WEAKER_THAN_KEY
    ]
    assert [(f.key_id, f.severity) for f in found] == [(KEY_4096, Severity.WARNING)]
    assert f"/p/keys/{KEY_4096}/private-key (RSA-4096, 152-bit security)" in found[0].message
    assert f"{rsa_2048.arn} (RSA_2048, 112-bit security)" in found[0].message
    # The same keys under AES-256, or under a KEK nobody could describe: no finding.
    aes = FakeKeyEncryptionKeys()
    aes.add("aes-kek", alias="alias/weak")
    for kek in (aes.describe("alias/weak"), None):
        codes = {f.code for f in findings(_state(strong, weak, kek=kek), ReportOptions(), NOW)}
        assert FindingCode.KEK_WEAKER_THAN_KEY not in codes
    (entry,) = crypto_architecture(_state(strong, kek=None)).keks
    assert (entry.description, entry.strength_bits, entry.protects) == (None, None, (KEY_4096,))


def test_a_kek_that_cannot_be_described_is_shown_unreadable_and_the_report_stands(
    material_a: KeyMaterial,
) -> None:
    keyring = FakeKeyring()
    keyring.store_key(KEY_4096, material_a, make_record(KEY_4096, material_a))
    reference = next(iter(keyring.protection_sweep().keys.values())).kms_key_id
    keks = FakeKeyEncryptionKeys(refused={reference})
    report = make_report(
        keyring,
        FakeConnect(),
        FakeLock(lambda: NOW),
        ReportOptions(),
        NOW,
        evidence=EvidenceSources(keks),
    )
    (kek,) = report.to_dict()["cryptographic_architecture"]["key_encrypting_keys"]
    assert kek["arn"] is None and "AccessDeniedException" in kek["unreadable"]


def test_private_key_text_is_recognised_as_pem_or_base64_der(material_a: KeyMaterial) -> None:
    pem = material_a.private_key_pem
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    assert holds_private_key(pem) and holds_private_key(f"key={pem}") and holds_private_key(body)
    assert holds_private_key(pem.replace("PRIVATE KEY", "RSA PRIVATE KEY"))
    assert not holds_private_key(material_a.certificate_pem)
    assert not holds_private_key(material_a.public_key_pem)
    assert not holds_private_key("/connect-keys") and not holds_private_key("")
