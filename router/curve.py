"""CurveZMQ on the links to the router: key files, the router's allow-list, the clients' side.

Keys are stored as ZeroMQ certificates, the text format of pyzmq's ``zmq.auth`` and czmq's
``zcert``: ``NAME.key`` holds the public key and may be shared; ``NAME.key_secret`` holds both
keys and stays with its owner (mode 0600). The router is the CURVE server on every socket and
admits, through a ZAP handler, only the public keys found in the allow-list of a role that may use
that socket (:data:`SOCKET_ROLES`). ``docs/security.md`` says what this protects and how to run it.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import re
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final

import zmq
from zmq.auth import load_certificate
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from router.logs import ThrottledLog

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("switchboard.curve")

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
Z85_KEY_LENGTH = 40
"""A 32-byte Curve25519 key written in Z85."""
MAX_LOGGED_KEYS = 1_000
"""Refused keys logged one by one; beyond this many, they share one throttled log line."""


class Role(StrEnum):
    """What a key may do: each role has its own allow-list."""

    PRODUCER = "producer"
    """Publish: PUSH to PULL, PUB to XSUB."""
    EDGE = "edge"
    """Serve clients: the control socket (register clients, subscribe them) and XPUB."""
    OBSERVER = "observer"
    """Read: XPUB, the events socket, and on the control socket ``hello``, heartbeats and
    ``stats_request``, never a client (``switchboard tap``, event and stats readers)."""


SOCKET_ROLES: Final[Mapping[str, frozenset[Role]]] = {
    "pull": frozenset({Role.PRODUCER}),
    "xsub": frozenset({Role.PRODUCER}),
    "control": frozenset({Role.EDGE, Role.OBSERVER}),
    "xpub": frozenset({Role.EDGE, Role.OBSERVER}),
    "events": frozenset({Role.OBSERVER}),
    "demand": frozenset({Role.PRODUCER, Role.OBSERVER}),
}
"""The roles whose keys each of the router's sockets admits, by socket name."""
_ROLE_LINE = re.compile(r'^\s+role\s*=\s*"([a-z]+)"\s*$', re.MULTILINE)

CURVE_REFUSED = "curve_refused"
"""The drop reason of a handshake whose client key is not in the allow-list."""
CURVE_FAILED = "curve_handshake_failed"
"""The drop reason of any other failed handshake: no Curve, or not the router's public key."""
HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
"""The socket monitor events that mean a peer was turned away."""
_WHY: dict[int, str] = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "the peer does not use Curve",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "the peer does not have the router's public key",
}

CLIENT_HINTS = {
    CURVE_REFUSED: "the router refused this client's Curve key: add its public key to the router's "
    "allow-list of this client's role (producer, edge or observer), reload the router (SIGHUP), then "
    "restart this client",
    CURVE_FAILED: "the Curve handshake with the router failed: check the router's public key file, "
    "and that the router has Curve on",
}
"""What a client logs when the router turns it away, by drop reason."""

SERVICE_HINTS = {
    CURVE_REFUSED: "the session service refused the router's Curve key: add the router's public key "
    "to the service's allow-list",
    CURVE_FAILED: "the Curve handshake with the session service failed: check [sessions] "
    "service_public_key_file (the service's public key), and that the service has Curve on",
}
"""What the router logs when its session service turns it away, by drop reason."""

_PUBLIC_BANNER = """#   ****  Generated on {0} by switchboard keys  ****
#   ZeroMQ CURVE Public Certificate
#   Give this file to the router's allow-list (clients) or to its clients (the router).

"""
_SECRET_BANNER = """#   ****  Generated on {0} by switchboard keys  ****
#   ZeroMQ CURVE **Secret** Certificate
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

"""


class CurveKeyError(ValueError):
    """A key file or directory that cannot be used, with the path and the reason."""


# ---------------------------------------------------------------- key files


def write_key_pair(directory: Path, name: str, role: Role | None = None) -> tuple[Path, Path]:
    """Write a new key pair as ``NAME.key`` and ``NAME.key_secret`` (0600); never overwrites.
    With ``role``, both files say it in their metadata, and an allow-list of another role will
    not admit the key."""
    if not name or name != Path(name).name or name.startswith("."):
        raise CurveKeyError(f"{name!r}: a key name is a plain file name, such as 'edge-1'")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_path, secret_path = directory / (name + PUBLIC_SUFFIX), directory / (name + SECRET_SUFFIX)
    for path in (public_path, secret_path):
        if path.exists():
            raise CurveKeyError(f"{path}: already exists; remove it or choose another name")
    public, secret = zmq.curve_keypair()
    now = datetime.datetime.now().isoformat(timespec="seconds")
    _write_certificate(secret_path, _SECRET_BANNER.format(now), public, secret, role, mode=0o600)
    _write_certificate(public_path, _PUBLIC_BANNER.format(now), public, None, role, mode=0o644)
    return public_path, secret_path


