"""ICE servers (STUN and TURN) for the server's aiortc peers and for the page, from one setting.

The setting (`--ice-servers`, ASSISTANT_ICE_SERVERS) is the WebRTC `RTCIceServer` list as
JSON, the same shape a browser's `RTCPeerConnection` takes (W3C WebRTC 1.0, 4.2.4):

    [{"urls": ["turn:turn.example.org:3478?transport=udp", "turn:turn.example.org:3478?transport=tcp"],
      "username": "assistant", "credential": "s3cret"},
     {"urls": "stun:turn.example.org:3478"}]

The older form, comma-separated URLs with TURN credentials in the user part
(`turn:USER:PASSWORD@host:3478`), is still read and turned into the same list.
Anything else is refused with a message naming the entry: a key we do not know (say a
`credentialType` other than "password") is not silently dropped.

aiortc uses the first STUN URL and the first TURN URL it can (`connection_kwargs` in
aiortc/rtcicetransport.py) and ignores the rest; `server_peer_uses` says which, and the
server logs it, so a list written for browsers says plainly what the server's own peer takes.
The page gets the whole list from `GET /v1/realtime/ice_servers`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

SCHEMES = ("stun", "turn", "turns")  # "stuns" is in RFC 7064 but neither browsers nor aiortc speak it
_KEYS = {"urls", "username", "credential", "credentialType"}
# RFC 7064/7065 URIs: scheme:host[:port][?transport=udp|tcp]; host may be [IPv6].
_URL = re.compile(
    r"(?P<scheme>stun|turns?):(?P<host>\[[0-9a-fA-F:.]+\]|[^\[\]:?@/\s]+)(:\d{1,5})?(\?transport=(udp|tcp))?"
)


def parse_ice_servers(setting: str) -> list[dict[str, Any]]:
    """The setting as a list of RTCIceServer dicts, each with `urls` a list. '' -> [] (no
    STUN/TURN at all; aiortc's default would otherwise contact a public STUN server).
    Raises ValueError naming what is wrong."""
    text = setting.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"ice_servers: not valid JSON: {exc}") from None
        return [_server(i, entry) for i, entry in enumerate(raw)]
    if text.startswith("{"):
        raise ValueError('ice_servers: give a JSON list of servers, [{"urls": [...], ...}], not a single object')
    return [_legacy(entry) for entry in (e.strip() for e in text.split(",")) if entry]


def _server(index: int, entry: Any) -> dict[str, Any]:
    where = f"ice_servers[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f'{where}: expected an object like {{"urls": [...], "username": ..., "credential": ...}}')
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} (known: urls, username, credential)")
    if entry.get("credentialType", "password") != "password":
        raise ValueError(f"{where}: credentialType {entry['credentialType']!r} is not supported (only 'password')")
    urls = entry.get("urls")
    urls = [urls] if isinstance(urls, str) else urls
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise ValueError(f"{where}: 'urls' must be a URL or a non-empty list of URLs")
    for url in urls:
        if not _URL.fullmatch(url):
            raise ValueError(f"{where}: not a stun:, turn: or turns: URL: {url!r}")
    out: dict[str, Any] = {"urls": list(urls)}
    for key in ("username", "credential"):
        if key in entry:
            if not isinstance(entry[key], str):
                raise ValueError(f"{where}: '{key}' must be a string")
            out[key] = entry[key]
    if any(u.startswith("turn") for u in urls) and not (out.get("username") and out.get("credential")):
        # Browsers throw InvalidAccessError on a TURN URL without both (WebRTC 1.0, 4.4.1.1 step 11).
        raise ValueError(f"{where}: a TURN server needs 'username' and 'credential'")
    return out


def _legacy(entry: str) -> dict[str, Any]:
    scheme, _, rest = entry.partition(":")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        username, _, password = credentials.partition(":")
        return _server(0, {"urls": [f"{scheme}:{host}"], "username": username, "credential": password})
    try:
        return _server(0, {"urls": [entry]})
    except ValueError:
        raise ValueError(f"ice_servers: not a STUN/TURN URL: {entry!r}") from None


def to_aiortc(servers: list[dict[str, Any]]) -> list:
    from aiortc import RTCIceServer

    return [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential")) for s in servers]


def server_peer_uses(servers: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(URLs the server's aiortc peer uses, URLs it ignores): the first STUN and the first
    TURN URL whose transport aiortc supports (turn: over udp or tcp, turns: over tcp)."""
    used: list[str] = []
    ignored: list[str] = []
    have: set[str] = set()
    for server in servers:
        for url in server["urls"]:
            kind = "stun" if url.startswith("stun") else "turn"
            transport = url.partition("?transport=")[2] or ("tcp" if url.startswith("turns") else "udp")
            usable = kind == "stun" or (url.startswith("turns") and transport == "tcp") or url.startswith("turn:")
            if usable and kind not in have:
                have.add(kind)
                used.append(url)
            else:
                ignored.append(url)
    return used, ignored


def ice_router(servers: list[dict[str, Any]], authorize) -> APIRouter:
    """`GET /v1/realtime/ice_servers`: the list for the page's RTCPeerConnection, behind the
    same authorization as the calls endpoint (it may hold TURN credentials)."""
    router = APIRouter()

    @router.get("/v1/realtime/ice_servers")
    async def get_ice_servers(request: Request) -> JSONResponse:
        if not authorize(request):
            return JSONResponse(
                {
                    "error": {
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                        "message": "a valid API key is required",
                    }
                },
                status_code=401,
            )
        return JSONResponse({"ice_servers": servers}, headers={"Cache-Control": "no-store"})

    return router
