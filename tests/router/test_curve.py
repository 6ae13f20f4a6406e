"""Curve key files, the allow-list and the Curve command-line options, without a running router."""

from __future__ import annotations

import logging
import stat
import struct
from pathlib import Path

import pytest
import zmq
from zmq.auth import load_certificate

from edges.websocket import edge as websocket
from router.curve import (
    CURVE_FAILED,
    CURVE_REFUSED,
    CurveClient,
    CurveKeyError,
    CurveServer,
    Role,
    handshake_failure,
    read_allowed_keys,
    read_key_pair,
    read_key_role,
    read_public_key,
    write_key_pair,
)
from switchboard import cli


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return write_key_pair(tmp_path / "keys", "edge-1")


def allowed_dir(tmp_path: Path, *public_files: Path) -> Path:
    directory = tmp_path / "allowed"
    directory.mkdir(parents=True)
    for path in public_files:
        (directory / path.name).write_bytes(path.read_bytes())
    return directory


# ---------------------------------------------------------------- key files


def test_a_key_pair_is_two_zmq_certificates_and_the_secret_is_private(pair: tuple[Path, Path]) -> None:
    public_path, secret_path = pair
    assert (public_path.name, secret_path.name) == ("edge-1.key", "edge-1.key_secret")
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    public, secret = load_certificate(secret_path)
    assert secret is not None
    assert zmq.curve_public(secret) == public
    assert load_certificate(public_path) == (public, None)
    assert read_key_pair(secret_path) == (public, secret)
    assert read_public_key(public_path) == public


def test_a_key_pair_is_never_overwritten(pair: tuple[Path, Path]) -> None:
    before = pair[1].read_bytes()
    with pytest.raises(CurveKeyError, match="already exists"):
        write_key_pair(pair[0].parent, "edge-1")
    assert pair[1].read_bytes() == before


@pytest.mark.parametrize("name", ["", "../up", "a/b", ".hidden"])
def test_a_key_name_is_a_plain_file_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(CurveKeyError, match="plain file name"):
        write_key_pair(tmp_path, name)


