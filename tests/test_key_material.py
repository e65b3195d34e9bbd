"""Key material: generated pairs, loaded pairs and their validation (rotator.domain.keys)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import NoReturn

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from rotator.domain.keys import (
    CONNECT_PUBLIC_KEY_PEM_LIMIT,
    DEFAULT_VALIDITY_DAYS,
    KeyMaterial,
    generate_key_material,
    load_key_material,
)
from rotator.errors import KeyMaterialError
from tests.conftest import NOW, Vector


def pem_body_lines(pem: str) -> list[str]:
    """The base64 lines of a PEM: any one of them in a message is a leak."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def assert_no_pem(error: BaseException, *pems: str) -> None:
    """Neither the message, the repr nor the args of `error` carry any line of the PEMs."""
    texts = [str(error), repr(error), *(str(arg) for arg in error.args)]
    for pem in pems:
        for line in pem_body_lines(pem):
            for text in texts:
                assert line not in text
        for text in texts:
            assert "PRIVATE KEY-----" not in text


def certificate_of(material: KeyMaterial) -> x509.Certificate:
    return x509.load_pem_x509_certificate(material.certificate_pem.encode())


def encrypted_pem(private_key_pem: str) -> str:
    key = serialization.load_pem_private_key(
        private_key_pem.encode(), password=None, unsafe_skip_rsa_key_validation=True
    )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"correct horse battery staple"),
    ).decode()


def pkcs1_pem(private_key_pem: str) -> str:
    key = serialization.load_pem_private_key(
        private_key_pem.encode(), password=None, unsafe_skip_rsa_key_validation=True
    )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


# -- generate_key_material ---------------------------------------------------------------------


def test_certificate_is_self_signed_and_verifies_with_its_own_key(
    material_a: KeyMaterial,
) -> None:
    certificate = certificate_of(material_a)
    assert certificate.issuer == certificate.subject
    certificate.verify_directly_issued_by(certificate)
    public_key = certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    assert certificate.signature_hash_algorithm is not None
    public_key.verify(
        certificate.signature,
        certificate.tbs_certificate_bytes,
        padding.PKCS1v15(),
        certificate.signature_hash_algorithm,
    )


def test_certificate_signature_is_sha256_with_rsa(material_a: KeyMaterial) -> None:
    certificate = certificate_of(material_a)
    assert isinstance(certificate.signature_hash_algorithm, hashes.SHA256)
    assert certificate.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSA_WITH_SHA256


def test_certificate_extensions(material_a: KeyMaterial) -> None:
    certificate = certificate_of(material_a)
    basic = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical is True
    assert basic.value.ca is True
    ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    expected = x509.SubjectKeyIdentifier.from_public_key(certificate.public_key())
    assert ski.value.digest == expected.digest
    assert aki.value.key_identifier == ski.value.digest


def test_default_validity_is_exactly_730_days_from_now(material_a: KeyMaterial) -> None:
    certificate = certificate_of(material_a)
    assert DEFAULT_VALIDITY_DAYS == 730
    assert certificate.not_valid_before_utc == NOW
    assert certificate.not_valid_after_utc == NOW + timedelta(days=730)
    assert material_a.not_before == NOW
    assert material_a.not_after == NOW + timedelta(days=730)
    assert material_a.days_to_expiry(NOW) == 730


def test_custom_validity_subject_and_2048_bits() -> None:
    # a zone other than UTC and microseconds: the certificate starts at the UTC second
    now = datetime(2027, 3, 4, 5, 6, 7, 891011, tzinfo=timezone(timedelta(hours=2)))
    material = generate_key_material(
        now=now, key_size=2048, validity_days=90, subject="CN=pay,O=Example"
    )
    certificate = certificate_of(material)
    start = datetime(2027, 3, 4, 3, 6, 7, tzinfo=UTC)
    assert material.key_size == 2048
    assert certificate.public_key().key_size == 2048  # type: ignore[union-attr]
    assert certificate.not_valid_before_utc == start
    assert certificate.not_valid_after_utc == start + timedelta(days=90)
    assert (material.not_before, material.not_after) == (start, start + timedelta(days=90))
    assert material.subject == "CN=pay,O=Example"
    assert certificate.subject.rfc4514_string() == "CN=pay,O=Example"
    assert certificate.issuer == certificate.subject


@pytest.mark.parametrize("subject", ["O=Example", "O=Example,C=DE", "not an rfc4514 name"])
def test_subject_without_cn_or_malformed_is_refused(subject: str) -> None:
    with pytest.raises(KeyMaterialError, match="subject"):
        generate_key_material(now=NOW, key_size=2048, subject=subject)


