"""The operator CLI as scripts use it: identifiers alone on stdout, --json on request, errors on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from papo.settings import Settings


def papo(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PAPO_DATABASE_URL": settings.database_url or "",
        "PAPO_APP_DATABASE_URL": settings.app_database_url or "",
        "PAPO_DATA_DIR": str(settings.data_dir),
        "PAPO_PUBLIC_URL": settings.public_url or "",
    }
    papo_bin = Path(sys.executable).parent / "papo"
    result = subprocess.run([str(papo_bin), *args], env=env, capture_output=True, text=True, timeout=60, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


async def test_operator_flow(settings: Settings, client: httpx.AsyncClient) -> None:
    tenant_id = papo(settings, "tenant", "create", "Empresa CLI").stdout.strip()
    assert uuid.UUID(tenant_id)

    created = json.loads(
        papo(
            settings,
            "user",
            "create",
            "--tenant",
            tenant_id,
            "--email",
            "Ops@Example.com",
            "--role",
            "admin",
            "--password",
            "s3cret-pass",
            "--json",
        ).stdout
    )
    assert created["email"] == "ops@example.com"
    assert created["created"] is True
    user_id = created["id"]

    token = papo(settings, "token", "--tenant", tenant_id, "--user", user_id).stdout.strip()
    profile = (await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})).json()
    assert profile == {**profile, "tenant_id": tenant_id, "user_id": user_id, "role": "admin"}

    key = papo(settings, "apikey", "create", "--tenant", tenant_id, "--name", "erp").stdout.strip()
    assert key.startswith("papo_sk_")
    assert (await client.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"})).status_code == 200
    listed = (await client.get("/api/v1/api-keys", headers={"Authorization": f"Bearer {token}"})).json()
    papo(settings, "apikey", "revoke", listed[0]["id"])
    assert (await client.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"})).status_code == 401

    signed_in = await client.post("/api/v1/auth/token", json={"email": "ops@example.com", "password": "s3cret-pass"})
    assert signed_in.status_code == 200


def test_retention_commands_print_counts(settings: Settings) -> None:
    for command in ("purge-deleted", "prune-events"):
        result = papo(settings, command, "--older-than-days", "365")
        assert result.stdout.strip().isdigit()
    assert papo(settings, "prune-events", "--older-than-days", "-1", check=False).returncode != 0


def test_errors_go_to_stderr_with_nonzero_exit(settings: Settings) -> None:
    missing = papo(settings, "token", "--tenant", str(uuid.uuid4()), "--user", "nobody", check=False)
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert "no such member" in missing.stderr
    bad = papo(settings, "user", "create", "--tenant", "not-a-uuid", "--email", "a@b.c", check=False)
    assert bad.returncode == 1
    assert "tenant id" in bad.stderr
    nokey = papo(settings, "apikey", "revoke", str(uuid.uuid4()), check=False)
    assert nokey.returncode == 1
    assert "no such API key" in nokey.stderr


async def test_user_create_never_reuses_an_account_of_another_tenant(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    """Issue 13's attack through the real command: the address is taken at Acme, so `user create` for
    Beta prints an invitation link and exits 3 instead of handing Beta's role to that account."""
    acme = papo(settings, "tenant", "create", "Acme CLI").stdout.strip()
    beta = papo(settings, "tenant", "create", "Beta CLI").stdout.strip()
    email = f"cfo-{uuid.uuid4().hex[:6]}@beta.test"
    papo(settings, "user", "create", "--tenant", acme, "--email", email, "--password", "acme password")

    reused = papo(settings, "user", "create", "--tenant", beta, "--email", email, "--role", "admin", check=False)
    assert reused.returncode == 3, reused.stderr
    link = reused.stdout.strip()
    assert link.startswith(f"{settings.public_url}/invitations/")
    assert "invitation" in reused.stderr
    refused = await client.post(
        "/api/v1/auth/token", json={"email": email, "password": "acme password", "tenant_id": beta}
    )
    assert refused.status_code == 401

    invited = json.loads(papo(settings, "user", "invite", "--tenant", beta, "--email", email, "--json").stdout)
    assert invited["url"] != link  # re-inviting replaces the pending link
    old = await client.post(
        "/api/v1/invitations/accept", json={"token": link.rsplit("/", 1)[1], "password": "acme password"}
    )
    assert old.status_code == 404
    joined = await client.post(
        "/api/v1/invitations/accept", json={"token": invited["url"].rsplit("/", 1)[1], "password": "acme password"}
    )
    assert joined.status_code == 200, joined.text
    assert joined.json()["tenant_id"] == beta
