"""Outbound webhooks for tenants."""
