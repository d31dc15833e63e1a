"""Text PostgreSQL cannot store (NUL characters, unpaired surrogates sent as JSON escapes) is a 422
in the problem shape, wherever it is sent, and nothing is written."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from papo.auth.models import Role
from tests.support import create_session

NUL, SURROGATE = '"a\\u0000b"', '"a\\ud800b"'


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "lone-surrogate"])
async def test_unstorable_text_is_refused_everywhere(client: httpx.AsyncClient, make_tenant: Any, bad: str) -> None:
    tenant = await make_tenant()
    admin, member = await tenant.member(Role.admin), await tenant.member()
    chat = await create_session(client, member)
    attempts = [
        (member, "POST", "/api/v1/sessions", '{"title": BAD}'),
        (member, "POST", "/api/v1/sessions", '{"metadata": {"k": BAD}}'),
        (member, "PATCH", f"/api/v1/sessions/{chat['id']}", '{"metadata": {BAD: 1}}'),
        (member, "POST", f"/api/v1/sessions/{chat['id']}/messages", '{"content": BAD}'),
        (admin, "POST", "/api/v1/whatsapp/sessions", '{"name": "n", "transport": "fake", "config": {"x": BAD}}'),
        (admin, "POST", "/api/v1/assistants", '{"name": BAD, "provider": "demo", "model": "demo"}'),
    ]
    for who, method, url, body in attempts:
        response = await client.request(
            method, url, content=body.replace("BAD", bad), headers={**who.headers, "Content-Type": "application/json"}
        )
        assert response.status_code == 422, (url, body, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    search = await client.get("/api/v1/search", params={"q": "a\x00b"}, headers=member.headers)
    assert search.status_code in (200, 422), search.text
    assert len((await client.get("/api/v1/sessions", headers=member.headers)).json()["items"]) == 1
    assert (await client.get(f"/api/v1/sessions/{chat['id']}/messages", headers=member.headers)).json()["items"] == []
    assert (await client.get("/api/v1/whatsapp/sessions", headers=admin.headers)).json() == []
