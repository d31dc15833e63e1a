"""The old system's `sessions.json` (seed 004's loadLegacySessions), imported into one company."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.service import Principal
from papo.db.base import new_id
from papo.errors import InvalidInput
from papo.whatsapp.models import WhatsappSession
from papo.whatsapp.status import SEED_TO_STATUS, SessionStatus

S = SessionStatus


def legacy_entries(content: str) -> list[Any]:
    """The entries of a legacy `sessions.json` (a list, a map by name, or either under "sessions")."""
    try:
        document = json.loads(content)
    except ValueError as exc:
        raise InvalidInput(f"sessions.json is not JSON: {exc}", field="file") from exc
    entries = document.get("sessions", document) if isinstance(document, dict) else document
    if isinstance(entries, dict):
        entries = [{"name": name, **(value if isinstance(value, dict) else {})} for name, value in entries.items()]
    if not isinstance(entries, list):
        raise InvalidInput("sessions.json must hold a list (or a map) of sessions", field="file")
    return entries


def _company_field(entry: Any) -> Any:
    return entry.get("companyId", entry.get("company_id")) if isinstance(entry, dict) else None


def legacy_company(entry: Any) -> str | None:
    """An entry's company (seed 004's `companyId`), as text; None when it names none usable."""
    value = _company_field(entry)
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        return None
    return str(value).strip()


def legacy_companies(content: str) -> set[str]:
    """Every company the file's entries name (to be looked up before importing)."""
    return {ref for ref in map(legacy_company, legacy_entries(content)) if ref is not None}


def _company_mismatch(
    ref: str | None, matches: list[uuid.UUID], tenant_id: uuid.UUID, *, names_companies: bool
) -> str | None:
    """Why an entry naming company `ref` (which names the tenants `matches`) stays out of `tenant_id`."""
    if ref is None:
        return "no companyId, in a file whose other entries name companies" if names_companies else None
    if matches == [tenant_id]:
        return None
    if not matches:
        return f"unknown companyId {ref!r}"
    if len(matches) > 1:
        return f"companyId {ref!r} names several companies; import it by tenant id"
    return f"companyId {ref!r} is another company (tenant {matches[0]}): import it with --tenant {matches[0]}"


async def import_legacy_sessions(
    db: AsyncSession,
    principal: Principal,
    content: str,
    *,
    transport: str,
    companies: dict[str, list[uuid.UUID]] | None = None,
) -> dict[str, Any]:
    """Seed's loadLegacySessions: the old system's `sessions.json` into the principal's company;
    idempotent (a name already here is skipped), every entry judged on its own. Imported sessions are
    STOPPED until restarted (the old process's credentials are not papo's).

    An entry's `companyId` decides where it belongs: `companies` maps each one to the tenants it
    names (see `legacy_companies`). An entry of another company, or of an unknown or ambiguous one,
    is skipped with the reason, never imported here. In a file without any companyId (one
    company's) every entry is the principal's company's; in a file that names companies, an entry
    without one is skipped (whose it is cannot be told)."""
    principal.require_admin()
    entries = legacy_entries(content)
    names_companies = any(_company_field(entry) is not None for entry in entries)
    imported: list[str] = []
    skipped: list[dict[str, str]] = []
    for index, entry in enumerate(entries):
        name = entry.get("name") or entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            skipped.append({"entry": str(index), "reason": "no usable name"})
            continue
        ref = legacy_company(entry)
        if ref is None and _company_field(entry) is not None:
            skipped.append({"entry": name, "reason": "companyId is not an id"})
            continue
        matches = (companies or {}).get(ref or "", [])
        if mismatch := _company_mismatch(ref, matches, principal.tenant_id, names_companies=names_companies):
            skipped.append({"entry": name, "reason": mismatch})
            continue
        existing = await db.scalar(
            select(WhatsappSession.id).where(
                WhatsappSession.tenant_id == principal.tenant_id,
                func.lower(WhatsappSession.name) == name.strip().lower(),
            )
        )
        if existing is not None:
            skipped.append({"entry": name, "reason": "already imported"})
            continue
        legacy_status = str(entry.get("status") or "DISCONNECTED")
        status = SEED_TO_STATUS.get(legacy_status, S.STOPPED)
        row = WhatsappSession(
            tenant_id=principal.tenant_id,
            id=new_id(),
            name=name.strip(),
            phone_number=entry.get("phoneNumber") or entry.get("phone_number"),
            transport=transport,
            config={"legacy": {k: v for k, v in entry.items() if k not in ("name", "qrCode")}},
            # it is not running here yet: STOPPED until restored, whatever the old file said
            status=S.STOPPED.value,
            status_reason=f"imported from sessions.json (was {legacy_status})",
            is_active=bool(entry.get("isActive", True)) and status is not S.FAILED,
        )
        db.add(row)
        await db.flush()
        imported.append(name)
    return {"imported": imported, "skipped": skipped}
