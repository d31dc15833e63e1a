"""The outbound guard for tenant-set URLs: every way of writing a forbidden address, names that resolve
to one, the operator's allow-list, and connections (redirects included) that only go where the check
said, over real sockets to local servers."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from pydantic import ValidationError

from papo.netguard import NOT_ALLOWED, NetGuard, Policy, TargetRefused, ip_literal
from papo.settings import Settings
from tests.support import StaticResolver, serve_in_thread

STRICT = Policy()

# Every host below stands for an address tenants may not reach by default.
FORBIDDEN_HOSTS = [
    "127.0.0.1",
    "2130706433",  # decimal
    "0177.0.0.1",  # octal
    "0x7f.0.0.1",  # hex
    "0x7f000001",
    "017700000001",
    "127.1",  # short form
    "127.0.0.1.",  # trailing dot
    "0",
    "0.0.0.0",  # noqa: S104  (unspecified: reaches this host)
    "::",
    "[::]",
    "::1",
    "[::1]",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "[::ffff:7f00:1]",
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata service
    "64:ff9b:1::808:808",  # local-use NAT64
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:808:808::1",  # 6to4 at all
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",  # CGNAT
    "169.254.169.254",  # link-local: metadata
    "169.254.170.2",
    "100.100.100.200",  # Alibaba metadata
    "168.63.129.16",  # Azure wire server (a public address)
    "192.0.0.192",  # Oracle metadata
    "fd00:ec2::254",  # AWS metadata over IPv6
    "fc00::1",
    "fe80::1",
    "fe80::1%eth0",  # zone id
    "[fe80::1%25eth0]",
    "224.0.0.1",  # multicast
    "ff02::1",
    "255.255.255.255",  # broadcast
    "240.0.0.1",  # reserved
    "198.18.0.1",
    "192.0.2.1",  # documentation
    "2001:db8::1",
    "4000::1",  # outside global unicast
]
PUBLIC_HOSTS = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808", "[2a00:1450:4001::200e]"]


@pytest.mark.parametrize("host", FORBIDDEN_HOSTS)
async def test_every_form_of_a_forbidden_address_is_refused(host: str) -> None:
    resolver = StaticResolver()
    with pytest.raises(TargetRefused) as refused:
        await NetGuard(STRICT, resolver=resolver).addresses(host, 80)
    assert refused.value.detail == NOT_ALLOWED
    assert resolver.asked == []  # a literal is judged as what it is, never looked up


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("192.168.257", "192.168.1.1"),
        ("0x0a.0.0.1", "10.0.0.1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("8.8.8.8.", "8.8.8.8"),
        ("0x", "0.0.0.0"),  # noqa: S104  (C resolvers read a bare 0x as 0: so do we)
    ],
)
def test_literal_forms_are_normalised(written: str, meant: str) -> None:
    assert str(ip_literal(written)) == meant


@pytest.mark.parametrize("name", ["example.com", "08.0.0.1", "1.2.3.4.5", "256.1.1.1x", "127..1", "0x1g"])
def test_names_are_not_mistaken_for_addresses(name: str) -> None:
    assert ip_literal(name) is None


@pytest.mark.parametrize("host", PUBLIC_HOSTS)
async def test_public_addresses_pass(host: str) -> None:
    assert await NetGuard(STRICT, resolver=StaticResolver()).addresses(host, 443)


async def test_names_are_judged_by_every_address_they_resolve_to() -> None:
    resolver = StaticResolver(
        {
            "loopback.test": ["127.0.0.1"],
            "mapped.test": ["::ffff:10.0.0.1"],
            "mixed.test": ["8.8.8.8", "10.0.0.7"],  # one bad answer is enough
            "metadata.test": ["169.254.169.254"],
            "public.test": ["8.8.8.8", "2606:4700:4700::1111"],
        }
    )
    guard = NetGuard(STRICT, resolver=resolver)
    for name in ("loopback.test", "Loopback.Test.", "mapped.test", "mixed.test", "metadata.test"):
        with pytest.raises(TargetRefused):
            await guard.addresses(name, 80)
    assert [str(a) for a in await guard.addresses("public.test", 443)] == ["8.8.8.8", "2606:4700:4700::1111"]
    assert await guard.addresses("missing.test", 443) == []
    assert resolver.asked[:2] == ["loopback.test", "loopback.test"]  # lower case, no trailing dot


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("http://2130706433/", NOT_ALLOWED),
        ("http://0x7f.1:5432/", NOT_ALLOWED),
        ("http://[::ffff:127.0.0.1]/", NOT_ALLOWED),
        ("http://[64:ff9b::7f00:1]/", NOT_ALLOWED),
        ("http://localhost.test/hook", NOT_ALLOWED),
        ("http://nowhere.test/hook", NOT_ALLOWED),  # unresolvable: the same words as private
        ("http://xn--/hook", NOT_ALLOWED),  # not even a valid IDNA name
        ("ftp://8.8.8.8/x", "http:// or https://"),
        ("https://user:pw@8.8.8.8/x", "credentials"),
        ("http:///x", "http:// or https://"),
    ],
)
async def test_urls_are_checked_before_they_are_saved(url: str, detail: str) -> None:
    guard = NetGuard(STRICT, resolver=StaticResolver({"localhost.test": ["127.0.0.1"]}))
    with pytest.raises(TargetRefused) as refused:
        await guard.check_url(url)
    assert detail in refused.value.detail
    assert "127.0.0.1" not in refused.value.detail  # what a name resolves to is not told


async def test_the_operator_allow_list() -> None:
    resolver = StaticResolver(
        {"ollama.internal": ["10.1.2.3"], "a.corp.test": ["10.9.9.9"], "b.else.test": ["10.9.9.9"]}
    )
    listed = NetGuard(
        Policy.parse(("10.1.0.0/16", "::1", "ollama.internal", "*.corp.test", "169.254.169.254")), resolver=resolver
    )
    assert await listed.addresses("10.1.200.7", 80)
    assert await listed.addresses("::1", 80)
    assert await listed.addresses("::ffff:10.1.0.1", 80)  # the mapped form of a listed address
    assert await listed.addresses("ollama.internal", 80)
    assert await listed.addresses("a.corp.test", 80)
    assert await listed.addresses("169.254.169.254", 80)  # listed by the operator, so meant
    for host in ("10.2.0.1", "127.0.0.1", "b.else.test", "fd00:ec2::254"):
        with pytest.raises(TargetRefused):
            await listed.addresses(host, 80)

    private = NetGuard(Policy(allow_private=True), resolver=resolver)  # PAPO_WEBHOOK_ALLOW_PRIVATE_TARGETS
    assert await private.addresses("127.0.0.1", 80)
    assert await private.addresses("b.else.test", 80)
    for host in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "::ffff:169.254.169.254"):
        with pytest.raises(TargetRefused):
            await private.addresses(host, 80)


def test_the_setting_is_parsed_and_checked_at_start_up() -> None:
    settings = Settings(outbound_allowed_targets="127.0.0.1, 10.0.0.0/8,ollama.internal", _env_file=None)  # type: ignore[call-arg]
    policy = NetGuard.from_settings(settings).policy
    assert [str(n) for n in policy.networks] == ["127.0.0.1/32", "10.0.0.0/8"]
    assert policy.hosts == ("ollama.internal",)
    assert not policy.allow_private
    assert NetGuard.from_settings(
        Settings(webhook_allow_private_targets=True, _env_file=None), webhooks=True
    ).policy.allow_private
    assert not NetGuard.from_settings(Settings(webhook_allow_private_targets=True, _env_file=None)).policy.allow_private
    for bad in ("10.0.0.0/33", "not a host", "http://x/"):
        with pytest.raises(ValidationError):
            Settings(outbound_allowed_targets=bad, _env_file=None)  # type: ignore[call-arg]


# ---- real connections ----------------------------------------------------------------------------


class Seen:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []  # (path, Host header)


def answering_server(seen: Seen, location: str | None = None) -> ThreadingHTTPServer:
    """A local HTTP server that records requests and answers 200 "hello", or 307 to `location`."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.requests.append((self.path, self.headers.get("host")))
            self.send_response(307 if location else 200)
            if location:
                self.send_header("location", location)
            self.send_header("content-length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

    return serve_in_thread(Handler)


@pytest.fixture
def target() -> Iterator[tuple[Seen, int]]:
    seen = Seen()
    server = answering_server(seen)
    yield seen, server.server_address[1]
    server.shutdown()


async def test_connections_go_to_the_checked_address_with_the_name_kept(target: tuple[Seen, int]) -> None:
    seen, port = target
    # Only this resolver knows the name: reaching the server proves the socket went to the address
    # the guard checked, with no second lookup anywhere else.
    resolver = StaticResolver({"provider.test": ["127.0.0.1"]})
    async with NetGuard(Policy.parse(("provider.test",)), resolver=resolver).client() as http:
        response = await http.get(f"http://provider.test:{port}/v1/models")
    assert response.text == "hello"
    assert seen.requests == [("/v1/models", f"provider.test:{port}")]
    assert resolver.asked == ["provider.test"]


async def test_a_refused_target_is_never_connected_to(target: tuple[Seen, int]) -> None:
    seen, port = target
    resolver = StaticResolver({"provider.test": ["127.0.0.1"]})
    async with NetGuard(STRICT, resolver=resolver).client() as http:
        for url in (f"http://provider.test:{port}/", f"http://127.0.0.1:{port}/", f"http://2130706433:{port}/"):
            with pytest.raises(TargetRefused):
                await http.get(url)
    assert seen.requests == []


async def test_dns_rebinding_meets_the_check_at_connection_time(target: tuple[Seen, int]) -> None:
    seen, port = target
    resolver = StaticResolver({"rebind.test": ["8.8.8.8"]})
    guard = NetGuard(STRICT, resolver=resolver)
    await guard.check_url(f"http://rebind.test:{port}/")  # looked public when saved…
    resolver.table["rebind.test"] = ["127.0.0.1"]  # …and points inside by the time it is used
    async with guard.client() as http:
        with pytest.raises(TargetRefused):
            await http.get(f"http://rebind.test:{port}/")
    assert seen.requests == []


@pytest.mark.parametrize("hop", ["http://127.0.0.1:{port}/secret", "http://internal.test:{port}/secret"])
async def test_every_redirect_hop_is_checked_again(target: tuple[Seen, int], hop: str) -> None:
    inside, inside_port = target
    outside = Seen()
    redirector = answering_server(outside, location=hop.format(port=inside_port))
    try:
        resolver = StaticResolver({"public.test": ["127.0.0.1"], "internal.test": ["127.0.0.1"]})
        # The operator allowed the public-looking host only (it happens to live on this machine).
        guard = NetGuard(Policy.parse(("public.test",)), resolver=resolver)
        async with guard.client(follow_redirects=True) as http:
            with pytest.raises(TargetRefused):
                await http.get(f"http://public.test:{redirector.server_address[1]}/start")
        assert [path for path, _ in outside.requests] == ["/start"]
        assert inside.requests == []  # the second hop never connected
        # The same redirect with the inside allowed too is followed: the refusal was the guard's.
        allowed = NetGuard(Policy.parse(("public.test", "internal.test", "127.0.0.1")), resolver=resolver)
        async with allowed.client(follow_redirects=True) as http:
            response = await http.get(f"http://public.test:{redirector.server_address[1]}/start")
        assert response.text == "hello" and [path for path, _ in inside.requests] == ["/secret"]
    finally:
        redirector.shutdown()


async def test_a_name_that_does_not_resolve_is_a_connection_error() -> None:
    async with NetGuard(STRICT, resolver=StaticResolver()).client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("http://nowhere.test/")
