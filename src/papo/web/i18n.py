"""Two languages, Portuguese (Brazil) and English, for every string of the web app, kept in gettext
catalogs under web/locales/ (edit them with any PO editor; Babel reads them at start-up).

The language comes from the `papo_lang` cookie (the switch) or else Accept-Language; dates and
numbers are formatted for it with Babel."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from babel.dates import format_datetime, format_timedelta
from babel.messages.pofile import read_po
from babel.numbers import format_decimal

from papo.sizes import file_size

LANGUAGES = {"pt-BR": "Português", "en": "English"}
DEFAULT_LANGUAGE = "pt-BR"
LANG_COOKIE = "papo_lang"

LOCALES = Path(__file__).parent / "locales"


def babel_locale(language: str) -> str:
    return "pt_BR" if language == "pt-BR" else "en"


def _load(language: str) -> dict[str, str]:
    """One language's strings from its gettext catalog (msgid = the key the code uses)."""
    with (LOCALES / babel_locale(language) / "LC_MESSAGES" / "messages.po").open("rb") as source:
        catalog = read_po(source)
    return {str(message.id): str(message.string) for message in catalog if message.id and message.string}


MESSAGES: dict[str, dict[str, str]] = {language: _load(language) for language in LANGUAGES}


def pick_language(cookie: str | None, accept_language: str | None) -> str:
    """The switch's choice, else the first supported language the browser asks for."""
    if cookie in LANGUAGES:
        return cookie
    ranked: list[tuple[float, str]] = []
    for part in (accept_language or "").split(","):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        ranked.append((quality, tag.strip().lower()))
    for _, tag in sorted(ranked, key=lambda item: -item[0]):
        if tag.startswith("pt"):
            return "pt-BR"
        if tag.startswith("en"):
            return "en"
    return DEFAULT_LANGUAGE


class Translator:
    def __init__(self, language: str) -> None:
        self.language = language
        self.messages = MESSAGES[language]
        self.locale = babel_locale(language)

    def __call__(self, key: str, **values: object) -> str:
        text = self.messages.get(key) or MESSAGES["en"].get(key) or key
        return text.format(**values) if values else text

    def moment(self, value: datetime | None) -> str:
        if value is None:
            return ""
        return format_datetime(value, "short", locale=self.locale)

    def ago(self, value: datetime | None, now: datetime) -> str:
        if value is None:
            return ""
        return format_timedelta(value - now, add_direction=True, locale=self.locale)

    def number(self, value: float) -> str:
        return format_decimal(value, locale=self.locale)

    def size(self, value: int | None) -> str:
        """A file's size as people read it (1024-based, one decimal)."""
        return "" if value is None else file_size(value, str(self.locale))

    def catalog(self) -> dict[str, str]:
        """The strings the page script needs (sent as JSON in the page)."""
        scripted = {"chat", "dash", "rt", "auth", "inbox", "wa", "media"}
        return {k: v for k, v in self.messages.items() if k.split(".")[0] in scripted}
