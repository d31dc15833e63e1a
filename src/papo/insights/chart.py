"""Geometry of the admin page's activity chart, drawn as inline SVG by the template: no chart
library, no script, and it prints and scales with the page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WIDTH, HEIGHT, MOOD_HEIGHT = 600.0, 140.0, 36.0
BAR_SHARE = 0.72  # of each day's slot; the rest is the gap between bars


@dataclass(frozen=True)
class DayBars:
    day: str
    x: float
    width: float
    user_y: float
    user_height: float
    reply_y: float
    reply_height: float
    mood_y: float
    mood_height: float
    mood: str  # positive / negative / none
    users: int
    replies: int
    average: float | None


def activity_chart(days: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacked bars per day (members' and customers' messages below, replies above) and a strip of
    the day's average sentiment around a mid line."""
    slot = WIDTH / max(1, len(days))
    peak = max((d["messages"].get("user", 0) + d["messages"].get("assistant", 0) for d in days), default=0) or 1
    bars = []
    for index, day in enumerate(days):
        users, replies = day["messages"].get("user", 0), day["messages"].get("assistant", 0)
        user_height = HEIGHT * users / peak
        reply_height = HEIGHT * replies / peak
        average = day["sentiment"]["average"]
        mood_height = (MOOD_HEIGHT / 2) * abs(average) if average is not None else 0.0
        bars.append(
            DayBars(
                day=str(day["day"]),
                x=round(index * slot + slot * (1 - BAR_SHARE) / 2, 2),
                width=round(slot * BAR_SHARE, 2),
                user_y=round(HEIGHT - user_height, 2),
                user_height=round(user_height, 2),
                reply_y=round(HEIGHT - user_height - reply_height, 2),
                reply_height=round(reply_height, 2),
                mood_y=round(MOOD_HEIGHT / 2 - mood_height if (average or 0) >= 0 else MOOD_HEIGHT / 2, 2),
                mood_height=round(mood_height, 2),
                mood="none" if average is None else "positive" if average >= 0 else "negative",
                users=users,
                replies=replies,
                average=average,
            )
        )
    return {"bars": bars, "peak": peak, "width": WIDTH, "height": HEIGHT, "mood_height": MOOD_HEIGHT}
