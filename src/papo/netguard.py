"""Outbound connections to URLs a tenant chose (assistant providers, webhooks) never reach into the
server's own network: loopback, private, link-local, CGNAT, metadata services and the like.

The check sits where the socket is opened: the host is resolved once, every answer is checked, and
the connection goes to a checked address, so a second DNS answer cannot differ (no rebinding) while
TLS (SNI, certificate) and the Host header keep the name. Each redirect hop opens its own connection
and so passes the same check. Checking the URL when it is saved is only there to tell the admin at
once; the connection check is the one that protects.

The operator (trusted) lets chosen hosts or ranges through with PAPO_OUTBOUND_ALLOWED_TARGETS."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpcore
import httpcore2
import httpx
import httpx2

if TYPE_CHECKING:
    from papo.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host name, port) -> the addresses it resolves to, as text. Injectable so tests can make a name
# resolve to 127.0.0.1 without touching /etc/hosts.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

NOT_ALLOWED = "address not allowed"
RESOLVE_TIMEOUT_SECONDS = 10.0


def _networks(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


# Written out rather than left to `is_global` alone: its answers differ between Python versions
# (3.11 calls ::7f00:1, 64:ff9b:1::1 and 2002::/16 global), and it knows nothing of metadata services.
_V4_REFUSED = _networks(
    "0.0.0.0/8",  # "this network", 0.0.0.0 reaches the local host
    "10.0.0.0/8",
    "100.64.0.0/10",  # CGNAT (Alibaba's metadata service is 100.100.100.200)
    "127.0.0.0/8",
    "169.254.0.0/16",  # link-local, most clouds' metadata services
    "172.16.0.0/12",
    "192.0.0.0/24",  # IETF protocol assignments (Oracle's metadata service is 192.0.0.192)
    "192.0.2.0/24",
    "192.88.99.0/24",  # 6to4 relays
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and 255.255.255.255
)
_V6_REFUSED = _networks(
    "::/96",  # unspecified, loopback and the deprecated IPv4-compatible form ::a.b.c.d
    "64:ff9b:1::/48",  # local-use NAT64: translated to whatever the local network chose
    "100::/64",  # discard
    "2001::/32",  # Teredo: tunnels to an address hidden in the bits
    "2001:db8::/32",
    "2002::/16",  # 6to4: tunnels to the embedded IPv4 address through any relay
    "fc00::/7",  # unique local (AWS's metadata service is fd00:ec2::254)
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
)
_V6_UNICAST = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Cloud metadata services: refused even where private targets are allowed, unless listed by name.
METADATA = _networks(
    "169.254.169.254/32",
    "169.254.170.2/32",
    "169.254.170.23/32",
    "100.100.100.200/32",
    "168.63.129.16/32",  # Azure's wire server: a public address, reachable only from inside Azure
    "192.0.0.192/32",
    "fd00:ec2::254/128",
    "fd00:ec2::23/128",
)


class TargetRefused(Exception):
    """A tenant-set URL that may not be used, or whose host is (or resolves to) an address tenants
    may not reach. The text says so without naming what was found there."""

    def __init__(self, detail: str = NOT_ALLOWED) -> None:
        super().__init__(detail)
        self.detail = detail


_DECIMAL = re.compile(r"[0-9]+")
_OCTAL = re.compile(r"0[0-7]+")
_HEX = re.compile(r"0x[0-9a-f]*")


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """The IPv4 forms C resolvers accept besides dotted quads: 2130706433, 0177.0.0.1, 0x7f.1,
    127.1 (the last part fills the remaining bytes). None if `text` is not one of them."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        if _HEX.fullmatch(part):
            numbers.append(int(part[2:] or "0", 16))
        elif _OCTAL.fullmatch(part):
            numbers.append(int(part, 8))
        elif _DECIMAL.fullmatch(part) and (part == "0" or not part.startswith("0")):
            numbers.append(int(part))
        else:
            return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def host_name(host: str) -> str:
    """The comparable form of a URL's host: lower case, no brackets, zone id or trailing dots."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if ":" in name:
        name = name.split("%", 1)[0]
    return name.rstrip(".")


def ip_literal(host: str) -> IPAddress | None:
    """The address a host written as an IP literal (in any form a resolver accepts) stands for."""
    name = host_name(host)
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return _inet_aton(name)


def unwrap(address: IPAddress) -> IPAddress:
    """::ffff:a.b.c.d is a.b.c.d on the wire."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_public(address: IPAddress) -> bool:
    """Whether a tenant may reach `address` by default: globally routed unicast, nothing special."""
    address = unwrap(address)
    if any(address.version == network.version and address in network for network in METADATA):
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return address.is_global and not any(address in network for network in _V4_REFUSED)
    if address in _NAT64:  # the NAT64 gateway reaches the embedded IPv4 address: judge that one
        return is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return address in _V6_UNICAST and address.is_global and not any(address in network for network in _V6_REFUSED)


