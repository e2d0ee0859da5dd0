"""Kafka's AlterClientQuotas and DescribeClientQuotas through kafka-python's
client: its protocol module has DescribeClientQuotas v0 but no
AlterClientQuotas, so that one is declared here with kafka-python's own
types (Kafka's AlterClientQuotasRequest.json, v0), and its admin client
sends both."""

from __future__ import annotations

from kafka.protocol.admin import DescribeClientQuotasRequest_v0
from kafka.protocol.api import Request, Response
from kafka.protocol.types import Array, Boolean, Float64, Int16, Int32, Schema, String


class AlterClientQuotasResponse_v0(Response):
    API_KEY = 49
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("entries", Array(
            ("error_code", Int16),
            ("error_message", String("utf-8")),
            ("entity", Array(("entity_type", String("utf-8")), ("entity_name", String("utf-8")))))),
    )


class AlterClientQuotasRequest_v0(Request):
    API_KEY = 49
    API_VERSION = 0
    RESPONSE_TYPE = AlterClientQuotasResponse_v0
    SCHEMA = Schema(
        ("entries", Array(
            ("entity", Array(("entity_type", String("utf-8")), ("entity_name", String("utf-8")))),
            ("ops", Array(("key", String("utf-8")), ("value", Float64), ("remove", Boolean))))),
        ("validate_only", Boolean),
    )


def alter(admin, entity: dict, ops: dict, validate_only: bool = False) -> tuple[int, str | None]:
    """Sets (value) or removes (None) each quota of `entity` ({type:
    name, or None for the default}) through kafka-python's admin client
    `admin`; the entry's (error code, message)."""
    request = AlterClientQuotasRequest_v0(
        entries=[([(t, n) for t, n in entity.items()],
                  [(key, value or 0.0, value is None) for key, value in ops.items()])],
        validate_only=validate_only)
    response = admin.send_request(request)
    (code, message, _), = response.entries
    return code, message


def describe(admin, components: list[tuple[str, int, str | None]], strict: bool = False):
    """(error code, {entity as sorted (type, name) tuples: {key: value}})
    for a filter of (entity type, match type, match) components."""
    response = admin.send_request(DescribeClientQuotasRequest_v0(components=components, strict=strict))
    entries = {tuple(sorted((t, n) for t, n in entity)): dict(values) for entity, values in response.entries or []}
    return response.error_code, entries
