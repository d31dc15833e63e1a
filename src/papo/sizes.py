"""File sizes as people read them (1024-based, at most one decimal), in error messages and pages."""

from __future__ import annotations

from babel.numbers import format_decimal

UNITS = (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024))


def file_size(value: int, locale: str = "en") -> str:
    for unit, scale in UNITS:
        if value >= scale:
            return f"{format_decimal(value / scale, format='#,##0.#', locale=locale)} {unit}"
    return f"{value} B"
