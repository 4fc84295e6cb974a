"""NatsSecurity: which options go together, what reaches nats-py, which failures are final."""

import ssl
from pathlib import Path

import nats.errors
import pytest

from jobstream.events import NatsSecurity, NatsSecurityError
from jobstream.events._security import is_auth_refusal, tls_refusal
from tests._certs import make_certificates


def test_no_options_add_nothing() -> None:
    assert NatsSecurity().connect_options() == {}


def test_user_and_password_go_together() -> None:
    assert NatsSecurity(user="u", password="p").connect_options() == {"user": "u", "password": "p"}
    with pytest.raises(NatsSecurityError, match="needs a password"):
        NatsSecurity(user="u")


def test_one_kind_of_credential_only(tmp_path: Path) -> None:
    seed = tmp_path / "user.nk"
    seed.write_text("SU...")
    with pytest.raises(NatsSecurityError, match="not token and NKey seed"):
        NatsSecurity(token="t", nkey_seed_file=seed)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(NatsSecurityError, match=r"cannot read .*absent\.creds"):
        NatsSecurity(creds_file=tmp_path / "absent.creds")


def test_a_ca_file_that_is_not_one_is_named(tmp_path: Path) -> None:
    not_a_ca = tmp_path / "ca.pem"
    not_a_ca.write_text("hello")
    with pytest.raises(NatsSecurityError, match=r"cannot load the TLS CA file .*ca\.pem"):
        NatsSecurity(tls_ca_file=not_a_ca)


def test_tls_files_make_a_verifying_context(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    options = NatsSecurity(
        tls_ca_file=certs.ca, tls_cert_file=certs.client_cert, tls_key_file=certs.client_key
    ).connect_options()
    context = options["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname


def test_a_key_that_is_not_a_key_is_a_clear_error(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    with pytest.raises(
        NatsSecurityError, match=r"cannot load the TLS client certificate .*client-cert\.pem"
    ):
        NatsSecurity(tls_cert_file=certs.client_cert, tls_key_file=certs.ca)


def test_final_and_passing_failures_are_told_apart() -> None:
    assert is_auth_refusal(nats.errors.Error("nats: 'Authorization Violation'"))
    assert not is_auth_refusal(nats.errors.Error("nats: 'Permissions Violation for Publish'"))
    assert tls_refusal(ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca"))
    assert tls_refusal(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")) is None
    assert tls_refusal(ConnectionRefusedError()) is None
