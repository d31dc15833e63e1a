"""Why a stream ended, as WebSocket close codes (4000-4999 are the application's). SSE sends the same
reason as a final `error` event and ends the response."""

from __future__ import annotations

CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
# The credential no longer holds (expired, signed out, key revoked, membership removed): sign in again.
CLOSE_UNAUTHORIZED = 4001
# Not allowed, or no longer allowed as before (the member's role changed): reconnect as what you are now.
CLOSE_FORBIDDEN = 4003
CLOSE_SLOW_CONSUMER = 4008
CLOSE_BAD_REQUEST = 4400
# Over a limit (open streams per member, auth frames per socket).
CLOSE_TOO_MANY = 4429
