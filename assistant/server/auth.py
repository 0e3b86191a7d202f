"""Who may use the server: the API key, short-lived client secrets, and the Origin check
on websocket upgrades.

- API key (`--api-key` / ASSISTANT_API_KEY): when set, every endpoint except `/` (the
  page and its assets) and `/health` needs it, as `Authorization: Bearer KEY` (the openai
  SDK) or, on a websocket, as the `openai-insecure-api-key.KEY` subprotocol (browsers
  cannot set headers on a websocket; OpenAI's own browser convention).
- Client secrets (`POST /v1/realtime/client_secrets`, OpenAI's convention): a server-side
  holder of the key mints an `ek_...` value for a browser, accepted like the key until
  it expires. Only their SHA-256 is kept, so a memory dump holds no usable secret.
- Origin: a browser page from another site must not drive a user's local server (a
  cross-site websocket needs no CORS preflight). Upgrades carrying an Origin are allowed
  from the same host, or from `allowed_origins`; others get 403. Clients that send no
  Origin (SDKs, scripts) are not browsers and pass. On a loopback bind "same host" must
  also be a loopback name, so a DNS-rebound name (evil.example -> 127.0.0.1) does not
  count as same-host.

Secrets never reach a log: nothing here logs values, and `RedactSecrets` rewrites log
records of the loggers that see request headers (uvicorn's websocket implementation
logs every handshake header at DEBUG, the key subprotocol and Authorization included).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets as _secrets
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..realtime.session import RealtimeSession
from ..settings import Settings

SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
# OpenAI accepts expires_after.seconds between 10 and 7200.
MIN_SECRET_TTL_S = 10
MAX_SECRET_TTL_S = 7200
MAX_LIVE_SECRETS = 4096  # a bound on the store; past it minting answers 429 until some expire
MAX_BODY_BYTES = 64 * 1024


class ClientSecrets:
    """Live client secrets: SHA-256 of the value -> (expiry in unix seconds, the session
    object sessions opened with it start with)."""

    def __init__(self, max_live: int = MAX_LIVE_SECRETS, clock: Callable[[], float] = time.time) -> None:
        self.max_live, self.clock = max_live, clock
        self._live: dict[bytes, tuple[float, dict | None]] = {}

    @staticmethod
    def _digest(value: str) -> bytes:
        return hashlib.sha256(value.encode()).digest()

    def _prune(self) -> None:
        t = self.clock()
        for key in [k for k, (exp, _) in self._live.items() if exp <= t]:
            del self._live[key]

    def mint(self, ttl_s: int, session: dict | None = None) -> tuple[str, int] | None:
        """A new secret and its expiry (unix seconds), or None when the store is full."""
        self._prune()
        if len(self._live) >= self.max_live:
            return None
        value = "ek_" + _secrets.token_urlsafe(32)
        expires_at = int(self.clock()) + ttl_s
        self._live[self._digest(value)] = (expires_at, session)
        return value, expires_at

    def valid(self, value: str) -> bool:
        if not value.startswith("ek_"):
            return False
        entry = self._live.get(self._digest(value))
        return entry is not None and self.clock() < entry[0]

    def session_of(self, headers: Mapping[str, str]) -> dict | None:
        """The session object of the live client secret a request presents, if any."""
        for value in _presented(headers):
            if self.valid(value):
                return self._live[self._digest(value)][1]
        return None

    def __len__(self) -> int:
        return len(self._live)


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname other than localhost: assume it is reachable from elsewhere


_SECRET_PATTERNS = (
    re.compile(r"(?i)(authorization[\"']?\s*[:=,]\s*[\"']?)[^\r\n\"',)]+"),
    re.compile(r"(openai-insecure-api-key\.)[^\s,;\"')\]]+"),
    re.compile(r"\b(ek_)[A-Za-z0-9_\-]+"),
)
# Loggers whose records can carry request headers: uvicorn's (its websocket protocols
# log the handshake through "uvicorn.error"), websockets' own, and ours.
REDACTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "websockets", "websockets.server", "assistant")


class RedactSecrets(logging.Filter):
    """Masks credentials in log records: the configured key wherever it appears, and
    whatever follows `authorization:`, the key subprotocol prefix or `ek_`."""

    def __init__(self, api_key: str = "") -> None:
        super().__init__()
        self.api_key = api_key

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report
            return True
        clean = text.replace(self.api_key, "***") if self.api_key else text
        for pattern in _SECRET_PATTERNS:
            clean = pattern.sub(r"\1***", clean)
        if clean != text:
            record.msg, record.args = clean, None
        return True


def install_log_redaction(api_key: str) -> None:
    """Attach one `RedactSecrets` to each logger in `REDACTED_LOGGERS` and each handler
    of the root logger (idempotent; the key is updated)."""
    targets: list[logging.Filterer] = [logging.getLogger(name) for name in REDACTED_LOGGERS]
    targets += logging.getLogger().handlers
    for target in targets:
        existing = [f for f in target.filters if isinstance(f, RedactSecrets)]
        if existing:
            existing[0].api_key = api_key
        else:
            target.addFilter(RedactSecrets(api_key))


def _presented(headers: Mapping[str, str]) -> list[str]:
    """The credentials a request carries: the bearer token and any key subprotocols."""
    out = []
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        out.append(auth[7:].strip())
    for proto in headers.get("sec-websocket-protocol", "").split(","):
        proto = proto.strip()
        if proto.startswith(SUBPROTOCOL_PREFIX):
            out.append(proto[len(SUBPROTOCOL_PREFIX) :])
    return out


def authorized(
    settings: Settings, headers: Mapping[str, str], query=None, client_secrets: ClientSecrets | None = None
) -> bool:
    """Whether the request may proceed: no key configured, the key (constant-time), or a
    live client secret. `query` is accepted and ignored: keys in URLs end up in logs."""
    if not settings.api_key:
        return True
    expected = settings.api_key.encode()
    for value in _presented(headers):
        if hmac.compare_digest(value.encode(), expected):
            return True
        if client_secrets is not None and client_secrets.valid(value):
            return True
    return False


def _hostname(netloc: str) -> str:
    try:
        return urlsplit("//" + netloc).hostname or ""
    except ValueError:
        return ""


def origin_allowed(settings: Settings, headers: Mapping[str, str]) -> bool:
    origin = headers.get("origin")
    if origin is None:
        return True  # not a browser: browsers always send Origin on websocket upgrades
    origin = origin.strip().rstrip("/").lower()
    allowed = {o.strip().rstrip("/").lower() for o in settings.allowed_origins.split(",") if o.strip()}
    if "*" in allowed or origin in allowed:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    host = headers.get("host", "").strip().lower()
    if parts.scheme not in ("http", "https") or not host or parts.netloc != host:
        return False
    if is_loopback(settings.host):  # DNS rebinding: a foreign name pointed at 127.0.0.1
        return is_loopback(_hostname(parts.netloc))
    return True


def error_json(status: int, code: str, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "code": code, "message": message}}, status_code=status)


def unauthorized() -> JSONResponse:
    return error_json(401, "invalid_api_key", "a valid API key or client secret is required")


def client_secrets_router(settings: Settings, store: ClientSecrets, model: Callable[[], str]) -> APIRouter:
    """`POST /v1/realtime/client_secrets`: body (optional, JSON) `{"expires_after":
    {"anchor": "created_at", "seconds": N}, "session": {...}}`; answers `{"value":
    "ek_...", "expires_at": unix_s, "session": {...}}`. The session object is checked as a
    `session.update` would be (a refused or invalid field: 400 naming it), applied to every
    session opened with the secret (websocket or call) before its session.created, and
    echoed as it will be in force."""
    router = APIRouter()

    @router.post("/v1/realtime/client_secrets")
    async def mint(request: Request) -> Response:
        if not authorized(settings, request.headers, client_secrets=None):  # a secret cannot mint secrets
            return unauthorized()
        try:
            body = await _json_body(request)
            ttl_s = _ttl(body.get("expires_after"), settings.client_secret_ttl_s)
            session = body.get("session") or {"type": "realtime"}
            if not isinstance(session, dict):
                raise _BadRequest(400, "invalid_value", "session must be an object")
        except _BadRequest as exc:
            return error_json(exc.status, exc.code, exc.message)
        probe = RealtimeSession(settings, model=model())
        error = probe.configure(session)
        if error is not None:
            return JSONResponse({"error": error}, status_code=400)
        minted = store.mint(ttl_s, session)
        if minted is None:
            return error_json(429, "rate_limit_exceeded", "too many live client secrets; try again later")
        value, expires_at = minted
        in_force = {k: v for k, v in probe.session_json().items() if k != "id"}
        return JSONResponse({"value": value, "expires_at": expires_at, "session": in_force})

    return router


class _BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


async def _json_body(request: Request) -> dict:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _BadRequest(413, "payload_too_large", f"request body over {MAX_BODY_BYTES} bytes")
    if not body.strip():
        return {}
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json":
        raise _BadRequest(415, "unsupported_media_type", "send the request body as application/json")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest(400, "invalid_json", "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _BadRequest(400, "invalid_json", "the request body must be a JSON object")
    return data


def _ttl(expires_after, default_s: int) -> int:
    if expires_after is None:
        return default_s
    if not isinstance(expires_after, dict) or expires_after.get("anchor", "created_at") != "created_at":
        raise _BadRequest(400, "invalid_value", "expires_after must be {anchor: 'created_at', seconds: N}")
    seconds = expires_after.get("seconds", default_s)
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not MIN_SECRET_TTL_S <= seconds <= MAX_SECRET_TTL_S:
        raise _BadRequest(
            400,
            "invalid_value",
            f"expires_after.seconds must be an integer in [{MIN_SECRET_TTL_S}, {MAX_SECRET_TTL_S}]",
        )
    return seconds
