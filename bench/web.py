"""The web app in Chromium: page weight, and time to the chat list and to the first streamed token.

One papo server (demo assistant) on a throw-away embedded database; two members: one with a few
chats, one with 1,000. For each, over N runs in fresh browser contexts (signed in, cold cache):
navigation to the first rendered chat list, and Enter in the composer to the first streamed token
on screen. Prints p50/p95 side by side and the bytes of HTML, JS and CSS of the chat page.
Run: `make bench-web`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import httpx
from playwright.async_api import Browser, async_playwright

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
import papo.models  # noqa: E402, F401  (every table, so cross-feature foreign keys resolve)
from papo.auth import service as auth_service  # noqa: E402
from papo.auth.models import Role  # noqa: E402
from papo.db.engine import Database  # noqa: E402
from run import HOST, BenchServer, verdict  # noqa: E402

PAPO_PORT = 8741
BASE = f"http://{HOST}:{PAPO_PORT}"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "bench-password-123"


def pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def seed(server: BenchServer, chats: dict[str, int]) -> None:
    await server.migrate()
    db = Database(server.location.app_url, pool_size=2)
    async with db.transaction() as session:
        await auth_service.create_tenant(session, "Bench Web")
        for email in chats:
            await auth_service.add_member(session, email=email, name=None, password=PASSWORD, role=Role.member)
    await db.dispose()


async def api_token(http: httpx.AsyncClient, email: str) -> str:
    response = await http.post("/api/v1/auth/token", json={"email": email, "password": PASSWORD})
    return str(response.json()["access_token"])


async def measure(browser: Browser, email: str, runs: int) -> tuple[list[float], list[float]]:
    to_list: list[float] = []
    to_token: list[float] = []
    for _ in range(runs):
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(f"{BASE}/login")
        await page.fill("input[name=email]", email)
        await page.fill("input[name=password]", PASSWORD)
        await page.click("form[action='/login'] button[type=submit]")
        await page.wait_for_url(f"{BASE}/")
        started = time.perf_counter()
        await page.goto(f"{BASE}/?fresh=1")
        await page.wait_for_selector(".chat-item, #chats-empty:not([hidden])", state="attached")
        to_list.append((time.perf_counter() - started) * 1000)
        await page.click("main form[action='/chats'] button")
        await page.wait_for_selector("#composer-input")
        await page.wait_for_selector("#rt-status[hidden]", state="attached")  # the socket is live
        await page.fill("#composer-input", "Olá, tudo bem?")
        started = time.perf_counter()
        await page.keyboard.press("Enter")
        await page.wait_for_selector(".msg.assistant .body:not(:empty)")
        to_token.append((time.perf_counter() - started) * 1000)
        await page.wait_for_selector('.msg.assistant[data-state="complete"]', timeout=30_000)
        await context.close()
    return to_list, to_token


async def page_weight(http: httpx.AsyncClient) -> dict[str, int]:
    """Bytes of the signed-in chat list page and of the script and stylesheet it loads."""
    page = await http.get("/")
    sizes = {"html": len(page.content), "js": 0, "css": 0}
    for kind, suffix in (("js", ".js"), ("css", ".css")):
        for part in page.text.split('"'):
            if part.startswith("/static/") and suffix + "?" in part:
                sizes[kind] += len((await http.get(part)).content)
    return sizes


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--chats", type=int, default=1000)
    args = parser.parse_args()
    assert shutil.which(CHROMIUM), "Chromium is missing (apt-get install chromium)"
    server = BenchServer("web")
    members = {"few@papo.local": 5, "many@papo.local": args.chats}
    print(f"papo web benchmark — {os.cpu_count()} cores, Chromium, {args.runs} runs per member")
    try:
        await seed(server, members)
        await server.serve(PAPO_PORT, PAPO_DEMO_TOKENS_PER_SECOND="40")
        async with httpx.AsyncClient(base_url=BASE, timeout=30) as http:
            for email, count in members.items():
                headers = {"Authorization": f"Bearer {await api_token(http, email)}"}
                for index in range(count):
                    await http.post(
                        "/api/v1/sessions", json={"title": f"Conversa {index}", "assistant_id": None}, headers=headers
                    )
            login = await http.get("/login")
            csrf = login.text.split('name="csrf-token" content="')[1].split('"')[0]
            await http.post("/login", data={"email": "many@papo.local", "password": PASSWORD, "csrf_token": csrf})
            weight = await page_weight(http)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
            )
            print(f"\n  {'member':>14} | {'chat list p50':>13} {'p95':>7} | {'first token p50':>15} {'p95':>7}  (ms)")
            results = {}
            for email, count in members.items():
                to_list, to_token = await measure(browser, email, args.runs)
                results[count] = (to_list, to_token)
                print(
                    f"  {count:>8} chats | {statistics.median(to_list):13.1f} {pct(to_list, 0.95):7.1f} | "
                    f"{statistics.median(to_token):15.1f} {pct(to_token, 0.95):7.1f}"
                )
            await browser.close()
        total = weight["js"] + weight["css"]
        print(f"\n  chat list page: HTML {weight['html']:,} B, JS {weight['js']:,} B, CSS {weight['css']:,} B")
        many = statistics.median(results[args.chats][0])
        few = statistics.median(results[5][0])
        print(
            verdict(
                total < 100_000 and many < 3 * few + 100,
                f"JS+CSS {total:,} B (< 100 KB); chat list with {args.chats} chats {many:.0f} ms vs {few:.0f} ms "
                "with 5 (paginated: 50 rendered)",
            )
        )
    finally:
        await server.close()


if __name__ == "__main__":
    asyncio.run(main())