def test_unusable_key_files_are_refused_with_their_path(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    public_path, secret_path = pair
    with pytest.raises(CurveKeyError, match=r"missing\.key_secret: no such file"):
        read_key_pair(tmp_path / "missing.key_secret")
    with pytest.raises(CurveKeyError, match="no secret key"):
        read_key_pair(public_path)
    garbled = tmp_path / "garbled.key"
    garbled.write_text('curve\n    public-key = "tooshort"\n', encoding="ascii")
    with pytest.raises(CurveKeyError, match="Z85"):
        read_public_key(garbled)
    empty = tmp_path / "empty.key"
    empty.write_text("# nothing\n", encoding="ascii")
    with pytest.raises(CurveKeyError, match=r"empty\.key"):
        read_public_key(empty)
    other_public, _ = zmq.curve_keypair()
    mismatched = tmp_path / "mismatched.key_secret"
    text = secret_path.read_text(encoding="ascii")
    mismatched.write_text(text.replace(read_public_key(public_path).decode(), other_public.decode()))
    with pytest.raises(CurveKeyError, match="does not match"):
        read_key_pair(mismatched)


def test_the_allow_list_holds_the_public_key_files_only(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    public_path, secret_path = pair
    directory = allowed_dir(tmp_path, public_path, secret_path)
    assert read_allowed_keys(directory) == {read_public_key(public_path)}
    (directory / public_path.name).unlink()
    with pytest.raises(CurveKeyError, match="holds no public key"):
        read_allowed_keys(directory)
    with pytest.raises(CurveKeyError, match="not a directory"):
        read_allowed_keys(tmp_path / "nowhere")


# ---------------------------------------------------------------- the router's side


def test_the_server_admits_the_allow_list_and_logs_each_refused_key(
    tmp_path: Path, pair: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    router_public, router_secret = write_key_pair(tmp_path / "keys", "router")
    server = CurveServer(router_secret, {Role.EDGE: allowed_dir(tmp_path, pair[0])})
    assert server.public_key == read_public_key(router_public)
    stranger, _ = zmq.curve_keypair()
    with caplog.at_level(logging.WARNING, logger="switchboard.curve"):
        assert server.callback("control", read_public_key(pair[0]))
        assert not server.callback("control", stranger)
        assert not server.callback("control", stranger)
    assert [record.getMessage() for record in caplog.records] == [
        f"control: refused a Curve key not in the edge or observer allow-list: {stranger.decode()}"
    ]


def test_each_socket_admits_only_the_keys_of_its_roles(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    _, router_secret = write_key_pair(keys, "router")
    dirs = {}
    for role in Role:
        public, _ = write_key_pair(keys, role.value)
        dirs[role] = allowed_dir(tmp_path / role.value, public)
    server = CurveServer(router_secret, dirs)
    role_keys = {role: read_public_key(keys / f"{role}.key") for role in Role}
    admitted = {
        socket: {role.value for role, key in role_keys.items() if server.callback(socket, key)}
        for socket in ("pull", "xsub", "control", "xpub", "events", "unknown")
    }
    assert admitted == {
        "pull": {"producer"},
        "xsub": {"producer"},
        "control": {"edge", "observer"},
        "xpub": {"edge", "observer"},
        "events": {"observer"},
        "unknown": set(),
    }
    assert server.is_observer(read_public_key(keys / "observer.key").decode())
    assert not server.is_observer(read_public_key(keys / "edge.key").decode())


def test_a_key_made_for_one_role_is_not_admitted_by_another_roles_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    producer, _ = write_key_pair(tmp_path / "keys", "producer-1", Role.PRODUCER)
    edge, _ = write_key_pair(tmp_path / "keys", "edge-1", Role.EDGE)
    assert read_key_role(producer) is Role.PRODUCER
    directory = allowed_dir(tmp_path, producer, edge)
    with caplog.at_level(logging.WARNING, logger="switchboard.curve"):
        assert read_allowed_keys(directory, Role.EDGE) == {read_public_key(edge)}
    assert "a producer key in the edge allow-list; not admitted" in caplog.text
    assert read_allowed_keys(directory) == {read_public_key(edge), read_public_key(producer)}
    with pytest.raises(CurveKeyError, match="no public key"):
        read_allowed_keys(allowed_dir(tmp_path / "only", producer), Role.OBSERVER)


def test_reload_reads_the_allow_list_again_and_keeps_it_on_an_error(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    _, router_secret = write_key_pair(tmp_path / "keys", "router")
    late_public, _ = write_key_pair(tmp_path / "keys", "late")
    directory = allowed_dir(tmp_path, pair[0])
    server = CurveServer(router_secret, {Role.PRODUCER: directory})
    late = read_public_key(late_public)
    assert not server.callback("pull", late)
    (directory / late_public.name).write_bytes(late_public.read_bytes())
    server.reload()
    assert server.callback("pull", late)
    (directory / "broken.key").write_text("no key here\n", encoding="ascii")
    server.reload()
    assert server.callback("pull", late)


def test_monitor_events_are_named_by_drop_reason() -> None:
    def frames(event: int, value: int) -> list[bytes]:
        return [struct.pack("=hi", event, value), b"tcp://127.0.0.1:7750"]

    assert handshake_failure(frames(zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400))[0] == CURVE_REFUSED
    mismatch = frames(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
    assert handshake_failure(mismatch) == (CURVE_FAILED, "the peer does not use Curve")
    assert handshake_failure(frames(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 0))[0] == CURVE_FAILED


# ---------------------------------------------------------------- the command line


def test_switchboard_keys_writes_a_pair_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", "producer-1", "--dir", str(tmp_path / "k")]) == 0
    assert "producer-1.key_secret" in capsys.readouterr().out
    read_key_pair(tmp_path / "k" / "producer-1.key_secret")
    assert cli.main(["keys", "producer-1", "--dir", str(tmp_path / "k")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_switchboard_keys_role_writes_the_role_and_says_where_the_key_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["keys", "cam-1", "--role", "producer", "--dir", str(tmp_path)]) == 0
    assert "the router's producer_keys_dir" in capsys.readouterr().out
    assert read_key_role(tmp_path / "cam-1.key") is Role.PRODUCER
    assert read_key_role(tmp_path / "cam-1.key_secret") is Role.PRODUCER
    assert load_certificate(tmp_path / "cam-1.key")[0] == read_key_pair(tmp_path / "cam-1.key_secret")[0]


def test_the_client_options_load_both_files_or_none(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    router_public, _ = write_key_pair(tmp_path / "keys", "router")
    config = websocket.config_from_args(websocket._parser().parse_args([]))
    assert config.curve is None
    args = ["--curve-secret-key-file", str(pair[1]), "--curve-router-key-file", str(router_public)]
    config = websocket.config_from_args(websocket._parser().parse_args(args))
    assert config.curve == CurveClient.from_files(pair[1], router_public)
    assert "secret_key" not in repr(config.curve)
    with pytest.raises(CurveKeyError, match="go together"):
        websocket.config_from_args(websocket._parser().parse_args(args[:2]))


CLIENT_KEYS = ["--curve-secret-key-file", "{missing}", "--curve-router-key-file", "{missing}"]


@pytest.mark.parametrize(
    "command",
    [
        ["publish", "/t", "x", *CLIENT_KEYS],
        ["tap", "/t", "--curve-router-key-file", "{missing}"],
        ["router", "--curve-secret-key-file", "{missing}", "--edge-keys-dir", "{dir}"],
        ["edge", "websocket", *CLIENT_KEYS],
    ],
)
def test_commands_refuse_missing_key_files_before_starting(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    names = {"missing": str(tmp_path / "missing.key_secret"), "dir": str(tmp_path)}
    assert cli.main([part.format(**names) for part in command]) == 2
    error = capsys.readouterr().err
    assert "missing.key_secret: no such file" in error or "go together" in error
