"""A tenant's brand (name, logo, primary and accent colours) as CSS variables that stay readable.

Whatever colour an admin picks, text on it and it as text on the page meet WCAG AA (4.5:1): the text
on a brand-coloured button is black or white, whichever contrasts more, and the colour used for
links is darkened (light theme) or lightened (dark theme) until it reaches 4.5:1 on the background."""

from __future__ import annotations

from papo.auth.tenant_settings import valid_colour

DEFAULT_PRIMARY = "#0f766e"  # teal: calm, readable, not the usual blue
DEFAULT_ACCENT = "#f59e0b"
# Brand-coloured text (links, the streaming cursor) sits on the page and on its cards and selected
# rows; it is made readable on the one of them closest to it in lightness (app.css's --surface-2),
# so it reads at AA on all of them.
LIGHT_BACKGROUND = "#eceef0"
DARK_BACKGROUND = "#22272c"
AA = 4.5


def _rgb(colour: str) -> tuple[float, float, float]:
    return tuple(int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(max(0.0, min(1.0, c)) * 255):02x}" for c in rgb)


def luminance(colour: str) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in _rgb(colour))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def text_on(colour: str) -> str:
    return "#000000" if contrast(colour, "#000000") >= contrast(colour, "#ffffff") else "#ffffff"


def readable_on(colour: str, background: str) -> str:
    """`colour`, mixed towards black or white (whichever the background is not) until it reads at AA."""
    target = (0.0, 0.0, 0.0) if luminance(background) > 0.5 else (1.0, 1.0, 1.0)
    rgb = _rgb(colour)
    for step in range(21):
        mix = step / 20
        candidate = _hex(tuple(c + (t - c) * mix for c, t in zip(rgb, target, strict=True)))  # type: ignore[arg-type]
        if contrast(candidate, background) >= AA:
            return candidate
    return _hex(target)


def stylesheet(brand: dict[str, str]) -> str:
    primary = brand.get("primary") if valid_colour(brand.get("primary")) else DEFAULT_PRIMARY
    accent = brand.get("accent") if valid_colour(brand.get("accent")) else DEFAULT_ACCENT
    assert primary is not None
    assert accent is not None
    return (
        ":root{"
        f"--brand:{primary};--on-brand:{text_on(primary)};--accent:{accent};--on-accent:{text_on(accent)};"
        f"--brand-text:{readable_on(primary, LIGHT_BACKGROUND)};"
        "}\n"
        ':root[data-theme="dark"]{'
        f"--brand-text:{readable_on(primary, DARK_BACKGROUND)};"
        "}\n"
        '@media (prefers-color-scheme: dark){:root:not([data-theme="light"]){'
        f"--brand-text:{readable_on(primary, DARK_BACKGROUND)};"
        "}}\n"
    )
