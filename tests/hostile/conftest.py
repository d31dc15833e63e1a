"""A real server process for the hostile-input suite, and a member, an admin, an API key, an
identity-provider token and a browser session to call it with."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from papo.settings import Settings
from tests.auth.test_tokens_and_keys import clerk_claims
from tests.cli.test_cli import papo
from tests.support import EXTERNAL_ISSUER, TEST_SERVER_ENV, FakeIdentityProvider, free_port


@dataclass
class Credentials:
    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)


@dataclass
class HostileServer:
    url: str
    process: subprocess.Popen[bytes]
    credentials: dict[str, Credentials]
    tenant_id: str


def server_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PAPO_DATABASE_URL": settings.database_url or "",
        "PAPO_APP_DATABASE_URL": settings.app_database_url or "",
        "PAPO_DATA_DIR": str(settings.data_dir),
        "PAPO_PUBLIC_URL": settings.public_url or "",
        "PAPO_LOG_LEVEL": "WARNING",
        **TEST_SERVER_ENV,
        **extra,
    }


def spawn(settings: Settings, port: int, **extra: str) -> subprocess.Popen[bytes]:
    """`papo serve` in its own process, answering /healthz (fails loudly if it does not start)."""
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "papo"), "serve", "--port", str(port)],
        env=server_env(settings, **extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "server exited during start-up"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"server on port {port} did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")  # gone before the next module's tests: it works the same queues
def hostile_server(settings: Settings, identity_provider: FakeIdentityProvider) -> Iterator[HostileServer]:
    port = free_port()
    process = spawn(
        settings,
        port,
        PAPO_AUTH_JWKS_URL=identity_provider.jwks_url,
        PAPO_AUTH_ISSUER=EXTERNAL_ISSUER,
        PAPO_AUTH_AUTHORIZED_PARTIES="https://app.example.com",
        PAPO_RATE_LIMITS_ENABLED="false",  # the fuzzer should reach past the limits into the handlers
    )
    url = f"http://127.0.0.1:{port}"
    try:
        tenant = papo(settings, "tenant", "create", "Hostile").stdout.strip()
        credentials: dict[str, Credentials] = {"anonymous": Credentials()}
        for role in ("member", "admin"):
            email = f"{role}-{os.urandom(3).hex()}@hostile.example"
            user = papo(
                settings,
                "user",
                "create",
                "--tenant",
                tenant,
                "--email",
                email,
                "--password",
                "correct horse 1",
                "--role",
                role,
            ).stdout.strip()
            token = papo(settings, "token", "--tenant", tenant, "--user", user).stdout.strip()
            credentials[role] = Credentials(headers={"Authorization": f"Bearer {token}"})
            if role == "member":
                credentials["cookie"] = browser_session(url, email, tenant)
        key = papo(settings, "apikey", "create", "--tenant", tenant, "--name", "fuzz").stdout.strip()
        credentials["api_key"] = Credentials(headers={"Authorization": f"Bearer {key}"})
        oidc = identity_provider.token(clerk_claims(exp=int(time.time()) + 3600))
        credentials["oidc"] = Credentials(headers={"Authorization": f"Bearer {oidc}"})
        yield HostileServer(url, process, credentials, tenant)
    finally:
        stop(process)


def browser_session(url: str, email: str, tenant: str) -> Credentials:
    """Sign in through the login form like a browser; the CSRF cookie's token goes in the header."""
    with httpx.Client(base_url=url) as browser:
        form = browser.get(f"/login?tenant={tenant}")
        csrf = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        signed = browser.post(
            "/login",
            data={"email": email, "password": "correct horse 1", "csrf_token": csrf, "tenant": tenant, "next": "/"},
        )
        assert signed.status_code == 303, signed.text
        home = browser.get("/")  # the signed-in page's token, as the page script sends it
        token = home.text.split('<meta name="csrf-token" content="', 1)[1].split('"', 1)[0]
        cookies: dict[str, Any] = dict(browser.cookies)
    return Credentials(headers={"X-CSRF-Token": token}, cookies=cookies)
