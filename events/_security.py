"""How a process proves itself to NATS and checks the server: one frozen set of options
(credentials and TLS files), turned into nats-py's connect arguments, and the rule that tells
a refusal no retry can fix (bad credentials, a certificate not trusted) from a server down."""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the CLI's start-up needs no ssl
    import ssl

from jobstream.events._errors import JobstreamError

AUTHORIZATION_VIOLATION = "authorization violation"
# Server messages (lower case) that end a first connect: the same answer comes on every retry.
_REFUSALS = (AUTHORIZATION_VIOLATION, "user authentication expired")


class NatsSecurityError(JobstreamError, ValueError):
    """The options cannot work together, or a file they name cannot be read or used."""


@dataclass(frozen=True, kw_only=True)
class NatsSecurity:
    """At most one kind of credential (user and password, token, NKey seed file or `.creds`
    file), and TLS: a CA file to trust, a client certificate and key to present. Credentials
    in the URL (`nats://user:pass@host`) work without any of these."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed_file: Path | None = None
    creds_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    def __post_init__(self) -> None:
        kinds = [
            name
            for name, given in (
                ("user/password", self.user is not None or self.password is not None),
                ("token", self.token is not None),
                ("NKey seed", self.nkey_seed_file is not None),
                ("creds file", self.creds_file is not None),
            )
            if given
        ]
        if len(kinds) > 1:
            raise NatsSecurityError(f"give one kind of NATS credential, not {' and '.join(kinds)}")
        if (self.user is None) != (self.password is None):
            raise NatsSecurityError("a NATS user needs a password, and a password a user")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise NatsSecurityError("a TLS client certificate needs its key, and a key its cert")
        for path in self._files():
            if not path.is_file():
                raise NatsSecurityError(f"cannot read {path}: no such file")
        self.ssl_context()  # a certificate or key that cannot be loaded: say so now

    def _files(self) -> list[Path]:
        files = (
            self.nkey_seed_file,
            self.creds_file,
            self.tls_ca_file,
            self.tls_cert_file,
            self.tls_key_file,
        )
        return [path for path in files if path is not None]

    @property
    def uses_tls(self) -> bool:
        return self.tls_ca_file is not None or self.tls_cert_file is not None

    def ssl_context(self) -> "ssl.SSLContext | None":
        """A verifying client context (the system's CAs unless a CA file is given); None
        when no TLS option is set (a `tls://` URL then uses nats-py's default context)."""
        if not self.uses_tls:
            return None
        import ssl

        try:
            context = ssl.create_default_context(
                cafile=str(self.tls_ca_file) if self.tls_ca_file else None
            )
        except (OSError, ValueError) as exc:
            raise NatsSecurityError(
                f"cannot load the TLS CA file {self.tls_ca_file}: {exc}"
            ) from exc
        if self.tls_cert_file is not None and self.tls_key_file is not None:
            try:
                context.load_cert_chain(str(self.tls_cert_file), str(self.tls_key_file))
            except (OSError, ValueError) as exc:
                raise NatsSecurityError(
                    f"cannot load the TLS client certificate {self.tls_cert_file} with key"
                    f" {self.tls_key_file}: {exc}"
                ) from exc
        return context

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect`; only the ones set."""
        options: dict[str, Any] = {}
        if self.user is not None:
            options["user"] = self.user
            options["password"] = self.password
        if self.token is not None:
            options["token"] = self.token
        if self.nkey_seed_file is not None:
            options["nkeys_seed"] = str(self.nkey_seed_file)
        if self.creds_file is not None:
            options["user_credentials"] = str(self.creds_file)
        context = self.ssl_context()
        if context is not None:
            options["tls"] = context
        return options


NO_SECURITY = NatsSecurity()


def is_auth_refusal(exc: BaseException) -> bool:
    """The server refused the credentials. On a first connect nats-py 2.16 passes the server's
    `-ERR 'Authorization Violation'` to the error callback as a plain `nats.errors.Error`, not
    as `AuthorizationError`."""
    import nats.errors  # here: the settings above are read without loading the client

    if isinstance(exc, nats.errors.AuthorizationError):
        return True
    return isinstance(exc, nats.errors.Error) and any(
        refusal in str(exc).lower() for refusal in _REFUSALS
    )


def tls_refusal(exc: BaseException) -> str | None:
    """Why a TLS handshake failed for good, or None if `exc` is no such failure: our check of
    the server's certificate failed, or the server rejected ours (or its absence) with an
    alert. A handshake cut short by a server going down (EOF) is not one."""
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        # `reason` is set by the ssl module (TLSV13_ALERT_CERTIFICATE_REQUIRED, ...).
        reason = str(getattr(exc, "reason", None) or exc)
        if "ALERT" in reason.upper():
            return f"the server refused the TLS handshake ({reason})"
    return None
