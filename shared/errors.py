"""Domain errors that carry their gRPC status, converted in one place.

A handler raises a `LoopwiseError`; `loopwise.grpcserver.rpc` turns it into a
gRPC status whose details hold a `google.rpc.ErrorInfo` (machine-readable
reason) and, for bad input, a `google.rpc.BadRequest` with the field
violations. Clients read them with `loopwise.errors.details_of`.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "loopwise.dev"


class LoopwiseError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "internal"

    def __init__(self, message: str, *, reason: str | None = None,
                 violations: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.violations = list(violations)

    def to_status(self) -> grpc.Status:
        details = []
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN)
        packed = any_pb2.Any()
        packed.Pack(info)
        details.append(packed)
        if self.violations:
            bad = error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in self.violations
            ])
            packed = any_pb2.Any()
            packed.Pack(bad)
            details.append(packed)
        status = status_pb2.Status(code=getattr(code_pb2, self.code.name), message=self.message,
                                   details=details)
        return rpc_status.to_status(status)


class InvalidArgument(LoopwiseError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "invalid_argument"


class UnknownTenant(LoopwiseError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "unknown_tenant"


class NotFound(LoopwiseError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "not_found"


class Unavailable(LoopwiseError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "unavailable"


class ModelError(LoopwiseError):
    """A model artifact that cannot be loaded or run."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "model_error"


def details_of(err: grpc.RpcError) -> dict:
    """Reason and field violations of a Loopwise gRPC error (client side)."""
    out: dict = {"code": err.code().name, "message": err.details(), "reason": None, "violations": []}
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is None:
        return out
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            out["reason"] = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out["violations"] = [(v.field, v.description) for v in bad.field_violations]
    return out
