"""The transports this process offers, by kind: neonize and the Cloud API always; extra ones (the
test suite's fake) are named in `PAPO_WHATSAPP_TRANSPORTS` as `kind=package.module:Class`."""

from __future__ import annotations

import importlib

import httpx

from papo.settings import Settings
from papo.whatsapp.transports.base import Transport
from papo.whatsapp.transports.cloud import CloudTransport
from papo.whatsapp.transports.neonize import NeonizeTransport


def load_transports(settings: Settings, http: httpx.AsyncClient) -> dict[str, Transport]:
    store = settings.data_dir.resolve() / "whatsapp"
    transports: dict[str, Transport] = {
        "cloud": CloudTransport(store / "cloud", http, settings.whatsapp_graph_url),
        "neonize": NeonizeTransport(store / "neonize"),
    }
    for spec in settings.whatsapp_transports:
        kind, _, target = spec.partition("=")
        module_name, _, class_name = target.partition(":")
        if not kind or not module_name or not class_name:
            raise ValueError(f"PAPO_WHATSAPP_TRANSPORTS entry {spec!r} is not kind=module:Class")
        transport_class = getattr(importlib.import_module(module_name), class_name)
        transport = transport_class(store / kind)
        if not isinstance(transport, Transport):
            raise ValueError(f"{target} is not a papo WhatsApp transport")
        transports[kind] = transport
    return transports
