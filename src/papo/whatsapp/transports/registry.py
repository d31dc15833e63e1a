"""The transports this process offers, by kind. Extra ones (the test suite's fake) are named in
`PAPO_WHATSAPP_TRANSPORTS` as `kind=package.module:Class`."""

from __future__ import annotations

import importlib

from papo.settings import Settings
from papo.whatsapp.transports.base import Transport


def load_transports(settings: Settings) -> dict[str, Transport]:
    transports: dict[str, Transport] = {}
    for spec in settings.whatsapp_transports:
        kind, _, target = spec.partition("=")
        module_name, _, class_name = target.partition(":")
        if not kind or not module_name or not class_name:
            raise ValueError(f"PAPO_WHATSAPP_TRANSPORTS entry {spec!r} is not kind=module:Class")
        transport_class = getattr(importlib.import_module(module_name), class_name)
        transport = transport_class(settings.data_dir.resolve() / "whatsapp" / kind)
        if not isinstance(transport, Transport):
            raise ValueError(f"{target} is not a papo WhatsApp transport")
        transports[kind] = transport
    return transports
