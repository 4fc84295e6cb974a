"""Credentials made by the test: a CA, a server certificate for 127.0.0.1 and localhost, and a
client certificate, as PEM files; NKey user seeds; operator-mode JWTs and a `.creds` file."""

import base64
import datetime
import ipaddress
import json
import os
import time
from collections.abc import Mapping
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


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jwt(signer: nkeys.KeyPair, subject: str, nats_claims: Mapping[str, object]) -> str:
    header = _b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims = {
        "jti": _b64url(os.urandom(16)),
        "iat": int(time.time()),
        "iss": signer.public_key.decode(),
        "sub": subject,
        "name": subject[:8],
        "nats": {"version": 2, **nats_claims},
    }
    payload = _b64url(json.dumps(claims).encode())
    signature = _b64url(signer.sign(f"{header}.{payload}".encode()))
    return f"{header}.{payload}.{signature}"


def _keypair(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


@dataclass(frozen=True)
class Decentralized:
    """Operator-mode auth: the server's config lines, and a user's `.creds` file."""

    server_config: str
    creds_file: Path


def make_operator_and_user(directory: Path, name: str = "user") -> Decentralized:
    """An operator, the accounts it signs (a system account and one with JetStream, both
    preloaded in the server's memory resolver), and a user of the JetStream account with its
    `.creds` file, as `nsc` would make them."""
    operator = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    operator_jwt = _jwt(operator, operator.public_key.decode(), {"type": "operator"})
    unlimited: dict[str, object] = {"subs": -1, "conn": -1, "data": -1, "payload": -1}
    # JetStream is on for an account whose limits allow storage.
    jetstream = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    accounts = {}
    for account_limits in (unlimited, {**unlimited, **jetstream}):
        account = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
        claims = {"type": "account", "limits": account_limits}
        accounts[account] = _jwt(operator, account.public_key.decode(), claims)
    system, jobs = accounts
    user = _keypair(nkeys.PREFIX_BYTE_USER)
    user_jwt = _jwt(
        jobs, user.public_key.decode(), {"type": "user", "subs": -1, "data": -1, "payload": -1}
    )
    creds_file = directory / f"{name}.creds"
    creds_file.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n"
    )
    creds_file.chmod(0o600)
    preload = ", ".join(f"{key.public_key.decode()}: {jwt}" for key, jwt in accounts.items())
    config = (
        f"operator: {operator_jwt}\n"
        f"system_account: {system.public_key.decode()}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{ {preload} }}\n"
    )
    return Decentralized(server_config=config, creds_file=creds_file)
