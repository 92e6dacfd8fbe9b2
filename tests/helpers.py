"""Test helpers: reading google.rpc details off gRPC errors, building requests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
from billing.v1 import common_pb2
from google.rpc import error_details_pb2, status_pb2


@dataclass
class RichError:
    """The parts of a google.rpc.Status the tests look at."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    retry_delay_ms: int | None = None
    error_infos: int = 0


def rich(err: grpc.aio.AioRpcError) -> RichError:
    """Decodes the status details of a failed call."""
    out = RichError(code=err.code(), message=err.details() or "")
    trailers: Any = err.trailing_metadata() or ()
    for key, value in trailers:
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)  # type: ignore[arg-type]
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                out.reason, out.domain, out.metadata = info.reason, info.domain, dict(info.metadata)
                out.error_infos += 1
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                out.violations = [v.field for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                out.retry_delay_ms = retry.retry_delay.ToMilliseconds()
    return out


def rid() -> str:
    """A fresh request id."""
    return str(uuid.uuid4())


def usd(minor: int) -> common_pb2.Money:
    """USD money message."""
    return common_pb2.Money(amount_minor=minor, currency="USD")
