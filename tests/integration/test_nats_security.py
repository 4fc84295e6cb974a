"""Every process against a nats-server that wants credentials and TLS (certificates made by
the test): each kind of credential works; a wrong one, an untrusted CA or a missing client
certificate ends the command at once with exit 3 and one line naming the URL, secrets hidden."""

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobstream.events import Bus, JobCompleted, NatsSecurity, ensure_buckets, ensure_streams
from jobstream.services.stack import NatsServer
from tests._certs import (
    CertFiles,
    Decentralized,
    make_certificates,
    make_nkey_user,
    make_operator_and_user,
)
from tests.faults._harness import JOBSTREAM, REPO_ROOT, Processes, wait_for_job_end
from tests.integration.test_cli_errors import assert_clean_error

USER = "alice"
PASSWORD = "alice-s3cret"
TOKEN = "t0ken-s3cret"
# A refusal must end the command well before nats-py's reconnect attempts would.
REFUSAL_MAX_S = 5.0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*JOBSTREAM, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )


def tls_flags(certs: CertFiles) -> list[str]:
    return [
        "--nats-tls-ca",
        str(certs.ca),
        "--nats-tls-cert",
        str(certs.client_cert),
        "--nats-tls-key",
        str(certs.client_key),
    ]


@pytest.fixture
def certs(tmp_path: Path) -> CertFiles:
    return make_certificates(tmp_path / "certs")


@pytest.fixture
def nkey_user(tmp_path: Path) -> tuple[str, Path]:
    return make_nkey_user(tmp_path)


@pytest.fixture
def secure_server(
    tmp_path: Path, certs: CertFiles, nkey_user: tuple[str, Path]
) -> Iterator[NatsServer]:
    """Users with a password or an NKey; TLS with client certificates required."""
    config = (
        f'authorization {{ users: [ {{ user: {USER}, password: "{PASSWORD}" }},'
        f" {{ nkey: {nkey_user[0]} }} ] }}\n"
        f'tls {{ cert_file: "{certs.server_cert}", key_file: "{certs.server_key}",'
        f' ca_file: "{certs.ca}", verify: true, timeout: 2 }}\n'
    )
    server = NatsServer(tmp_path / "nats-secure", extra_config=config).start()
    yield server
    server.stop()


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(
        tmp_path / "nats-token", extra_config=f'authorization {{ token: "{TOKEN}" }}'
    ).start()
    yield server
    server.stop()


@pytest.fixture
def operator(tmp_path: Path) -> Decentralized:
    return make_operator_and_user(tmp_path)


@pytest.fixture
def operator_server(tmp_path: Path, operator: Decentralized) -> Iterator[NatsServer]:
    """Operator mode: accounts and users are JWTs; a user signs in with a `.creds` file."""
    server = NatsServer(tmp_path / "nats-operator", extra_config=operator.server_config).start()
    yield server
    server.stop()


def tls_url(server: NatsServer) -> str:
    return f"tls://127.0.0.1:{server.port}"


async def test_worker_dispatcher_and_submit_run_a_job_over_tls_with_a_password(
    secure_server: NatsServer, certs: CertFiles, tmp_path: Path
) -> None:
    url = tls_url(secure_server)
    security = NatsSecurity(
        user=USER,
        password=PASSWORD,
        tls_ca_file=certs.ca,
        tls_cert_file=certs.client_cert,
        tls_key_file=certs.client_key,
    )
    bus = await Bus.connect([url], name="test", security=security)
    try:
        await ensure_streams(bus.js)
        await ensure_buckets(bus.js)
        flags = ["--nats-user", USER, "--nats-password", PASSWORD, *tls_flags(certs)]
        with Processes(tmp_path / "logs") as processes:
            processes.start("dispatcher", "dispatcher", "--nats-url", url, *flags)
            processes.worker("w1", url, data_dir=tmp_path, extra=flags)
            submitted = run_cli(
                "submit", "--nats-url", url, "--kind", "noop", "--count", "3", *flags
            )
            assert submitted.returncode == 0, submitted.stderr
            assert PASSWORD not in submitted.stderr + submitted.stdout
            end = await wait_for_job_end(bus, submitted.stdout.strip(), timeout_s=30)
        assert isinstance(end, JobCompleted)
    finally:
        await bus.close()


def test_an_nkey_seed_submits(
    secure_server: NatsServer, certs: CertFiles, nkey_user: tuple[str, Path]
) -> None:
    result = run_cli(
        "submit",
        "--nats-url",
        tls_url(secure_server),
        "--kind",
        "noop",
        "--nats-nkey-seed",
        str(nkey_user[1]),
        *tls_flags(certs),
    )
    assert result.returncode == 0, result.stderr


def test_credentials_in_the_url_work_and_stay_hidden(
    secure_server: NatsServer, certs: CertFiles
) -> None:
    url = f"tls://{USER}:{PASSWORD}@127.0.0.1:{secure_server.port}"
    result = run_cli("submit", "--nats-url", url, "--kind", "noop", *tls_flags(certs))
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stderr + result.stdout


def test_a_token_submits(token_server: NatsServer) -> None:
    result = run_cli(
        "submit", "--nats-url", token_server.url, "--kind", "noop", "--nats-token", TOKEN
    )
    assert result.returncode == 0, result.stderr


