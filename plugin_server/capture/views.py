"""The capture endpoints and the minimal ``/decide/``, ``/flags/`` and remote config answers.

One request: read the body (at most ``CAPTURE_MAX_BODY_BYTES``), decode it,
find the token and its team (cached: no database query once warm), check
and build every event, queue them all in one go, and only then answer
``{"status": 1}``. Refusals carry PostHog's error body (:mod:`.errors`).
Browsers get PostHog's CORS headers when they send an ``Origin``; preflight
``OPTIONS`` requests are answered.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from plugin_server.capture import errors
from plugin_server.capture.batch import build_events, find_sent_at, find_token
from plugin_server.capture.client_ip import client_ip
from plugin_server.capture.decode import Payload, RawRequest, decode_request
from plugin_server.capture.errors import CaptureError
from plugin_server.capture.queue import QueueUnavailable, queue_events
from plugin_server.capture.teams import TeamCache, TeamInfo, split_test_token
from plugin_server.config import get_config
from plugin_server.metrics import CAPTURE_QUEUE_UNAVAILABLE, CAPTURE_REQUEST_TIME, CAPTURE_REQUESTS_REJECTED, get_metrics

logger = logging.getLogger(__name__)

ALLOWED_METHODS = ("GET", "POST")
SUPPORTED_COMPRESSION = ["gzip", "gzip-js", "lz64"]

_team_cache: TeamCache | None = None
_team_cache_lock = threading.Lock()


def team_cache() -> TeamCache:
    """This process's token → team cache."""
    global _team_cache
    if _team_cache is None:
        with _team_cache_lock:
            if _team_cache is None:
                _team_cache = TeamCache(get_config().capture_token_cache_ttl)
    return _team_cache


@receiver(setting_changed)
def _drop_team_cache(setting: str, **kwargs: Any) -> None:
    # A new TTL (override_settings in tests) takes a new cache.
    global _team_cache
    if setting == "CAPTURE_TOKEN_CACHE_TTL":
        with _team_cache_lock:
            _team_cache = None