@pytest.mark.parametrize("key_size", [1024, 8192, 4000, 0, -4096])
def test_disallowed_key_sizes_are_refused_before_any_generation(
    key_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_generation(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("a key was generated before the key size was checked")

    monkeypatch.setattr(rsa, "generate_private_key", no_generation)
    with pytest.raises(KeyMaterialError, match=f"RSA key size {key_size} is not allowed"):
        generate_key_material(now=NOW, key_size=key_size)


@pytest.mark.parametrize("validity_days", [0, -1])
def test_validity_below_one_day_is_refused(
    validity_days: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_generation(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("a key was generated before the validity was checked")

    monkeypatch.setattr(rsa, "generate_private_key", no_generation)
    with pytest.raises(KeyMaterialError, match="validity"):
        generate_key_material(now=NOW, validity_days=validity_days)


def test_rsa_4096_public_key_pem_fits_connect(material_a: KeyMaterial) -> None:
    assert material_a.key_size == 4096
    assert material_a.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert len(material_a.public_key_pem) == 800
    assert len(material_a.public_key_pem) <= CONNECT_PUBLIC_KEY_PEM_LIMIT == 1024


def test_private_key_pem_is_unencrypted_pkcs8(material_a: KeyMaterial) -> None:
    pem = material_a.private_key_pem
    assert pem.startswith("-----BEGIN PRIVATE KEY-----\n")
    assert pem.rstrip().endswith("-----END PRIVATE KEY-----")
    assert "RSA PRIVATE KEY" not in pem
    assert "ENCRYPTED" not in pem
    key = serialization.load_pem_private_key(
        pem.encode(), password=None, unsafe_skip_rsa_key_validation=True
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 4096


def test_fingerprints_are_sha256_of_der_spki_and_der_certificate(
    material_a: KeyMaterial,
) -> None:
    certificate = certificate_of(material_a)
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert material_a.public_key_sha256 == hashlib.sha256(spki).hexdigest()
    assert material_a.certificate_sha256 == hashlib.sha256(der).hexdigest()
    public_from_pem = serialization.load_pem_public_key(material_a.public_key_pem.encode())
    spki_from_pem = public_from_pem.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki_from_pem == spki


def test_two_generated_keys_differ(material_a: KeyMaterial, material_b: KeyMaterial) -> None:
    assert material_a.public_key_sha256 != material_b.public_key_sha256
    assert material_a.certificate_sha256 != material_b.certificate_sha256
    assert material_a.subject == "CN=test-key-a"
    assert material_b.subject == "CN=test-key-b"


def test_repr_hides_the_private_key(material_a: KeyMaterial) -> None:
    text = repr(material_a)
    assert "private_key_pem" not in text
    assert "PRIVATE KEY" not in text
    for line in pem_body_lines(material_a.private_key_pem):
        assert line not in text
    assert material_a.public_key_sha256 in text  # the repr is still useful


# -- load_key_material -------------------------------------------------------------------------


def test_real_vector_pair_loads_even_though_expired(real_vector: Vector) -> None:
    material = load_key_material(real_vector.private_key_pem, real_vector.certificate_pem)
    assert material.key_size == 4096
    assert material.not_after == datetime(2022, 10, 12, 9, 22, 29, tzinfo=UTC)
    assert material.not_after < NOW
    assert len(material.public_key_pem) == 800
    certificate = x509.load_pem_x509_certificate(real_vector.certificate_pem.encode())
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert material.certificate_sha256 == hashlib.sha256(der).hexdigest()
    # bytes are accepted as well as str, with the same result
    again = load_key_material(
        real_vector.private_key_pem.encode(), real_vector.certificate_pem.encode()
    )
    assert again.public_key_sha256 == material.public_key_sha256


def test_loaded_material_matches_generated(material_2048: KeyMaterial) -> None:
    loaded = load_key_material(material_2048.private_key_pem, material_2048.certificate_pem)
    assert loaded == material_2048


def test_mismatched_pair_is_refused(material_a: KeyMaterial, material_b: KeyMaterial) -> None:
    with pytest.raises(KeyMaterialError, match="does not belong") as caught:
        load_key_material(material_a.private_key_pem, material_b.certificate_pem)
    assert_no_pem(caught.value, material_a.private_key_pem, material_b.private_key_pem)


def test_pkcs1_private_key_is_accepted(material_a: KeyMaterial) -> None:
    traditional = pkcs1_pem(material_a.private_key_pem)
    assert traditional.startswith("-----BEGIN RSA PRIVATE KEY-----")
    material = load_key_material(traditional, material_a.certificate_pem)
    assert material.public_key_sha256 == material_a.public_key_sha256
    # stored form is always PKCS#8
    assert material.private_key_pem == material_a.private_key_pem


def _truncated(pem: str) -> str:
    return pem[: len(pem) // 2] + "\n-----END PRIVATE KEY-----\n"


def _flipped(pem: str) -> str:
    """One base64 character changed in the middle of the body: a corrupted key."""
    lines = pem.splitlines()
    middle = len(lines) // 2
    line = lines[middle]
    lines[middle] = ("B" if line[10] != "B" else "C").join([line[:10], line[11:]])
    return "\n".join(lines) + "\n"


MALFORMED_KEYS: dict[str, Callable[[KeyMaterial], str]] = {
    "garbage": lambda m: "definitely not a key",
    "empty": lambda m: "",
    "armoured garbage": lambda m: (
        "-----BEGIN PRIVATE KEY-----\nZm9vYmFy\n-----END PRIVATE KEY-----\n"
    ),
    "truncated": lambda m: _truncated(m.private_key_pem),
    "cut short": lambda m: m.private_key_pem[:1000],
    "certificate as key": lambda m: m.certificate_pem,
    "public key as key": lambda m: m.public_key_pem,
    "corrupted": lambda m: _flipped(m.private_key_pem),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_KEYS))
def test_malformed_private_key_pems_are_refused(case: str, material_2048: KeyMaterial) -> None:
    bad = MALFORMED_KEYS[case](material_2048)
    with pytest.raises(KeyMaterialError, match="private key") as caught:
        load_key_material(bad, material_2048.certificate_pem)
    assert_no_pem(caught.value, material_2048.private_key_pem)


@pytest.mark.parametrize(
    "certificate",
    [
        "garbage",
        "-----BEGIN CERTIFICATE-----\nZm9vYmFy\n-----END CERTIFICATE-----\n",
    ],
)
def test_malformed_certificate_is_refused(certificate: str, material_2048: KeyMaterial) -> None:
    with pytest.raises(KeyMaterialError, match="certificate") as caught:
        load_key_material(material_2048.private_key_pem, certificate)
    assert_no_pem(caught.value, material_2048.private_key_pem)


def test_private_key_given_as_certificate_is_refused(material_2048: KeyMaterial) -> None:
    with pytest.raises(KeyMaterialError, match="certificate") as caught:
        load_key_material(material_2048.private_key_pem, material_2048.private_key_pem)
    assert_no_pem(caught.value, material_2048.private_key_pem)


def test_encrypted_private_key_is_refused_clearly(material_2048: KeyMaterial) -> None:
    pem = encrypted_pem(material_2048.private_key_pem)
    assert "ENCRYPTED PRIVATE KEY" in pem
    with pytest.raises(KeyMaterialError, match="encrypted") as caught:
        load_key_material(pem, material_2048.certificate_pem)
    assert "unencrypted" in str(caught.value)
    assert_no_pem(caught.value, pem, material_2048.private_key_pem)


def test_ec_private_key_is_refused(material_2048: KeyMaterial) -> None:
    pem = (
        ec.generate_private_key(ec.SECP384R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    with pytest.raises(KeyMaterialError, match="not an RSA key") as caught:
        load_key_material(pem, material_2048.certificate_pem)
    assert_no_pem(caught.value, pem)


def test_certificate_with_ec_key_is_refused(material_2048: KeyMaterial) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string("CN=ec")
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(ec_key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(KeyMaterialError, match="RSA public key") as caught:
        load_key_material(material_2048.private_key_pem, pem)
    assert_no_pem(caught.value, material_2048.private_key_pem)


def test_rsa_1024_private_key_is_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    name = x509.Name.from_rfc4514_string("CN=small")
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    with pytest.raises(KeyMaterialError, match="RSA key size 1024 is not allowed") as caught:
        load_key_material(pem, certificate)
    assert_no_pem(caught.value, pem)


# -- check_registrable -------------------------------------------------------------------------


def test_registrable_in_the_middle_of_validity(material_a: KeyMaterial) -> None:
    material_a.check_registrable(NOW)  # the first second is fine
    material_a.check_registrable(NOW + timedelta(days=365))
    material_a.check_registrable(material_a.not_after - timedelta(seconds=1))


@pytest.mark.parametrize(
    "offset", [timedelta(0), timedelta(seconds=1), timedelta(days=1), timedelta(days=3650)]
)
def test_expired_certificate_is_not_registrable(offset: timedelta, material_a: KeyMaterial) -> None:
    with pytest.raises(KeyMaterialError, match="expired") as caught:
        material_a.check_registrable(material_a.not_after + offset)
    assert_no_pem(caught.value, material_a.private_key_pem)


def test_real_vector_is_not_registrable(real_vector: Vector) -> None:
    material = load_key_material(real_vector.private_key_pem, real_vector.certificate_pem)
    with pytest.raises(KeyMaterialError, match="expired on 2022-10-12") as caught:
        material.check_registrable(NOW)
    assert_no_pem(caught.value, real_vector.private_key_pem)


@pytest.mark.parametrize("offset", [timedelta(seconds=1), timedelta(days=30)])
def test_not_yet_valid_certificate_is_not_registrable(
    offset: timedelta, material_a: KeyMaterial
) -> None:
    with pytest.raises(KeyMaterialError, match="not valid before") as caught:
        material_a.check_registrable(material_a.not_before - offset)
    assert_no_pem(caught.value, material_a.private_key_pem)


def test_too_long_public_key_pem_is_not_registrable(material_a: KeyMaterial) -> None:
    too_long = replace(material_a, public_key_pem="x" * (CONNECT_PUBLIC_KEY_PEM_LIMIT + 1))
    with pytest.raises(KeyMaterialError, match="1025 characters") as caught:
        too_long.check_registrable(NOW + timedelta(days=1))
    assert_no_pem(caught.value, material_a.private_key_pem)
    at_limit = replace(material_a, public_key_pem="x" * CONNECT_PUBLIC_KEY_PEM_LIMIT)
    at_limit.check_registrable(NOW + timedelta(days=1))
