"""Signalling input of POST /v1/realtime/calls: content types, multipart, hostile SDP, ICE server settings."""

from __future__ import annotations

import json

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from hypothesis import given, settings
from hypothesis import strategies as st

from assistant.server.webrtc_offer import (
    MAX_OFFER_BYTES,
    OfferError,
    check_sdp,
    ice_servers,
    parse_body,
)


async def make_offer(*, audio=True, video=False, channel=True) -> str:
    """A real aiortc offer (createOffer gathers no candidates, so nothing touches the network)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        if audio:
            pc.addTrack(AudioStreamTrack())
        if video:
            pc.addTrack(VideoStreamTrack())
        if channel:
            pc.createDataChannel("oai-events")
        return (await pc.createOffer()).sdp
    finally:
        await pc.close()


def status_of(content_type, body) -> int:
    with pytest.raises(OfferError) as info:
        parse_body(content_type, body)
    return info.value.status


async def test_application_sdp_offer_is_accepted_with_its_media_kinds():
    sdp = await make_offer(video=True)
    offer = parse_body("application/sdp; charset=utf-8", sdp.encode())
    assert offer.kinds == ("audio", "video", "application")
    assert offer.session is None and offer.sdp.startswith("v=0\r\n")


async def test_lf_line_ends_are_normalised():
    sdp = (await make_offer()).replace("\r\n", "\n")
    assert "\r\n" in parse_body("application/sdp", sdp.encode()).sdp


async def test_multipart_with_sdp_and_session():
    sdp = await make_offer()
    session = {"type": "realtime", "instructions": "be brief"}
    boundary = "XyZ123"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="sdp"\r\n\r\n{sdp}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="session"\r\nContent-Type: application/json\r\n\r\n'
        f"{json.dumps(session)}\r\n--{boundary}--\r\n"
    ).encode()
    offer = parse_body(f"multipart/form-data; boundary={boundary}", body)
    assert offer.session == session and offer.kinds == ("audio", "application")


async def test_multipart_errors():
    sdp = await make_offer()
    assert status_of("multipart/form-data", b"x") == 400  # no boundary
    body = f'--b\r\nContent-Disposition: form-data; name="other"\r\n\r\n{sdp}\r\n--b--\r\n'.encode()
    assert status_of("multipart/form-data; boundary=b", body) == 400
    body = (
        f'--b\r\nContent-Disposition: form-data; name="sdp"\r\n\r\n{sdp}\r\n'
        '--b\r\nContent-Disposition: form-data; name="session"\r\n\r\n[1, 2\r\n--b--\r\n'
    ).encode()
    assert status_of("multipart/form-data; boundary=b", body) == 400


@pytest.mark.parametrize("content_type", [None, "", "application/json", "text/plain", "application/sdpx"])
async def test_wrong_content_types_are_415(content_type):
    assert status_of(content_type, (await make_offer()).encode()) == 415


async def test_size_caps_are_413():
    sdp = await make_offer()
    padded = sdp + "a=x-pad:" + "y" * 3000 + "\r\n"
    assert status_of("application/sdp", (padded * (MAX_OFFER_BYTES // len(padded) + 1)).encode()) == 413


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: "",
        lambda s: "garbage",
        lambda s: s.replace("v=0", "v=1"),
        lambda s: s.replace("a=ice-ufrag", "a=ice-nope"),
        lambda s: s.replace("a=fingerprint", "a=fingerprimt"),
        lambda s: s.split("m=")[0],  # no media
        lambda s: s.replace("m=audio 9 UDP/TLS/RTP/SAVPF 96 9 0 8", "m=audio 9 UDP/TLS/RTP/SAVPF"),
        lambda s: s.replace("a=mid:0", "a=mid:\x00"),
        lambda s: s.replace("a=mid:0", "a=mid:0" + "z" * 5000),
        lambda s: s + "not an sdp line\r\n",
        lambda s: s + "a=x\r\n" * 1200,
        lambda s: s.replace("m=audio 9", "m=audio NaN"),
        lambda s: s.replace("a=rtpmap:96 opus/48000/2", "a=rtpmap:96 opus/fast/2"),
        lambda s: s.replace("m=application", "m=text"),
    ],
)
async def test_hostile_or_broken_offers_are_400(mutate):
    sdp = mutate(await make_offer())
    assert status_of("application/sdp", sdp.encode("utf-8", "surrogatepass")) == 400


def test_non_utf8_is_400():
    assert status_of("application/sdp", b"v=0\r\n\xff\xfe\r\n") == 400


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048) | st.text(max_size=2048).map(lambda t: ("v=0\r\n" + t).encode("utf-8", "replace")))
def test_fuzz_check_sdp_raises_only_offer_errors(raw):
    try:
        check_sdp(raw)
    except OfferError as exc:
        assert exc.status in (400, 413)


def test_ice_servers_setting():
    assert ice_servers("") == []
    servers = ice_servers("stun:stun.example.org:3478, turn:alice:s3cret@turn.example.org:3478?transport=udp")
    assert servers[0].urls == ["stun:stun.example.org:3478"] and servers[0].username is None
    assert servers[1].urls == ["turn:turn.example.org:3478?transport=udp"]
    assert (servers[1].username, servers[1].credential) == ("alice", "s3cret")
    with pytest.raises(ValueError):
        ice_servers("http://example.org")