def with_cors(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """PostHog's CORS answer: the caller's origin, with credentials."""
    origin = request.headers.get("Origin")
    if not origin:
        return response
    parts = urlsplit(origin)
    response["Access-Control-Allow-Origin"] = f"{parts.scheme}://{parts.netloc}"
    response["Access-Control-Allow-Credentials"] = "true"
    response["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response["Access-Control-Allow-Headers"] = request.headers.get("Access-Control-Request-Headers") or "X-Requested-With, Content-Type"
    response["Access-Control-Max-Age"] = "3600"
    return response


def _refuse(error: CaptureError) -> HttpResponse:
    get_metrics().incr(CAPTURE_REQUESTS_REJECTED, tags={"code": error.code})
    response = JsonResponse(error.body(), status=error.status)
    if error.status == 503:
        response["Retry-After"] = "5"
    return response


def read_request(request: HttpRequest, max_bytes: int) -> RawRequest:
    """The request as decoding sees it; a body over ``max_bytes`` is refused unread."""
    body = b""
    if request.method == "POST":
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > max_bytes:
            raise errors.too_large(max_bytes)
        body = request.read(max_bytes + 1)
        if len(body) > max_bytes:
            raise errors.too_large(max_bytes)
    return RawRequest(
        method=request.method or "GET",
        query=request.GET,
        content_type=(request.content_type or "").lower(),
        content_encoding=request.headers.get("Content-Encoding", ""),
        body=body,
    )


def _team_of(payload: Payload, raw: RawRequest) -> tuple[TeamInfo, bool]:
    token = find_token(payload, raw.query, raw.method)
    if not token:
        raise errors.missing_api_key()
    token, test_environment = split_test_token(token)
    team = team_cache().get(token)
    if team is None:
        raise errors.invalid_api_key()
    return team, test_environment


def _preflight(request: HttpRequest) -> HttpResponse | None:
    if request.method == "OPTIONS":
        return HttpResponse(status=200)
    if request.method not in ALLOWED_METHODS:
        error = CaptureError(f"Method {request.method} not allowed.", "method_not_allowed", status=405)
        response = JsonResponse(error.body(), status=405)
        response["Allow"] = ", ".join(ALLOWED_METHODS)
        return response
    return None


def api_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A capture API view: CSRF-exempt, preflight and methods answered, CORS added, CaptureError → its answer."""

    @csrf_exempt
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            response = _preflight(request) or view(request, *args, **kwargs)
        except CaptureError as error:
            response = _refuse(error)
        return with_cors(request, response)

    return wrapper


@api_view
def capture(request: HttpRequest) -> HttpResponse:
    """``/e/``, ``/i/v0/e/``, ``/capture/``, ``/track/``, ``/batch/``, ``/engage/``, ``/s/``."""
    started = time.monotonic()
    now = datetime.now(timezone.utc)
    config = get_config()
    raw = read_request(request, config.capture_max_body_bytes)
    payload = decode_request(raw, config.capture_max_body_bytes)
    if not payload.data:
        raise errors.no_data()
    team, test_environment = _team_of(payload, raw)
    peer = client_ip(request.META.get("REMOTE_ADDR"), request.META.get("HTTP_X_FORWARDED_FOR"), config.capture_trusted_proxies)
    events = build_events(
        payload,
        path=request.path_info,
        team_id=team.id,
        ip=None if team.anonymize_ips else peer,
        site_url=request.build_absolute_uri("/")[:-1],
        now=now,
        sent_at=find_sent_at(payload, raw.query),
        test_environment=test_environment,
    )
    try:
        queue_events(events)
    except QueueUnavailable as error:
        logger.warning("capture: events not queued, answering 503: %s", error, extra={"team_id": team.id, "events": len(events)})
        get_metrics().incr(CAPTURE_QUEUE_UNAVAILABLE)
        raise errors.queue_unavailable() from error
    get_metrics().timing(CAPTURE_REQUEST_TIME, (time.monotonic() - started) * 1000)
    return JsonResponse({"status": 1})


def _client_config() -> dict[str, Any]:
    # What posthog-js reads at start: no flags, no recordings, autocapture on,
    # elements sent as the `$elements` list the pipeline stores.
    return {
        "supportedCompression": SUPPORTED_COMPRESSION,
        "autocapture_opt_out": False,
        "autocaptureExceptions": False,
        "capturePerformance": False,
        "captureDeadClicks": False,
        "heatmaps": False,
        "surveys": False,
        "sessionRecording": False,
        "elementsChainAsString": False,
        "hasFeatureFlags": False,
        "siteApps": [],
    }


def _check_token_if_any(request: HttpRequest) -> None:
    """An unknown token is refused (401); no token at all is fine for a configuration request."""
    config = get_config()
    raw = read_request(request, config.capture_max_body_bytes)
    payload = decode_request(raw, config.capture_max_body_bytes)
    if find_token(payload, raw.query, raw.method):
        _team_of(payload, raw)


@api_view
def decide(request: HttpRequest) -> HttpResponse:
    """``/decide/`` (posthog-js before ``/flags/``): configuration and no feature flags."""
    _check_token_if_any(request)
    version = request.GET.get("v", "1")
    answer = {
        **_client_config(),
        "config": {"enable_collect_everything": True},
        "editorParams": {},
        "toolbarParams": {},
        "isAuthenticated": False,
        "featureFlags": [] if version in ("", "1") else {},
        "featureFlagPayloads": {},
        "errorsWhileComputingFlags": False,
    }
    return JsonResponse(answer)


@api_view
def flags(request: HttpRequest) -> HttpResponse:
    """``/flags/`` (today's SDKs): no feature flags, and the client configuration when asked."""
    _check_token_if_any(request)
    answer: dict[str, Any] = {
        "flags": {},
        "featureFlags": {},
        "featureFlagPayloads": {},
        "errorsWhileComputingFlags": False,
        "quotaLimited": [],
        "requestId": str(uuid.uuid4()),
    }
    if request.GET.get("config") == "true":
        answer.update(_client_config())
    return JsonResponse(answer)


@api_view
def remote_config(request: HttpRequest, token: str) -> HttpResponse:
    """``/array/<token>/config``: posthog-js' remote configuration, as JSON."""
    return JsonResponse({"token": token, **_client_config()})


@api_view
def remote_config_js(request: HttpRequest, token: str) -> HttpResponse:
    """``/array/<token>/config.js``: the same, as the script posthog-js' loader includes."""
    body = (
        "(function(){window._POSTHOG_REMOTE_CONFIG=window._POSTHOG_REMOTE_CONFIG||{};"
        f"window._POSTHOG_REMOTE_CONFIG[{json.dumps(token)}]={{config:{json.dumps({'token': token, **_client_config()})},siteApps:[]}};}})();"
    )
    return HttpResponse(body, content_type="application/javascript")
