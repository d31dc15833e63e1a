"""Tenant admins' outbound webhooks: subscriptions, the delivery log, replay and a test ping."""

from __future__ import annotations

import uuid
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, Path, Query, Response, status

from papo.auth.deps import AdminPrincipal, DbSession
from papo.crypto import KeyBox
from papo.db.engine import after_commit
from papo.errors import InvalidInput
from papo.runtime import current_runtime
from papo.settings import Settings
from papo.webhooks.schemas import DeliveryOut, WebhookCreate, WebhookCreated, WebhookOut, WebhookPatch
from papo.webhooks.service import WebhookSender, WebhookService


class WebhooksRuntime(Protocol):
    settings: Settings
    keys: KeyBox
    webhooks: WebhookSender


State = Annotated[WebhooksRuntime, Depends(current_runtime)]

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])
MAX_ID = 2**63 - 1  # delivery ids are bigint


async def webhook_service(session: DbSession, principal: AdminPrincipal, state: State) -> WebhookService:
    return WebhookService(session, principal, state.settings, state.keys)


Webhooks = Annotated[WebhookService, Depends(webhook_service)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WebhookCreated)
async def create_webhook(body: WebhookCreate, webhooks: Webhooks) -> WebhookCreated:
    """Subscribe a URL. Deliveries carry Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
    `webhook-signature`) signed with the secret returned here, once."""
    endpoint, secret = await webhooks.create(body.url, body.event_types, body.description)
    return WebhookCreated.model_validate({**vars(endpoint), "secret": secret})


@router.get("", response_model=list[WebhookOut])
async def list_webhooks(webhooks: Webhooks) -> list[WebhookOut]:
    return [WebhookOut.model_validate(e) for e in await webhooks.endpoints()]


@router.get("/{webhook_id}", response_model=WebhookOut)
async def get_webhook(webhook_id: uuid.UUID, webhooks: Webhooks) -> WebhookOut:
    return WebhookOut.model_validate(await webhooks.get(webhook_id))


@router.patch("/{webhook_id}", response_model=WebhookOut)
async def update_webhook(webhook_id: uuid.UUID, body: WebhookPatch, webhooks: Webhooks) -> WebhookOut:
    changes = body.model_dump(exclude_unset=True)
    for field in ("url", "event_types", "is_active"):
        if field in changes and changes[field] is None:
            raise InvalidInput(f"{field} cannot be null", field=field)
    return WebhookOut.model_validate(await webhooks.update(webhook_id, changes))


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webhook(webhook_id: uuid.UUID, webhooks: Webhooks) -> Response:
    await webhooks.delete(webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{webhook_id}/deliveries", response_model=list[DeliveryOut])
async def list_deliveries(
    webhook_id: uuid.UUID,
    webhooks: Webhooks,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID, description="only deliveries older than this id")] = None,
) -> list[DeliveryOut]:
    """The delivery log, newest first: status, attempts, the last answer or error, the payload."""
    return [DeliveryOut.model_validate(d) for d in await webhooks.deliveries(webhook_id, limit, before)]


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/replay", status_code=status.HTTP_202_ACCEPTED, response_model=DeliveryOut
)
async def replay_delivery(
    webhook_id: uuid.UUID,
    delivery_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    webhooks: Webhooks,
    session: DbSession,
    state: State,
) -> DeliveryOut:
    """Send a delivery's payload again, as a new delivery."""
    replayed = await webhooks.replay(webhook_id, delivery_id)
    after_commit(session, state.webhooks.wake.set)
    return DeliveryOut.model_validate(replayed)


@router.post("/{webhook_id}/test", status_code=status.HTTP_202_ACCEPTED, response_model=DeliveryOut)
async def ping_webhook(webhook_id: uuid.UUID, webhooks: Webhooks, session: DbSession, state: State) -> DeliveryOut:
    """Queue a `webhook.test` delivery to this URL."""
    queued = await webhooks.ping(webhook_id)
    after_commit(session, state.webhooks.wake.set)
    return DeliveryOut.model_validate(queued)
