"""Browser fixtures: Debian's Chromium driven by Playwright, against the test app on a real port."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from papo.auth.models import Role
from papo.db.engine import RlsContext, driver
from tests.fake_openai import API_KEY
from tests.support import Member, TenantHandle

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_PRESENT = Path(CHROMIUM).exists()
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM_PRESENT, "Chromium is missing: `make test` installs Debian's chromium package"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched
        await launched.close()


@pytest.fixture
async def browser_like(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client with its own cookie jar, like one browser (no JavaScript)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://papo.test") as http:
        yield http


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(locale="pt-BR", viewport={"width": 1280, "height": 800})
    yield ctx
    await ctx.close()


def watch_errors(page: Page) -> list[str]:
    """Script errors and CSP violations on the page (a test asserts there are none). A 4xx answer
    is logged by Chromium as "Failed to load resource"; that is the server's answer, not an error."""
    errors: list[str] = []

    def on_console(message: Any) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", on_console)
    page.on("dialog", lambda dialog: errors.append(f"dialog opened: {dialog.message}"))
    return errors


async def sign_in(page: Page, base: str, member: Member, *, next_path: str = "/") -> None:
    await page.goto(f"{base}/login?next={next_path}")
    await page.fill("input[name=email]", member.email)
    await page.fill("input[name=password]", member.password)
    await page.click("form[action='/login'] button[type=submit]")
    await page.wait_for_url(f"{base}{next_path}")


async def set_tenant_settings(tenant: TenantHandle, settings: dict[str, Any]) -> None:
    async with tenant.db.transaction(RlsContext(tenant.id, None, Role.owner.value)) as session:
        await driver(session).execute(
            "UPDATE tenants SET settings = settings || $2::jsonb WHERE id = $1", tenant.id, json.dumps(settings)
        )


async def default_assistant(client: httpx.AsyncClient, tenant: TenantHandle, base_url: str, model: str) -> str:
    """Make the fake provider's `model` the tenant's default assistant; its id."""
    admin = await tenant.member(Role.admin)
    response = await client.post(
        "/api/v1/assistants",
        json={"name": "Fake", "model": model, "base_url": base_url, "api_key": API_KEY, "is_default": True},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)
