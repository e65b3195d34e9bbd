"""Key material: RSA key pairs and self-signed certificates, generated or loaded and validated."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from rotator.errors import KeyMaterialError

ALLOWED_KEY_SIZES = (2048, 3072, 4096)
DEFAULT_KEY_SIZE = 4096
DEFAULT_VALIDITY_DAYS = 730
DEFAULT_SUBJECT = "CN=connect-key-rotator"
# AssociateSecurityKey refuses a public key PEM longer than this (RSA-4096 is 800 characters).
CONNECT_PUBLIC_KEY_PEM_LIMIT = 1024


@dataclass(frozen=True)
class KeyMaterial:
    """A private key with its certificate; the repr never shows the private key."""

    private_key_pem: str = field(repr=False)
    certificate_pem: str
    public_key_pem: str
    key_size: int
    subject: str
    not_before: datetime
    not_after: datetime
    public_key_sha256: str
    certificate_sha256: str

    def days_to_expiry(self, now: datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400

    def check_registrable(self, now: datetime) -> None:
        """Refuse what must not go to Connect: an expired or future certificate, a long PEM."""
        if now >= self.not_after:
            raise KeyMaterialError(
                f"certificate expired on {self.not_after:%Y-%m-%d}: it can decrypt, not encrypt"
            )
        if now < self.not_before:
            raise KeyMaterialError(f"certificate is not valid before {self.not_before:%Y-%m-%d}")
        if len(self.public_key_pem) > CONNECT_PUBLIC_KEY_PEM_LIMIT:
            raise KeyMaterialError(
                f"public key PEM is {len(self.public_key_pem)} characters; Connect accepts "
                f"at most {CONNECT_PUBLIC_KEY_PEM_LIMIT}"
            )


def generate_key_material(
    *,
    now: datetime,
    key_size: int = DEFAULT_KEY_SIZE,
    validity_days: int = DEFAULT_VALIDITY_DAYS,
    subject: str = DEFAULT_SUBJECT,
) -> KeyMaterial:
    """A new key pair and a certificate like `openssl req -x509 -sha256 -nodes -newkey rsa:N`."""
    # Every cheap check before the expensive generation.
    check_key_size(key_size)
    check_validity(validity_days)
    parse_subject(subject)
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    return self_signed_material(private_key, now=now, validity_days=validity_days, subject=subject)


def self_signed_material(
    private_key: rsa.RSAPrivateKey,
    *,
    now: datetime,
    validity_days: int = DEFAULT_VALIDITY_DAYS,
    subject: str = DEFAULT_SUBJECT,
) -> KeyMaterial:
    """A self-signed certificate for an existing key, valid from `now` for `validity_days`."""
    check_key_size(private_key.key_size)
    check_validity(validity_days)
    name = parse_subject(subject)
    public_key = private_key.public_key()
    not_before = now.astimezone(UTC).replace(microsecond=0)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=validity_days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private_key, hashes.SHA256())
    )
    return _material(private_key, certificate)


def load_key_material(
    private_key_pem: str | bytes, certificate_pem: str | bytes, *, validated: bool = False
) -> KeyMaterial:
    """Load and fully validate an existing pair (for example one made by hand as in the blog).

    `validated=True` skips OpenSSL's RSA consistency checks (~300 ms for RSA-4096), for a key
    this process already validated in full when it was staged; every other check still runs.
    """
    private_key = load_private_key(private_key_pem, validated=validated)
    certificate = load_certificate(certificate_pem)
    if certificate.public_key() != private_key.public_key():
        raise KeyMaterialError("the certificate does not belong to the private key")
    if certificate.not_valid_after_utc <= certificate.not_valid_before_utc:
        raise KeyMaterialError("certificate NotAfter is not later than its NotBefore")
    return _material(private_key, certificate)


def load_private_key(private_key_pem: str | bytes, *, validated: bool = False) -> rsa.RSAPrivateKey:
    """Parse an unencrypted PEM private key (PKCS#8 or PKCS#1) with OpenSSL's full RSA checks."""
    pem = _as_bytes(private_key_pem)
    if b"-----BEGIN" not in pem or b"PRIVATE KEY-----" not in pem:
        raise KeyMaterialError("private key is not a PEM private key")
    try:
        private_key = serialization.load_pem_private_key(
            pem, password=None, unsafe_skip_rsa_key_validation=validated
        )
    except TypeError:
        raise KeyMaterialError("private key is encrypted; give an unencrypted PEM") from None
    except ValueError:
        raise KeyMaterialError(
            "private key PEM is malformed or fails RSA consistency checks"
        ) from None
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise KeyMaterialError("private key is not an RSA key; Connect uses RSA")
    check_key_size(private_key.key_size)
    return private_key


def load_certificate(certificate_pem: str | bytes) -> x509.Certificate:
    """Parse a PEM X.509 certificate with an RSA public key."""
    try:
        certificate = x509.load_pem_x509_certificate(_as_bytes(certificate_pem))
    except ValueError:
        raise KeyMaterialError("certificate is not a well-formed PEM X.509 certificate") from None
    if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
        raise KeyMaterialError("certificate does not hold an RSA public key")
    return certificate


def check_key_size(key_size: int) -> None:
    if key_size not in ALLOWED_KEY_SIZES:
        allowed = ", ".join(str(size) for size in ALLOWED_KEY_SIZES)
        raise KeyMaterialError(f"RSA key size {key_size} is not allowed (allowed: {allowed})")


def check_validity(validity_days: int) -> None:
    if validity_days < 1:
        raise KeyMaterialError("certificate validity must be at least one day")


def parse_subject(subject: str) -> x509.Name:
    try:
        name = x509.Name.from_rfc4514_string(subject)
    except ValueError:
        raise KeyMaterialError(f"certificate subject {subject!r} is not an RFC 4514 name") from None
    if not name.get_attributes_for_oid(NameOID.COMMON_NAME):
        raise KeyMaterialError(f"certificate subject {subject!r} has no CN")
    return name


def public_key_sha256(public_key: rsa.RSAPublicKey) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo: one fingerprint for key and certificate alike."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def public_key_sha256_of_pem(public_key_pem: str) -> str | None:
    """Fingerprint of a public key PEM as Connect lists it; None if it is not an RSA key."""
    try:
        public_key = serialization.load_pem_public_key(public_key_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    return public_key_sha256(public_key) if isinstance(public_key, rsa.RSAPublicKey) else None


def _material(private_key: rsa.RSAPrivateKey, certificate: x509.Certificate) -> KeyMaterial:
    public_key = private_key.public_key()
    return KeyMaterial(
        private_key_pem=private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii"),
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        public_key_pem=public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii"),
        key_size=private_key.key_size,
        subject=certificate.subject.rfc4514_string(),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        public_key_sha256=public_key_sha256(public_key),
        certificate_sha256=certificate.fingerprint(hashes.SHA256()).hex(),
    )


def _as_bytes(pem: str | bytes) -> bytes:
    return pem.encode("ascii", "replace") if isinstance(pem, str) else pem
