"""A `whatsapp_sessions` row as both the hub and the per-company service treat it: its public shape
and the realtime event that announces it, the Cloud API number it names, where its access token is
kept sealed, and the principal the hub acts as inside the row's company."""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.service import SERVICE_ROLE, Principal
from papo.errors import InvalidInput, causes
from papo.realtime.service import emit
from papo.whatsapp.models import WhatsappSession
from papo.whatsapp.schemas import SessionOut

# The config key holding a Cloud API token encrypted with the server key (a name, not a secret).
SEALED_TOKEN = "access_token_encrypted"  # noqa: S105
# A Cloud API number's id as Meta gives it (digits; no leading zero, so one number has one spelling).
PHONE_NUMBER_ID = re.compile(r"[1-9][0-9]{0,31}")
# The one answer to "is this number someone's?": it says nothing about whose (migration 0021).
NUMBER_TAKEN = "this number is already connected to papo"


def violated(exc: BaseException, constraint: str) -> bool:
    """Whether `exc` is (or wraps) a violation of the named constraint or unique index."""
    return any(getattr(seen, "constraint_name", None) == constraint for seen in causes(exc))


def stored_number(row: WhatsappSession) -> str | None:
    """The Cloud API number a row names (as the database's `config->>'phone_number_id'` reads it)."""
    value = row.config.get("phone_number_id")
    return None if value is None else str(value)


def cloud_number(config: dict[str, Any]) -> str:
    """The `phone_number_id` of a Cloud API session's config, checked (a JSON number is taken too)."""
    value = config.get("phone_number_id")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not PHONE_NUMBER_ID.fullmatch(value.strip()):
        raise InvalidInput(
            "a Cloud API session needs config.phone_number_id: the number's id in Meta's WhatsApp Manager (digits)",
            field="config.phone_number_id",
        )
    return value.strip()


def service_principal(tenant_id: uuid.UUID) -> Principal:
    return Principal(tenant_id, None, SERVICE_ROLE)


def session_out(row: WhatsappSession) -> SessionOut:
    return SessionOut.model_validate(row).model_copy(update={"has_qr": bool(row.qr_code)})


def announce(session: AsyncSession, row: WhatsappSession) -> None:
    """Tell the company's staff (no QR, no config: admins fetch those)."""
    emit(
        session,
        "whatsapp.session.updated",
        session_out(row).model_dump(mode="json"),
        tenant_id=row.tenant_id,
        user_id=None,
    )
