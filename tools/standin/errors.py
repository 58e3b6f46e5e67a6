"""The errors the stand-in answers with, as TF Serving answers them.

An error is a TF error code (tensorflow/core/protobuf/error_codes.proto, the same numbers
as gRPC's status codes) and a message. Over gRPC the code is the call's status; over REST
model_servers/http_server.cc ToHTTPStatusCode turns it into an HTTP status and
http_rest_api_handler.cc writes the message as `{"error": "..."}`.
"""

from __future__ import annotations

import grpc

# TF error code number -> name, e.g. 5 -> "NOT_FOUND" (error_codes.proto = grpc's codes).
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
GRPC_CODES = {code.name: code for code in grpc.StatusCode}

# http_server.cc ToHTTPStatusCode, by code name.
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


class ApiError(Exception):
    """An error TF Serving would return: its code name ("NOT_FOUND") and message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        if code not in HTTP_STATUS or code == "OK":
            raise ValueError(f"not an error code: {code}")
        self.code, self.message = code, message

    @property
    def status(self) -> int:
        """The HTTP status the REST API answers this error with."""
        return HTTP_STATUS[self.code]

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return GRPC_CODES[self.code]


def invalid(message: str) -> ApiError:
    return ApiError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ApiError:
    return ApiError("NOT_FOUND", message)


def failed_precondition(message: str) -> ApiError:
    return ApiError("FAILED_PRECONDITION", message)