def test_a_creds_file_submits(operator_server: NatsServer, operator: Decentralized) -> None:
    result = run_cli(
        "submit",
        "--nats-url",
        operator_server.url,
        "--kind",
        "noop",
        "--nats-creds",
        str(operator.creds_file),
    )
    assert result.returncode == 0, result.stderr


def assert_refused_fast(
    args: list[str], *fragments: str, secrets: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = run_cli(*args)
    elapsed_s = time.monotonic() - started
    assert_clean_error(result, *fragments, exit_code=3)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert elapsed_s < REFUSAL_MAX_S, f"took {elapsed_s:.1f}s: a reconnect loop?"
    for secret in secrets:
        assert secret not in result.stderr + result.stdout
    return result


COMMANDS = {
    "submit": ["submit", "--kind", "noop"],
    "worker": ["worker"],
    "worker --processes": ["worker", "--processes", "2"],
    "dispatcher": ["dispatcher"],
    "projector": ["projector", "--only", "ndjson"],
    "api": ["api", "--database-url", "postgresql://127.0.0.1:1/none", "--port", "0"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_wrong_password_ends_every_process_at_once(
    secure_server: NatsServer, certs: CertFiles, command: str, tmp_path: Path
) -> None:
    url = f"tls://{USER}:wrong-pass@127.0.0.1:{secure_server.port}"
    args = [*COMMANDS[command], "--nats-url", url, "--data-dir", str(tmp_path), *tls_flags(certs)]
    assert_refused_fast(
        args,
        f"authentication failed for NATS at tls://{USER}@127.0.0.1:{secure_server.port}",
        secrets=("wrong-pass",),
    )


def test_a_wrong_password_flag_is_refused(secure_server: NatsServer, certs: CertFiles) -> None:
    assert_refused_fast(
        [
            "submit",
            "--nats-url",
            tls_url(secure_server),
            "--kind",
            "noop",
            "--nats-user",
            USER,
            "--nats-password",
            "wrong-pass",
            *tls_flags(certs),
        ],
        f"authentication failed for NATS at {tls_url(secure_server)}",
        secrets=("wrong-pass",),
    )


def test_a_wrong_token_is_refused(token_server: NatsServer) -> None:
    assert_refused_fast(
        ["submit", "--nats-url", token_server.url, "--kind", "noop", "--nats-token", "nope"],
        f"authentication failed for NATS at {token_server.url}",
    )


def test_a_creds_file_of_another_operator_is_refused(
    operator_server: NatsServer, tmp_path: Path
) -> None:
    (tmp_path / "stranger").mkdir()
    stranger = make_operator_and_user(tmp_path / "stranger")
    assert_refused_fast(
        ["worker", "--nats-url", operator_server.url, "--nats-creds", str(stranger.creds_file)],
        f"authentication failed for NATS at {operator_server.url}",
    )


def test_an_untrusted_server_certificate_is_refused(
    secure_server: NatsServer, certs: CertFiles, tmp_path: Path
) -> None:
    stranger = make_certificates(tmp_path / "stranger", ca_name="another CA")
    assert_refused_fast(
        [
            "worker",
            "--nats-url",
            f"tls://{USER}:{PASSWORD}@127.0.0.1:{secure_server.port}",
            "--nats-tls-ca",
            str(stranger.ca),
            "--nats-tls-cert",
            str(certs.client_cert),
            "--nats-tls-key",
            str(certs.client_key),
        ],
        f"TLS failed for NATS at tls://{USER}@127.0.0.1:{secure_server.port}",
        "not trusted",
        secrets=(PASSWORD,),
    )


def test_a_missing_client_certificate_is_refused(
    secure_server: NatsServer, certs: CertFiles
) -> None:
    """The server's alert usually reaches the client, but not always. The client sends
    CONNECT as soon as its side of the handshake is done. If the server closes with that
    still unread, TCP sends a reset, and a reset can drop the alert before the client reads
    it. Then the server looks like one that went away. On a loaded machine that happened in
    one CI run (2026-12-03), so either message is accepted; both must be one clean line,
    fast."""
    result = assert_refused_fast(
        [
            "dispatcher",
            "--nats-url",
            f"tls://{USER}:{PASSWORD}@127.0.0.1:{secure_server.port}",
            "--nats-tls-ca",
            str(certs.ca),
        ],
        f"NATS at tls://{USER}@127.0.0.1:{secure_server.port}",
        secrets=(PASSWORD,),
    )
    message = result.stderr.strip()
    assert (
        "TLS failed for NATS" in message and "refused the TLS handshake" in message
    ) or "cannot reach NATS" in message, message


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--nats-user", "u"], "a NATS user needs a password"),
        (["--nats-token", "t", "--nats-user", "u", "--nats-password", "p"], "one kind of NATS"),
        (["--nats-tls-cert", "README.md"], "needs its key"),
        (["--nats-creds", "missing.creds"], "missing.creds"),
    ],
)
def test_options_that_cannot_work_are_a_usage_error(flags: list[str], fragment: str) -> None:
    result = run_cli("submit", "--nats-url", "nats://127.0.0.1:1", "--kind", "noop", *flags)
    assert_clean_error(result, fragment, exit_code=2)
