"""Relaying what the gateway stores to backends (docs/sinks.md).

`base` holds the contract every sink follows; each kind has its own module, imported
only when a sink of that kind is configured (so aiomqtt is not loaded for a gateway
that only has webhooks).
"""

from __future__ import annotations

import importlib

from .base import SKIPPED, Filter, Record, Sink, SinkConfig, SinkConfigError, SinkError

# kind -> (module, class) within this package
KINDS: dict[str, tuple[str, str]] = {
    "mqtt": ("mqtt", "MqttSink"),
    "webhook": ("webhook", "WebhookSink"),
    "traccar": ("traccar", "TraccarSink"),
}


def sink_class(kind: str) -> type[Sink]:
    """The Sink subclass for a kind; KeyError for an unknown kind."""
    module, name = KINDS[kind]
    cls: type[Sink] = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    return cls


__all__ = [
    "KINDS", "SKIPPED", "Filter", "Record", "Sink", "SinkConfig", "SinkConfigError", "SinkError",
    "sink_class",
]  # fmt: skip
