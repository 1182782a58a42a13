"""Kafka security (TLS, SASL PLAIN/SCRAM) as keyword arguments for aiokafka clients and the Faust app.

One place turns the validated settings into client options, so every consumer, producer and admin
client the service creates connects the same way as the Faust worker. The password comes from the
settings (read from STREAMS_SASL_PASSWORD_FILE at start) and is only ever handed to the client.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from streams.settings import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A client TLS context for SSL/SASL_SSL (system CAs unless STREAMS_SSL_CAFILE); None without TLS.

    aiokafka's context always verifies the broker's certificate and its host name; there is deliberately no
    setting to turn either off (tests/integration/test_tls.py checks both refusals).
    """
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None

    def path(p: Any) -> str | None:
        return str(p) if p is not None else None

    return create_ssl_context(cafile=path(settings.ssl_cafile), certfile=path(settings.ssl_certfile),
                              keyfile=path(settings.ssl_keyfile))


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaConsumer / AIOKafkaProducer / AIOKafkaAdminClient."""
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    return options


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for faust.App: `broker_credentials` matching kafka_client_options."""
    import faust  # here, so the local commands that only need kafka_client_options do not load Faust

    protocol = settings.security_protocol
    if protocol == "SSL":
        return {"broker_credentials": faust.SSLCredentials(ssl_context(settings))}
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        # With an ssl_context, SASLCredentials switches its protocol to SASL_SSL.
        return {"broker_credentials": faust.SASLCredentials(
            username=settings.sasl_username, password=settings.sasl_password,
            mechanism=settings.sasl_mechanism, ssl_context=ssl_context(settings))}
    return {}
