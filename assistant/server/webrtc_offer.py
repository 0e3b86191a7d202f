"""WebRTC signalling input, sans-I/O: the body of `POST /v1/realtime/calls` -> a vetted
SDP offer (and the optional session config), or an `OfferError` carrying the HTTP status.

Two body forms are accepted, as OpenAI's calls endpoint does:
- `Content-Type: application/sdp`, the offer itself;
- `multipart/form-data` with a `sdp` part and an optional `session` part (JSON, the
  same object as a `session.update`'s `session`).

The offer is checked before aiortc sees it. aiortc's parser is lenient (it parses
"garbage" into an empty description) and raises assorted exceptions deeper down, so
hostile input is bounded here: size, encoding, line count and length, and the shape
aiortc will need (ICE credentials and a DTLS fingerprint, an audio or data section).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from aiortc import RTCIceServer
from aiortc.sdp import SessionDescription

# A browser offer with audio, video and a data channel is 4-8 KiB; 64 KiB leaves room for
# many candidates and still bounds what one request can make us parse.
MAX_OFFER_BYTES = 64 * 1024
MAX_BODY_BYTES = 2 * MAX_OFFER_BYTES  # multipart: the offer, a session object, the framing
MAX_SDP_LINES = 1000
MAX_SDP_LINE_CHARS = 4096
MAX_MEDIA_SECTIONS = 8
_PRINTABLE = re.compile(r"[\t\x20-\x7e\x80-\U0010ffff]*")


class OfferError(Exception):
    """A request the calls endpoint refuses; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Offer:
    sdp: str
    session: dict[str, Any] | None  # the multipart `session` part, if given
    kinds: tuple[str, ...]  # media kinds in the offer, in order: "audio", "video", "application"


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_content_type(content_type: str | None) -> str:
    kind = media_type(content_type)
    if kind not in ("application/sdp", "multipart/form-data"):
        raise OfferError(415, "send the SDP offer as application/sdp (or multipart/form-data with an `sdp` part)")
    return kind


def parse_body(content_type: str | None, body: bytes) -> Offer:
    """The whole request body -> a vetted offer. Raises OfferError (413/415/400)."""
    kind = check_content_type(content_type)
    if len(body) > MAX_BODY_BYTES:
        raise OfferError(413, f"request body over {MAX_BODY_BYTES} bytes")
    session: dict[str, Any] | None = None
    if kind == "application/sdp":
        raw = body
    else:
        parts = _multipart(content_type or "", body)
        if "sdp" not in parts:
            raise OfferError(400, "multipart body has no `sdp` part")
        raw = parts["sdp"]
        if "session" in parts:
            session = _session_json(parts["session"])
    sdp, kinds = check_sdp(raw)
    return Offer(sdp, session, kinds)


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    """Form fields of a multipart/form-data body by name (the stdlib email parser: no extra
    dependency, and the body is already size-capped)."""
    if "boundary=" not in content_type:
        raise OfferError(400, "multipart/form-data without a boundary")
    header = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message: Message = BytesParser(policy=HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise OfferError(400, "malformed multipart body")
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes) and name not in fields:
            fields[name] = payload
    return fields


def _session_json(raw: bytes) -> dict[str, Any]:
    try:
        session = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OfferError(400, f"`session` part is not JSON: {exc}") from None
    if not isinstance(session, dict):
        raise OfferError(400, "`session` part must be a JSON object")
    return session


def check_sdp(raw: bytes) -> tuple[str, tuple[str, ...]]:
    """Bytes -> (offer text with CRLF line ends, media kinds); OfferError(400/413) if the
    offer is oversized, not text, or not something aiortc can answer."""
    if len(raw) > MAX_OFFER_BYTES:
        raise OfferError(413, f"SDP offer over {MAX_OFFER_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise OfferError(400, "SDP offer is not UTF-8 text") from None
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    if not lines or lines[0] != "v=0":
        raise OfferError(400, "SDP offer must start with v=0")
    if len(lines) > MAX_SDP_LINES:
        raise OfferError(400, f"SDP offer has over {MAX_SDP_LINES} lines")
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_SDP_LINE_CHARS or not _PRINTABLE.fullmatch(line):
            raise OfferError(400, f"SDP line {number} is too long or has control characters")
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise OfferError(400, f"SDP line {number} is not `x=value`")
    text = "\r\n".join(lines) + "\r\n"
    try:
        description = SessionDescription.parse(text)
    except Exception as exc:  # aiortc raises ValueError, IndexError, KeyError... on bad fields
        raise OfferError(400, f"SDP offer does not parse: {type(exc).__name__}") from None
    return text, _check_media(description)


def _check_media(description: SessionDescription) -> tuple[str, ...]:
    media = description.media
    if not media:
        raise OfferError(400, "SDP offer has no media section")
    if len(media) > MAX_MEDIA_SECTIONS:
        raise OfferError(400, f"SDP offer has over {MAX_MEDIA_SECTIONS} media sections")
    kinds = tuple(m.kind for m in media)
    if "audio" not in kinds and "application" not in kinds:
        raise OfferError(400, "SDP offer has neither audio nor a data channel")
    for index, m in enumerate(media):
        if m.kind not in ("audio", "video", "application"):
            raise OfferError(400, f"media section {index} has unsupported kind {m.kind!r}")
        if not (m.ice.usernameFragment and m.ice.password):
            raise OfferError(400, f"media section {index} has no ICE credentials (a=ice-ufrag, a=ice-pwd)")
        if not m.dtls or not m.dtls.fingerprints:
            raise OfferError(400, f"media section {index} has no DTLS fingerprint")
        if m.kind == "audio" and not m.rtp.codecs:
            raise OfferError(400, f"audio section {index} offers no codec")
    return kinds


def ice_servers(setting: str) -> list[RTCIceServer]:
    """`--ice-servers` -> aiortc ICE servers: the JSON list (or the older comma-separated
    URLs), validated by `ice.parse_ice_servers`. Empty -> [] (no STUN/TURN at all: aiortc's
    default would otherwise contact a public STUN server)."""
    from .ice import parse_ice_servers, to_aiortc

    return to_aiortc(parse_ice_servers(setting))
