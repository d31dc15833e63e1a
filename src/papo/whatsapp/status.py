"""The WhatsApp session state machine, and the seed's own status words mapped onto it.

    STOPPED ──start──▶ STARTING ──qr──▶ SCAN_QR_CODE ──paired/ready──▶ WORKING
       ▲                  │  ▲               │  ▲ (QR rotates)              │
       │                  │  └──restart──────┴──┴───────────────────────────┤ disconnected (reconnects)
       └──stop/logout─────┴──────────── any ───────────────────────────────┘
    FAILED: auth failure, transport crash or no QR scan in time; restart goes to STARTING.

Seed 004 kept "connecting / connected / disconnected" in memory and CONNECTING / CONNECTED /
DISCONNECTED in the database; `seed_status()` gives those words for the seed-shaped endpoints.
"""

from __future__ import annotations

import enum


class SessionStatus(enum.StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    SCAN_QR_CODE = "SCAN_QR_CODE"
    WORKING = "WORKING"
    FAILED = "FAILED"


S = SessionStatus
TRANSITIONS: dict[SessionStatus, frozenset[SessionStatus]] = {
    S.STOPPED: frozenset({S.STARTING, S.STOPPED}),
    S.STARTING: frozenset({S.STARTING, S.SCAN_QR_CODE, S.WORKING, S.FAILED, S.STOPPED}),
    S.SCAN_QR_CODE: frozenset({S.STARTING, S.SCAN_QR_CODE, S.WORKING, S.FAILED, S.STOPPED}),
    S.WORKING: frozenset({S.STARTING, S.WORKING, S.FAILED, S.STOPPED}),
    S.FAILED: frozenset({S.STARTING, S.FAILED, S.STOPPED}),
}

# Seed 004: database words (CONNECTING, CONNECTED, DISCONNECTED) and memory words (lower case).
SEED_TO_STATUS = {
    "CONNECTING": S.STARTING,
    "CONNECTED": S.WORKING,
    "DISCONNECTED": S.STOPPED,
    "connecting": S.STARTING,
    "connected": S.WORKING,
    "disconnected": S.STOPPED,
}


def can_move(current: SessionStatus, target: SessionStatus) -> bool:
    return target in TRANSITIONS[current]


def seed_status(status: SessionStatus) -> str:
    """The seed's database word for a status (what its endpoints and old clients expect)."""
    if status is S.WORKING:
        return "CONNECTED"
    if status in (S.STARTING, S.SCAN_QR_CODE):
        return "CONNECTING"
    return "DISCONNECTED"
