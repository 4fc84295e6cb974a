"""Certificates made by the test: a CA, a server certificate for 127.0.0.1 and localhost, and a
client certificate, as PEM files; and NKey user seeds."""

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_FOR = datetime.timedelta(days=1)


@dataclass(frozen=True)
class CertFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class _Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    common_name: str,
    *,
    issuer: _Issued | None,
    usage: x509.ObjectIdentifier | None = None,
    hosts: bool = False,
) -> _Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.cert.subject if issuer else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts:
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    signer = issuer.key if issuer else key
    return _Issued(builder.sign(signer, hashes.SHA256()), key)


def _write(issued: _Issued, cert_path: Path, key_path: Path) -> None:
    cert_path.write_bytes(issued.cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)


def make_certificates(directory: Path, *, ca_name: str = "jobstream test CA") -> CertFiles:
    """A fresh CA and the server and client certificates it signs, under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _issue(ca_name, issuer=None)
    server = _issue("nats-server", issuer=ca, usage=ExtendedKeyUsageOID.SERVER_AUTH, hosts=True)
    client = _issue("jobstream-client", issuer=ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    files = CertFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server-cert.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client-cert.pem",
        client_key=directory / "client-key.pem",
    )
    files.ca.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    _write(server, files.server_cert, files.server_key)
    _write(client, files.client_cert, files.client_key)
    return files


def make_nkey_user(directory: Path, name: str = "user") -> tuple[str, Path]:
    """A new NKey user: its public key (for the server config) and its seed file."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public_key: str = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = directory / f"{name}.nk"
    seed_file.write_bytes(seed + b"\n")
    seed_file.chmod(0o600)
    return public_key, seed_file
