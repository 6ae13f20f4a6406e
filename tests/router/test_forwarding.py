"""Who the client is behind trusted proxies (router/forwarding.py)."""

from __future__ import annotations

import pytest

from router.forwarding import (
    ClientAddress,
    Forwarding,
    ProxyHeaders,
    TrustedProxies,
    parse_host_address,
    parse_origin,
    resolve,
)

PROXY = ClientAddress("127.0.0.1", 40000)
TRUSTED = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "2001:db8:1::/48"])
FORWARDED = TrustedProxies(["127.0.0.1", "10.0.0.0/8"], "forwarded")


def xff(*values: str, peer: ClientAddress = PROXY, proxies: TrustedProxies = TRUSTED) -> Forwarding:
    return resolve(peer, [("X-Forwarded-For", value) for value in values], proxies)


def test_the_right_most_address_that_is_no_trusted_proxy_is_the_client() -> None:
    assert xff("203.0.113.5").client == ClientAddress("203.0.113.5")
    assert xff("198.51.100.7, 203.0.113.5, 10.1.2.3").client == ClientAddress("203.0.113.5")
    assert xff("198.51.100.7", "203.0.113.5", "10.1.2.3").client == ClientAddress("203.0.113.5")
    assert xff("10.9.9.9, 10.1.2.3").client == ClientAddress("10.9.9.9"), "all trusted: the left-most"


def test_what_is_left_of_the_client_is_never_read() -> None:
    assert xff("not an address, 203.0.113.5") == Forwarding(ClientAddress("203.0.113.5"))


def test_headers_from_a_peer_that_is_no_trusted_proxy_are_ignored() -> None:
    peer = ClientAddress("127.0.0.2", 5000)
    assert xff("203.0.113.5", peer=peer) == Forwarding(peer)
    assert xff("203.0.113.5", proxies=TrustedProxies()) == Forwarding(PROXY)


def test_an_ipv4_mapped_peer_is_its_ipv4_address() -> None:
    assert xff("203.0.113.5", peer=ClientAddress("::ffff:127.0.0.1", 1)).client.host == "203.0.113.5"


@pytest.mark.parametrize("value", ["", "203.0.113.5, ", "203.0.113.5, junk", "300.1.1.1", "unknown"])
def test_an_unusable_chain_leaves_the_peer_and_is_reported(value: str) -> None:
    assert xff(value) == Forwarding(PROXY, "", ("x-forwarded-for",))


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("192.0.2.1", ClientAddress("192.0.2.1")),
        ("192.0.2.1:8080", ClientAddress("192.0.2.1", 8080)),
        ("2001:db8::1", ClientAddress("2001:db8::1")),
        ("[2001:db8::1]", ClientAddress("2001:db8::1")),
        ("[2001:DB8::1]:443", ClientAddress("2001:db8::1", 443)),
        ("::ffff:192.0.2.1", ClientAddress("192.0.2.1")),
        ("192.0.2.1:99999", None),
        ("[2001:db8::1]x", None),
        ("example.com", None),
    ],
)
def test_addresses_as_forwarding_headers_write_them(text: str, address: ClientAddress | None) -> None:
    assert parse_host_address(text) == address


def test_x_forwarded_proto_and_host_make_the_origin_the_client_used() -> None:
    headers = [("X-Forwarded-For", "203.0.113.5"), ("X-Forwarded-Proto", "https")]
    assert resolve(PROXY, headers, TRUSTED, "Ops.Example.com").origin == "https://ops.example.com"
    headers.append(("X-Forwarded-Host", "ops.example.com:443"))
    assert resolve(PROXY, headers, TRUSTED, "127.0.0.1:7760").origin == "https://ops.example.com"
    bad = [("X-Forwarded-Proto", "javascript")]
    assert resolve(PROXY, bad, TRUSTED, "x").malformed == ("x-forwarded-proto",)
    assert resolve(PROXY, [("X-Forwarded-Proto", "https")], TrustedProxies(), "x").origin == ""


def test_forwarded_names_the_client_its_proto_and_host() -> None:
    value = (
        'for=198.51.100.7;proto=http, for="[2001:db8:cafe::17]:4711";proto=https;host=Ops.example.com, '
        "for=10.0.0.2"
    )
    assert resolve(PROXY, [("Forwarded", value)], FORWARDED) == Forwarding(
        ClientAddress("2001:db8:cafe::17", 4711), "https://ops.example.com"
    )
    quoted = resolve(PROXY, [("forwarded", 'For="[::1]:1234"')], FORWARDED)
    assert quoted.client == ClientAddress("::1", 1234)


def test_only_the_configured_header_set_is_read() -> None:
    both = [("X-Forwarded-For", "203.0.113.5"), ("Forwarded", "for=198.51.100.7")]
    assert resolve(PROXY, both, TRUSTED).client.host == "203.0.113.5"
    assert resolve(PROXY, both, FORWARDED).client.host == "198.51.100.7"


@pytest.mark.parametrize(
    "value",
    [
        'for="[::1]:1234',
        "for=unknown",
        "for=_hidden",
        "for",
        "for=1.2.3.4;for=5.6.7.8",
        "proto=https",
        "for=1.2.3.4 x",
    ],
)
def test_an_unusable_forwarded_leaves_the_peer_and_is_reported(value: str) -> None:
    assert resolve(PROXY, [("Forwarded", value)], FORWARDED) == Forwarding(PROXY, "", ("forwarded",))


def test_trusted_proxies_are_addresses_or_networks() -> None:
    with pytest.raises(ValueError, match="host bits"):
        TrustedProxies(["127.0.0.1/8"])
    with pytest.raises(ValueError, match="not-an-address"):
        TrustedProxies(["not-an-address"])
    with pytest.raises(ValueError, match="x-forwarded, forwarded"):
        TrustedProxies([], "x-real-ip")
    assert TrustedProxies(["2001:db8:1::/48"]).trusts("2001:db8:1:2::3")
    assert not TrustedProxies(["2001:db8:1::/48"]).trusts("2001:db8:2::3")
    assert TrustedProxies().headers is ProxyHeaders.X_FORWARDED


def test_origins_are_written_as_browsers_write_them() -> None:
    assert parse_origin("HTTPS://Ops.Example.com:443/") == "https://ops.example.com"
    assert parse_origin("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    for bad in ("ops.example.com", "ftp://x", "https://x/path", "https://"):
        with pytest.raises(ValueError, match="not http"):
            parse_origin(bad)