def _write_certificate(
    path: Path, banner: str, public: bytes, secret: bytes | None, role: Role | None, mode: int
) -> None:
    lines = [banner, "metadata\n"]
    if role is not None:
        lines.append(f'    role = "{role.value}"\n')
    lines += ["curve\n", f'    public-key = "{public.decode()}"\n']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"\n')
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.writelines(lines)
    os.chmod(path, mode)


def read_public_key(path: Path) -> bytes:
    """The Z85 public key of a certificate file (``NAME.key`` or ``NAME.key_secret``)."""
    public, _ = _read_certificate(path)
    return public


def read_key_pair(path: Path) -> tuple[bytes, bytes]:
    """The Z85 public and secret keys of a ``NAME.key_secret`` file, checked to belong together."""
    public, secret = _read_certificate(path)
    if secret is None:
        raise CurveKeyError(f"{path}: holds no secret key (give the {SECRET_SUFFIX} file)")
    if zmq.curve_public(secret) != public:
        raise CurveKeyError(f"{path}: its public key does not match its secret key")
    return public, secret


def warn_if_shared(secret_key_file: Path) -> None:
    """Log a warning if users other than the owner may read or write the secret key."""
    if os.name == "posix" and secret_key_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: a secret key others can read; chmod 600 it", secret_key_file)


def read_allowed_keys(directory: Path, role: Role | None = None) -> frozenset[bytes]:
    """The public keys of every ``*.key`` file in ``directory``; an empty allow-list is an error.

    With ``role``, a file whose metadata names another role is left out, with a warning: a key
    made for producers does not become an edge's by being copied to the edges' list."""
    if not directory.is_dir():
        raise CurveKeyError(f"{directory}: not a directory of allowed public keys")
    keys: set[bytes] = set()
    for path in sorted(directory.glob("*" + PUBLIC_SUFFIX)):
        written_for = read_key_role(path)
        if role is not None and written_for is not None and written_for != role:
            log.warning("%s: a %s key in the %s allow-list; not admitted", path, written_for, role)
            continue
        keys.add(read_public_key(path))
    if not keys:
        raise CurveKeyError(f"{directory}: holds no public key (*{PUBLIC_SUFFIX} file) for this role")
    return frozenset(keys)


