"""Schemathesis over papo's own OpenAPI document, once per way of calling it (nobody, a member, an
admin, an API key, an identity provider's token, a browser session with CSRF): whatever it sends,
papo answers without a server error, in the declared content type and response schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from papo.app import create_app
from papo.settings import Settings
from tests.hostile.conftest import HostileServer

# The document comes from the application itself, so a new route is fuzzed without touching this.
schema = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None)).openapi()).exclude(
    path="/api/v1/events"  # an endless event stream: covered by the realtime tests
)
AUTH_MODES = ["anonymous", "member", "admin", "api_key", "oidc", "cookie"]
CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("mode", AUTH_MODES)
@schema.parametrize()
@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,  # the same cases every run: a failure here is reproducible, never flaky
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_any_input_any_caller_no_server_error(
    case: schemathesis.Case, mode: str, hostile_server: HostileServer
) -> None:
    credentials = hostile_server.credentials[mode]
    response = case.call(
        base_url=hostile_server.url, headers=credentials.headers, cookies=credentials.cookies, timeout=15
    )
    case.validate_response(response, checks=CHECKS)