@dataclass(frozen=True)
class Policy:
    """What the operator lets tenants reach beyond public addresses."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: tuple[str, ...] = ()  # exact names, or "*.example.com" for any name below it
    allow_private: bool = False  # anything but metadata services (PAPO_WEBHOOK_ALLOW_PRIVATE_TARGETS)

    @staticmethod
    @lru_cache(maxsize=32)
    def parse(entries: tuple[str, ...], *, allow_private: bool = False) -> Policy:
        """Comma-separated setting entries: CIDR ranges or single addresses, and host names."""
        networks: list[IPNetwork] = []
        hosts: list[str] = []
        for entry in entries:
            text = entry.strip()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(host_name(text) if "/" not in text else text, strict=False))
            except ValueError:
                if "/" in text or not re.fullmatch(r"(\*\.)?[a-z0-9_.-]+", host_name(text)):
                    raise ValueError(f"not a host name or address range: {text!r}") from None
                hosts.append(host_name(text))
        return Policy(tuple(networks), tuple(hosts), allow_private)

    def allows_host(self, host: str) -> bool:
        name = host_name(host)
        return any(name == h or (h.startswith("*.") and name.endswith(h[1:])) for h in self.hosts)

    def allows(self, address: IPAddress) -> bool:
        address = unwrap(address)
        if any(address.version == n.version and address in n for n in self.networks):
            return True
        if any(address.version == n.version and address in n for n in METADATA):
            return False
        return self.allow_private or is_public(address)


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


# What a guard built without its own resolver uses; looked up at each resolution, so a test can
# swap it for the running app (pytest's monkeypatch) as well as pass one to a guard.
default_resolver: Resolver = system_resolver


class NetGuard:
    """Resolves and checks a tenant-set host against the policy, and makes HTTP clients that only
    connect to addresses it checked. `policy` is read at every check (settings may change in tests)."""

    def __init__(self, policy: Callable[[], Policy] | Policy, *, resolver: Resolver | None = None) -> None:
        self._policy = policy
        self.resolver = resolver

    @classmethod
    def from_settings(cls, settings: Settings, *, webhooks: bool = False, resolver: Resolver | None = None) -> NetGuard:
        """The operator's policy: PAPO_OUTBOUND_ALLOWED_TARGETS, and for webhooks also the older
        PAPO_WEBHOOK_ALLOW_PRIVATE_TARGETS."""

        def policy() -> Policy:
            return Policy.parse(
                tuple(settings.outbound_allowed_targets),
                allow_private=webhooks and settings.webhook_allow_private_targets,
            )

        return cls(policy, resolver=resolver)

    @property
    def policy(self) -> Policy:
        return self._policy if isinstance(self._policy, Policy) else self._policy()

    async def addresses(self, host: str, port: int) -> list[IPAddress]:
        """Every address `host` stands for, all of them allowed; else TargetRefused. An empty list
        means the name does not resolve."""
        policy = self.policy
        literal = ip_literal(host)
        if literal is not None:
            if not (policy.allows_host(host) or policy.allows(literal)):
                raise TargetRefused()
            return [unwrap(literal)]
        name = host_name(host)
        resolve = self.resolver if self.resolver is not None else default_resolver
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
                answers = await resolve(name, port)
        except (OSError, TimeoutError, ValueError):  # UnicodeError (a bad IDNA label) is a ValueError
            return []
        found: list[IPAddress] = []
        for answer in answers:
            address = ip_literal(answer)
            if address is None:
                raise TargetRefused()
            address = unwrap(address)
            if address not in found:
                found.append(address)
        if not policy.allows_host(name) and not all(policy.allows(address) for address in found):
            raise TargetRefused()  # one bad answer is enough: the next lookup might pick it
        return found

    async def check_url(self, url: str) -> None:
        """For saving a URL: http(s) with a host, no credentials, resolving to allowed addresses only.
        The host is taken as both urllib and httpx read it, so a URL they split differently is judged
        by both readings (the connection check protects either way; this is for a clear answer now)."""
        shape = "the URL must be http:// or https:// with a host"
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise TargetRefused(shape) from exc
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise TargetRefused(shape)
        if "@" in parts.netloc:
            raise TargetRefused("credentials in the URL are not accepted; put a token in the path or query")
        hosts, valid = {parts.hostname}, False
        try:
            parsed = httpx.URL(url)
            hosts.add(parsed.host)
            valid = not parsed.userinfo
        except (httpx.InvalidURL, TypeError, ValueError):  # ValueError: a bad IDNA label
            pass
        for host in hosts - {""}:
            if not await self.addresses(host, port):
                raise TargetRefused(f"{NOT_ALLOWED}: the host does not resolve to a public address")
        if not valid:
            raise TargetRefused(shape)

    def transport(self, **options: Any) -> GuardedTransport:
        return GuardedTransport(self, **options)

    def client(self, **options: Any) -> httpx.AsyncClient:
        """An HTTP client for tenant-set URLs. Never through HTTP(S)_PROXY: the guard must see, and
        connect to, the real target."""
        return httpx.AsyncClient(transport=self.transport(), trust_env=False, **options)

    def client2(self, *, max_response_bytes: int, **options: Any) -> httpx2.AsyncClient:
        """The same for libraries built on httpx2 (the MCP SDK), with every response body capped."""
        transport = CappedTransport2(GuardedTransport2(self), max_response_bytes)
        return httpx2.AsyncClient(transport=transport, trust_env=False, **options)


async def _connect_checked(
    guard: NetGuard, host: str, port: int, connect: Callable[[str], Awaitable[Any]], errors: Any
) -> Any:
    """A connection to the first checked address of `host` that answers; `connect` opens one to an
    address, `errors` is the httpcore flavour whose connect failures move on to the next."""
    addresses = await guard.addresses(host, port)
    if not addresses:
        raise errors.ConnectError("name resolution failed")
    failure: Exception | None = None
    for address in addresses:
        try:
            return await connect(str(address))
        except (errors.ConnectError, errors.ConnectTimeout) as exc:
            failure = exc
    assert failure is not None
    raise failure


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network layer with the check in front: connects to the checked addresses only."""

    def __init__(self, guard: NetGuard) -> None:
        self.guard = guard
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        async def connect(address: str) -> httpcore.AsyncNetworkStream:
            return await self.inner.connect_tcp(
                address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
            )

        stream: httpcore.AsyncNetworkStream = await _connect_checked(self.guard, host, port, connect, httpcore)
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise TargetRefused()

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedBackend2(httpcore2.AsyncNetworkBackend):
    """The same check for httpcore2 (under httpx2)."""

    def __init__(self, guard: NetGuard) -> None:
        self.guard = guard
        self.inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore2's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        async def connect(address: str) -> httpcore2.AsyncNetworkStream:
            return await self.inner.connect_tcp(
                address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
            )

        stream: httpcore2.AsyncNetworkStream = await _connect_checked(self.guard, host, port, connect, httpcore2)
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore2's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise TargetRefused()

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a GuardedBackend (httpx 0.28 has no parameter for the backend yet, so
    the connection pool is built again with it)."""

    def __init__(
        self,
        guard: NetGuard,
        *,
        verify: bool = True,
        limits: httpx.Limits | None = None,
        retries: int = 0,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        super().__init__(verify=verify, limits=limits, retries=retries)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=retries,
            network_backend=GuardedBackend(guard),
        )


class GuardedTransport2(httpx2.AsyncHTTPTransport):
    """httpx2's transport over a GuardedBackend2."""

    def __init__(self, guard: NetGuard) -> None:
        limits = httpx2.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(limits=limits)
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend2(guard),
        )


class ResponseTooLarge(httpx2.TransportError):
    """A tenant's server answered more than we read."""


class CappedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        received = 0
        async for chunk in self.inner:
            received += len(chunk)
            if received > self.limit:
                raise ResponseTooLarge(f"the answer was larger than {self.limit // 1024} KB")
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class CappedTransport2(httpx2.AsyncBaseTransport):
    """Stops reading a response body past `limit` bytes (a library reading whole answers into memory
    must not be fed 10 MB by a tenant's server)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        response.stream = CappedStream(response.stream, self.limit)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
