"""The SSRF guard: which addresses are refused, and that the check runs at connect time."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable, Sequence

import httpcore
import httpx
import pytest

from tests.modules.conftest import WASM, ModuleServer
from wasmxds.errors import BlockedAddressError, SettingsError
from wasmxds.modules.ssrf import (
    AddressGuard,
    AddressResolver,
    GuardedNetworkBackend,
    GuardedTransport,
)


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """An inner backend that only records dial attempts, to prove none was made."""

    def __init__(self) -> None:
        self.dialled: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.dialled.append((host, port))
        raise httpcore.ConnectError("recording backend never connects")


def fixed_resolver(*addresses: str) -> AddressResolver:
    async def resolve(host: str, port: int) -> Sequence[str]:
        return addresses

    return resolve


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("169.254.169.254", "link-local"),
        ("169.254.0.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%1", "link-local"),
        ("224.0.0.251", "link-local multicast"),
        ("ff02::fb", "link-local multicast"),
        ("ff12::1", "link-local multicast"),
        ("100.100.100.200", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("::ffff:169.254.169.254", "link-local"),
    ],
)
def test_link_local_and_metadata_addresses_are_blocked(address: str, why: str) -> None:
    """Link-local (v4/v6, unicast/multicast) and known metadata IPs are refused with a reason."""
    reason = AddressGuard().reason(address)
    assert reason is not None
    assert why in reason


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "fd00::1", "8.8.8.8"],
)
def test_loopback_private_and_public_addresses_are_allowed(address: str) -> None:
    """Loopback and private ranges host legitimate in-cluster servers, as in Istio."""
    assert AddressGuard().reason(address) is None


def test_extra_cidrs_are_blocked() -> None:
    """Operator-supplied CIDRs are refused on top of the built-in list, per IP version."""
    guard = AddressGuard(["10.0.0.0/8", "fd12::/16"])
    assert guard.reason("10.9.9.9") == "in blocked range 10.0.0.0/8"
    assert guard.reason("fd12::5") == "in blocked range fd12::/16"
    assert guard.reason("192.168.0.1") is None


def test_invalid_cidr_is_a_settings_error() -> None:
    """A malformed CIDR is reported as a settings problem naming the value."""
    with pytest.raises(SettingsError, match="not-a-cidr"):
        AddressGuard(["not-a-cidr"])


def test_check_names_host_and_address() -> None:
    """The error names both the host that was asked for and the IP it resolved to."""
    with pytest.raises(BlockedAddressError) as caught:
        AddressGuard().check("metadata.internal", "169.254.169.254")
    assert "metadata.internal (169.254.169.254)" in str(caught.value)
    assert caught.value.retryable is False


async def test_name_resolving_to_link_local_is_refused_before_dialling() -> None:
    """A DNS name pointing at the metadata service is refused without any connection attempt."""
    inner = RecordingBackend()
    backend = GuardedNetworkBackend(
        AddressGuard(), resolver=fixed_resolver("169.254.169.254"), inner=inner
    )
    with pytest.raises(BlockedAddressError, match=r"evil\.example \(169\.254\.169\.254\)"):
        await backend.connect_tcp("evil.example", 80, timeout=1.0)
    assert inner.dialled == []


async def test_any_blocked_address_refuses_the_whole_name() -> None:
    """A name that also resolves to a blocked IP is refused even if another IP is fine."""
    inner = RecordingBackend()
    backend = GuardedNetworkBackend(
        AddressGuard(), resolver=fixed_resolver("127.0.0.1", "fe80::1"), inner=inner
    )
    with pytest.raises(BlockedAddressError, match="fe80::1"):
        await backend.connect_tcp("mixed.example", 80)
    assert inner.dialled == []


async def test_allowed_addresses_are_dialled_in_order() -> None:
    """Every allowed address is tried in resolver order until one connects."""
    inner = RecordingBackend()
    backend = GuardedNetworkBackend(
        AddressGuard(), resolver=fixed_resolver("127.0.0.2", "127.0.0.3", "127.0.0.2"), inner=inner
    )
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("two.example", 8080)
    assert inner.dialled == [("127.0.0.2", 8080), ("127.0.0.3", 8080)]


async def test_resolution_failure_is_a_connect_error() -> None:
    """A name that does not resolve is a (retryable) connect error naming the host."""

    async def failing(host: str, port: int) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    backend = GuardedNetworkBackend(AddressGuard(), resolver=failing)
    with pytest.raises(httpcore.ConnectError, match=r"cannot resolve nowhere\.example"):
        await backend.connect_tcp("nowhere.example", 80)


async def test_transport_serves_loopback(server: ModuleServer) -> None:
    """Through the guarded transport, a loopback server is reachable and the body streams."""
    url = server.serve("/m.wasm")
    transport = GuardedTransport(guard=AddressGuard(), ssl_context=ssl.create_default_context())
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.content == WASM


async def test_transport_checks_the_real_resolver(server: ModuleServer) -> None:
    """With loopback blocked by CIDR, 'localhost' is refused after real name resolution."""
    guard = AddressGuard(["127.0.0.0/8", "::1/128"])
    transport = GuardedTransport(guard=guard, ssl_context=ssl.create_default_context())
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(BlockedAddressError, match="localhost"):
            await client.get(f"http://localhost:{server.port}/m.wasm")
    assert server.hits.total() == 0


async def test_transport_maps_connection_errors_to_httpx() -> None:
    """httpcore failures surface as httpx exceptions, as httpx's own transport does."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = GuardedTransport(guard=AddressGuard(), ssl_context=ssl.create_default_context())
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")