def read_key_role(path: Path) -> Role | None:
    """The role a certificate's metadata names (``switchboard keys --role``), if any."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as error:
        raise CurveKeyError(f"{path}: {error}") from None
    found = _ROLE_LINE.search(text)
    if found is None:
        return None
    try:
        return Role(found.group(1))
    except ValueError:
        raise CurveKeyError(f"{path}: unknown role {found.group(1)!r}") from None


def _read_certificate(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = load_certificate(path)
    except (OSError, ValueError) as error:
        reason = "no such file" if not path.exists() else str(error)
        raise CurveKeyError(f"{path}: {reason}") from None
    for key in (public, secret):
        if key is not None and not _is_z85_key(key):
            raise CurveKeyError(f"{path}: a key is not {Z85_KEY_LENGTH} characters of Z85")
    return public, secret


def _is_z85_key(key: bytes) -> bool:
    if len(key) != Z85_KEY_LENGTH:
        return False
    try:
        z85.decode(key)
    except (ValueError, KeyError, IndexError):
        return False
    return True


# ---------------------------------------------------------------- clients (producers, edges)


@dataclass(frozen=True)
class CurveClient:
    """A producer's or an edge's key pair and the router's public key, all Z85; or the router's
    key pair and its session service's public key (:meth:`CurveServer.client_of`)."""

    public_key: bytes
    secret_key: bytes = field(repr=False)
    router_key: bytes

    @classmethod
    def from_files(cls, secret_key_file: Path, router_key_file: Path) -> CurveClient:
        public, secret = read_key_pair(secret_key_file)
        warn_if_shared(secret_key_file)
        return cls(public, secret, read_public_key(router_key_file))

    def secure(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE client of the server (the router); call it before ``connect``."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.router_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """The two options that turn Curve on for a command that connects to the router."""
    parser.add_argument(
        "--curve-secret-key-file",
        type=Path,
        help=f"this client's key pair ({SECRET_SUFFIX} file from `switchboard keys`); turns Curve on",
    )
    parser.add_argument(
        "--curve-router-key-file", type=Path, help=f"the router's public key ({PUBLIC_SUFFIX} file)"
    )


def client_from_args(args: argparse.Namespace) -> CurveClient | None:
    """The keys named by :func:`add_client_arguments`' options, or ``None`` without them."""
    secret_file: Path | None = args.curve_secret_key_file
    router_file: Path | None = args.curve_router_key_file
    if secret_file is None and router_file is None:
        return None
    if secret_file is None or router_file is None:
        raise CurveKeyError("--curve-secret-key-file and --curve-router-key-file go together")
    return CurveClient.from_files(secret_file, router_file)


# ---------------------------------------------------------------- the router


class CurveServer:
    """The router's key pair for its sockets, and a ZAP handler that admits each role's keys.

    Each role's allow-list is every ``*.key`` file in its directory, read at start and again on
    :meth:`reload`; a role without a directory admits no key. A socket admits the keys of the
    roles :data:`SOCKET_ROLES` gives it. ZAP asks only when a connection is made: a reload admits
    new keys for their next connection and leaves connections already made alone.
    """

    def __init__(self, secret_key_file: Path, allowed_dirs: Mapping[Role, Path]) -> None:
        if not allowed_dirs:
            raise CurveKeyError("Curve on admits no key: name an allow-list for at least one role")
        self.secret_key_file = secret_key_file
        self.public_key, self._secret_key = read_key_pair(secret_key_file)
        self.allowed_dirs = dict(allowed_dirs)
        self._allowed = self._read_allowed()
        self._authenticator: ThreadAuthenticator | None = None
        self._refusals = ThrottledLog(log)
        self._logged_keys: set[bytes] = set()

    def _read_allowed(self) -> dict[Role, frozenset[bytes]]:
        return {role: read_allowed_keys(path, role) for role, path in self.allowed_dirs.items()}

    def _describe(self) -> str:
        return ", ".join(f"{len(keys)} {role.value} key(s)" for role, keys in self._allowed.items())

    def start(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Start the ZAP handler in ``context``; before any socket of it binds."""
        from zmq.auth.thread import ThreadAuthenticator

        warn_if_shared(self.secret_key_file)
        self._authenticator = ThreadAuthenticator(context, log=logging.getLogger("switchboard.zap"))
        self._authenticator.start()
        for domain in SOCKET_ROLES:
            self._authenticator.configure_curve_callback(domain=domain, credentials_provider=self)
        log.info("Curve on: public key %s, %s", self.public_key.decode(), self._describe())

    def secure(self, sock: zmq.Socket[bytes], name: str) -> None:
        """Make ``sock``, the router's socket ``name`` (a key of :data:`SOCKET_ROLES`), a CURVE
        server that admits its roles' keys; call it before ``bind``."""
        if name not in SOCKET_ROLES:
            raise ValueError(f"no roles for a socket named {name!r}")
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._secret_key)
        sock.setsockopt(zmq.ZAP_DOMAIN, name.encode())

    def client_of(self, server_key: bytes) -> CurveClient:
        """This key pair as a Curve client of the server whose public key (Z85) is ``server_key``:
        the router connecting to its session service."""
        return CurveClient(self.public_key, self._secret_key, server_key)

    def reload(self) -> None:
        """Read every allow-list again; on an error, log it and keep the current lists."""
        try:
            self._allowed = self._read_allowed()
        except CurveKeyError as error:
            log.error("allow-lists not reloaded, still %s: %s", self._describe(), error)
            return
        log.info("allow-lists reloaded: %s", self._describe())

    def is_observer(self, key: str) -> bool:
        """Whether ``key`` (Z85), admitted on the control socket, may act only as an observer."""
        return key.encode() not in self._allowed.get(Role.EDGE, frozenset())

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP's question, asked from the authenticator's thread: may ``key`` (Z85) connect to the
        socket named ``domain``?"""
        roles = SOCKET_ROLES.get(domain, frozenset())
        if any(key in self._allowed.get(role, frozenset()) for role in roles):
            return True
        if len(self._logged_keys) < MAX_LOGGED_KEYS:
            self._logged_keys.add(key)
            kind = f"{domain}-{key.decode()}"
        else:
            kind = "more refused keys"
        refused, now = key.decode(), time.monotonic()
        wanted = " or ".join(sorted(role.value for role in roles))
        self._refusals.warning(
            kind, "%s: refused a Curve key not in the %s allow-list: %s", domain, wanted, refused, now=now
        )
        return False

    def stop(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None


def handshake_failure(frames: list[bytes]) -> tuple[str, str]:
    """The drop reason of a socket monitor's handshake event, and what it means."""
    event = parse_monitor_message(frames)
    if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return CURVE_REFUSED, "its key is not in the allow-list"
    return CURVE_FAILED, _WHY.get(event["value"], "no Curve, or not the router's public key")
