"""Seed 000's `Database` methods, as the chat feature's async service API, with the same meaning."""

from __future__ import annotations

from typing import Any

from papo.auth.models import Role
from papo.auth.service import Principal
from papo.chat.models import MessageRole, MessageStatus, SessionStatus
from papo.chat.service import ChatService
from papo.db.engine import Database
from papo.settings import Settings


async def test_seed_database_methods(db: Database, settings: Settings, make_tenant: Any) -> None:
    member = await (await make_tenant()).member(Role.member)
    me = Principal(member.tenant_id, member.user_id, Role.member.value)
    async with db.transaction(me.context()) as session:
        chat = ChatService(session, me, settings)
        created = await chat.create_chat_session(member.user_id, "Suporte")
        other = await chat.create_chat_session(member.user_id)
        listed, _ = await chat.get_chat_sessions(member.user_id)
        assert {s.id for s in listed} == {created.id, other.id}
        assert (await chat.get_chat_session(created.id, member.user_id)).title == "Suporte"  # type: ignore[union-attr]
        await chat.update_chat_session(created.id, member.user_id, title="Renomeada", fields={"title"})
        message = await chat.add_message(created.id, MessageRole.user, "Olá")
        await chat.update_message_status(message.id, MessageStatus.delivered)
        history = await chat.get_messages(created.id, member.user_id, limit=None)
        assert [(m.content, m.status) for m in history.items] == [("Olá", MessageStatus.delivered)]
        await chat.archive_chat_session(other.id, member.user_id)
        await chat.delete_chat_session(created.id, member.user_id)
        assert await chat.get_chat_session(created.id, member.user_id) is None
        archived, _ = await chat.get_chat_sessions(member.user_id, SessionStatus.archived)
        assert [s.id for s in archived] == [other.id]
