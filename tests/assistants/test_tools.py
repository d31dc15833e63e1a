"""Tenant-defined HTTP tools: the model calls them through function calling, papo signs each call,
records it in the chat as a `tool` message, and answers with what came back; a tool that fails,
hangs, answers 10 MB or sits behind a private address gives the model an error, never a lost reply;
a model that keeps calling is stopped at the step limit."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from typing import Any, ClassVar

import httpx
import pytest
from svix.webhooks import Webhook

from papo.auth.models import Role
from papo.settings import Settings
from tests.fake_openai import API_KEY, FakeOpenAI
from tests.knowledge.test_grounded_replies import ask
from tests.support import Member, serve_in_thread

TOOL_SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}


class CompanyApi(http.server.BaseHTTPRequestHandler):
    """The company's endpoint: verifies papo's signature, then answers by path."""

    received: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        with self.lock:
            self.received.append((self.path, dict(self.headers), body))
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/huge":
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # papo hangs up at 64 KB
                self.wfile.write(b"[" + b"0," * (5 * 1024 * 1024) + b"0]")
            return
        if self.path == "/boom":
            self.send_response(500)
            self.end_headers()
            return
        if self.path == "/to-metadata":
            self.send_response(307)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        answer = json.dumps({"order": "A-1001", "status": "a caminho", "eta": "amanhã"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def company() -> Any:
    server = serve_in_thread(CompanyApi)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def assistant_with_tool(
    client: httpx.AsyncClient, admin: Member, base_url: str, model: str, tool_url: str, tool_timeout: int = 10
) -> tuple[str, str]:
    made = await client.post(
        "/api/v1/assistants",
        json={"name": "Pedidos", "model": model, "base_url": base_url, "api_key": API_KEY},
        headers=admin.headers,
    )
    assert made.status_code == 201, made.text
    assistant_id = made.json()["id"]
    tool = await client.post(
        f"/api/v1/assistants/{assistant_id}/tools",
        json={
            "name": "order_status",
            "description": "Status de um pedido",
            "parameters": TOOL_SCHEMA,
            "url": tool_url,
            "timeout_seconds": tool_timeout,
        },
        headers=admin.headers,
    )
    assert tool.status_code == 201, tool.text
    assert tool.json()["secret"].startswith("whsec_")
    return assistant_id, tool.json()["secret"]


async def tool_messages(client: httpx.AsyncClient, who: Member, reply: dict[str, Any]) -> list[dict[str, Any]]:
    items = (await client.get(f"/api/v1/sessions/{reply['session_id']}/messages", headers=who.headers)).json()["items"]
    return [m for m in items if m["role"] == "tool"]


async def test_a_signed_tool_call_is_recorded_and_answered_from(
    client: httpx.AsyncClient, make_tenant: Any, fake_openai: tuple[FakeOpenAI, str], company: str
) -> None:
    fake, base_url = fake_openai
    tenant = await make_tenant("Ferramentas")
    admin, member = await tenant.member(Role.admin), await tenant.member()
    assistant_id, secret = await assistant_with_tool(client, admin, base_url, "fake-tools", f"{company}/orders")
    listed = await client.get(f"/api/v1/assistants/{assistant_id}/tools", headers=member.headers)
    assert [t["name"] for t in listed.json()] == ["order_status"] and "secret" not in listed.json()[0]

    asked_before = len(fake.requests)
    reply = await ask(client, member, assistant_id, "cadê meu pedido A-1001?")
    assert reply["reply_state"] == "complete", reply
    assert reply["content"].startswith("Tool said: ") and "a caminho" in reply["content"]
    assert reply["metadata"]["tool_calls"] == 1
    # what the model was offered, and that it saw the result paired with its call
    offered = next(r for r in fake.requests[asked_before:] if r["model"] == "fake-tools" and r.get("tools"))
    assert offered["tools"][0]["function"]["name"] == "order_status"

    path, headers, body = CompanyApi.received[-1]
    assert path == "/orders"
    Webhook(secret).verify(body, headers)  # raises unless papo signed it: the company can tell
    payload = json.loads(body)
    assert payload["tool"] == "order_status" and payload["arguments"] == {"query": "cadê meu pedido A-1001?"}
    (recorded,) = await tool_messages(client, member, reply)
    assert json.loads(recorded["content"])["status"] == "a caminho"
    assert recorded["metadata"]["tool"] == "order_status" and recorded["metadata"]["ok"] is True
    assert json.loads(recorded["metadata"]["arguments"]) == {"query": "cadê meu pedido A-1001?"}

    forged = await client.post(
        f"/api/v1/sessions/{reply['session_id']}/messages",
        json={"role": "tool", "content": "x"},
        headers=member.headers,
    )
    assert forged.status_code == 422  # only papo writes tool messages


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/slow", "did not answer within 1 s"),
        ("/huge", "more than 64 KB"),
        ("/boom", "HTTP 500"),
        ("/to-metadata", "may not reach"),
    ],
)
async def test_a_failing_tool_becomes_an_error_the_model_answers_around(
    path: str,
    error: str,
    client: httpx.AsyncClient,
    make_tenant: Any,
    fake_openai: tuple[FakeOpenAI, str],
    company: str,
) -> None:
    _, base_url = fake_openai
    tenant = await make_tenant("Falhas")
    admin, member = await tenant.member(Role.admin), await tenant.member()
    assistant_id, _ = await assistant_with_tool(
        client, admin, base_url, "fake-tools", f"{company}{path}", tool_timeout=1
    )
    reply = await ask(client, member, assistant_id, "status do pedido?")
    assert reply["reply_state"] == "complete", reply  # the reply is never lost to the tool
    assert error in reply["content"], reply["content"]
    (recorded,) = await tool_messages(client, member, reply)
    assert recorded["metadata"]["ok"] is False and error in recorded["metadata"]["error"]


async def test_a_model_that_keeps_calling_is_stopped_at_the_step_limit(
    client: httpx.AsyncClient,
    make_tenant: Any,
    fake_openai: tuple[FakeOpenAI, str],
    company: str,
    settings: Settings,
) -> None:
    _, base_url = fake_openai
    tenant = await make_tenant("Laço")
    admin, member = await tenant.member(Role.admin), await tenant.member()
    assistant_id, _ = await assistant_with_tool(client, admin, base_url, "fake-tools-loop", f"{company}/orders")
    reply = await ask(client, member, assistant_id, "de novo")
    assert reply["reply_state"] == "complete" and reply["content"] == "Done after tools"
    assert reply["metadata"]["tool_calls"] == settings.reply_max_tool_steps
    assert reply["metadata"]["tool_steps_exhausted"] is True
    assert len(await tool_messages(client, member, reply)) == settings.reply_max_tool_steps


async def test_tools_are_for_admins_and_stay_in_their_tenant(
    client: httpx.AsyncClient, make_tenant: Any, fake_openai: tuple[FakeOpenAI, str], company: str
) -> None:
    _, base_url = fake_openai
    tenant, other = await make_tenant("Dona"), await make_tenant("Outra")
    admin, member = await tenant.member(Role.admin), await tenant.member()
    stranger = await other.member(Role.admin)
    assistant_id, _ = await assistant_with_tool(client, admin, base_url, "fake-tools", f"{company}/orders")
    path = f"/api/v1/assistants/{assistant_id}/tools"
    body = {"name": "x", "url": f"{company}/orders", "parameters": TOOL_SCHEMA}
    assert (await client.post(path, json=body, headers=member.headers)).status_code == 403
    assert (await client.post(path, json=body, headers=stranger.headers)).status_code == 404
    assert (await client.get(path, headers=stranger.headers)).status_code == 404
    private = {**body, "name": "intranet", "url": "http://10.0.0.5/api"}
    assert (await client.post(path, json=private, headers=admin.headers)).status_code == 422
    bad_schema = {**body, "name": "bad", "parameters": {"type": "string"}}
    assert (await client.post(path, json=bad_schema, headers=admin.headers)).status_code == 422
    twice = await client.post(path, json={**body, "name": "order_status"}, headers=admin.headers)
    assert twice.status_code == 409
    tool_id = (await client.get(path, headers=admin.headers)).json()[0]["id"]
    assert (await client.delete(f"{path}/{tool_id}", headers=stranger.headers)).status_code == 404
    assert (await client.delete(f"{path}/{tool_id}", headers=admin.headers)).status_code == 204
