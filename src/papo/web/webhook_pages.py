"""A tenant admin's outbound webhooks: endpoints, their recent deliveries, test and replay."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Response

from papo.auth.deps import DbSession
from papo.db.engine import after_commit
from papo.errors import DomainError, NotFound
from papo.web.pages import Admin, AdminForm, Page, State, WebRuntime, redirect, render
from papo.webhooks.service import EVENT_TYPES as WEBHOOK_EVENT_TYPES
from papo.webhooks.service import WebhookService

router = APIRouter(include_in_schema=False)


async def _webhooks_page(
    page: Page, state: WebRuntime, session: Any, status_code: int = 200, **values: Any
) -> Response:
    service = WebhookService(session, page.member, state.settings, state.keys)
    hooks = [
        {"endpoint": endpoint, "deliveries": await service.deliveries(endpoint.id, 20, None)}
        for endpoint in await service.endpoints()
    ]
    return render(
        page,
        state,
        "webhooks.html",
        status_code=status_code,
        hooks=hooks,
        event_types=WEBHOOK_EVENT_TYPES,
        **{"notice": None, "error": None, "new_secret": None, **values},
    )


@router.get("/settings/webhooks")
async def webhooks_page(page: Admin, state: State, session: DbSession) -> Response:
    notice = page.t("hooks.queued") if page.request.query_params.get("queued") else None
    return await _webhooks_page(page, state, session, notice=notice)


@router.post("/settings/webhooks")
async def add_webhook(page: AdminForm, state: State, session: DbSession) -> Response:
    form = await page.request.form()
    service = WebhookService(session, page.member, state.settings, state.keys)
    description = str(form.get("description", "")).strip()[:200] or None
    try:
        _, secret = await service.create(
            str(form.get("url", ""))[:2000], [str(v) for v in form.getlist("event_types")], description
        )
    except DomainError as exc:
        return await _webhooks_page(page, state, session, status_code=exc.status, error=exc.detail)
    return await _webhooks_page(page, state, session, status_code=201, new_secret=secret)


@router.post("/settings/webhooks/{webhook_id}/{action}")
async def webhook_action(
    webhook_id: uuid.UUID, action: str, page: AdminForm, state: State, session: DbSession
) -> Response:
    service = WebhookService(session, page.member, state.settings, state.keys)
    if action == "test":
        await service.ping(webhook_id)
        after_commit(session, state.webhooks.wake.set)
        return redirect(page, state, "/settings/webhooks?queued=1")
    if action == "delete":
        await service.delete(webhook_id)
        return redirect(page, state, "/settings/webhooks")
    raise NotFound("no such action")


@router.post("/settings/webhooks/{webhook_id}/deliveries/{delivery_id}/replay")
async def replay_webhook_delivery(
    webhook_id: uuid.UUID,
    delivery_id: int,
    page: AdminForm,
    state: State,
    session: DbSession,
) -> Response:
    if not 1 <= delivery_id < 2**63:
        raise NotFound("no such delivery")
    await WebhookService(session, page.member, state.settings, state.keys).replay(webhook_id, delivery_id)
    after_commit(session, state.webhooks.wake.set)
    return redirect(page, state, "/settings/webhooks?queued=1")
