"""The error answers of PostHog's capture endpoint (2021), as one exception.

PostHog answered every refused request with a JSON body shaped like its REST
API's errors: ``{"type", "code", "detail", "attr"}`` and status 400 (bad
input) or 401 (no or unknown project key). The port adds 413 for a body over
``CAPTURE_MAX_BODY_BYTES`` and 503 when the queue cannot be reached (the SDKs
send again on a 5xx; PostHog itself answered an unhandled 500 then).
"""

from __future__ import annotations

from typing import Literal

ErrorType = Literal["validation_error", "authentication_error", "server_error"]


class CaptureError(Exception):
    """A request refused with ``status`` and PostHog's error body."""

    def __init__(
        self,
        detail: str,
        code: str,
        *,
        status: int = 400,
        type: ErrorType = "validation_error",  # noqa: A002 -- the name of the field in the answer
        attr: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.status = status
        self.type = type
        self.attr = attr

    def body(self) -> dict[str, str | None]:
        return {"type": self.type, "code": self.code, "detail": self.detail, "attr": self.attr}


def invalid_payload(reason: str) -> CaptureError:
    return CaptureError(f"Malformed request data: {reason}", "invalid_payload")


NO_DATA = "No data found. Make sure to use a POST request when sending the payload in the body of the request."
MISSING_API_KEY = "API key not provided. You can find your project API key in PostHog project settings."
INVALID_API_KEY = "Project API key invalid. You can find your project API key in PostHog project settings."
MISSING_DISTINCT_ID = "You need to set user distinct ID field `distinct_id`."
EMPTY_DISTINCT_ID = "Distinct ID field `distinct_id` must have a non-empty value."
MISSING_EVENT = "You need to set user event name, field `event`."


def no_data() -> CaptureError:
    return CaptureError(NO_DATA, "no_data")


def missing_api_key() -> CaptureError:
    return CaptureError(MISSING_API_KEY, "missing_api_key", status=401, type="authentication_error")


def invalid_api_key() -> CaptureError:
    return CaptureError(INVALID_API_KEY, "invalid_api_key", status=401, type="authentication_error")


def too_large(limit: int) -> CaptureError:
    return CaptureError(f"Request body larger than {limit} bytes.", "payload_too_large", status=413)


def queue_unavailable() -> CaptureError:
    return CaptureError(
        "The events could not be queued; nothing was accepted. Send them again.",
        "queue_unavailable",
        status=503,
        type="server_error",
    )
