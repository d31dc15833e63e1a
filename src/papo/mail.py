"""Outgoing e-mail through the operator's SMTP server (alerts, invitations, address checks)."""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib

from papo.settings import Settings


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def configured(self) -> bool:
        return bool(self.settings.smtp_host)

    async def send(self, to: list[str], subject: str, body: str) -> None:
        s = self.settings
        message = EmailMessage()
        message["From"] = s.smtp_from
        message["To"] = ", ".join(to)
        message["Subject"] = subject
        message.set_content(body)
        await aiosmtplib.send(
            message,
            recipients=to,  # exactly these, never whatever the To header parses into
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username,
            password=s.smtp_password,
            start_tls=s.smtp_starttls,
            timeout=10.0,
        )
