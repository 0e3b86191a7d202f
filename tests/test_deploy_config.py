"""Deployment settings on plain data and loopback: the ICE server list (JSON and the older
comma-separated form), HTTPS files and the self-signed certificate, --root-path checks, and
uvicorn serving HTTPS with that certificate. The proxy and TURN paths themselves run in
tests/test_deploy_netns.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
import ssl
import stat
import threading
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from assistant.server import tls
from assistant.server.auth import authorized
from assistant.server.ice import ice_router, parse_ice_servers, server_peer_uses, to_aiortc
from assistant.server.main import _Server, check_deploy, serve, uvicorn_config
from assistant.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

TURN = {"urls": ["turn:turn.example.org:3478?transport=udp"], "username": "alice", "credential": "s3cret"}


# ---------------------------------------------------------------------------- ICE servers


def test_ice_servers_json_form():
    setting = json.dumps([TURN, {"urls": "stun:[2001:db8::1]:3478"}])
    servers = parse_ice_servers(setting)
    assert servers == [TURN, {"urls": ["stun:[2001:db8::1]:3478"]}]
    peer = to_aiortc(servers)
    assert peer[0].urls == TURN["urls"] and (peer[0].username, peer[0].credential) == ("alice", "s3cret")
    assert parse_ice_servers("") == [] and parse_ice_servers("  []  ") == []


def test_ice_servers_older_comma_form_still_works():
    servers = parse_ice_servers("stun:stun.example.org:3478, turn:alice:s3cret@turn.example.org:3478?transport=udp")
    assert servers == [{"urls": ["stun:stun.example.org:3478"]}, TURN]


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ('[{"urls": "turn:t.example.org"}]', "needs 'username' and 'credential'"),
        ('[{"urls": ["turn:t.example.org"], "username": "a", "credential": "b", "ttl": 5}]', "unknown key(s) ttl"),
        ('[{"urls": "stun:s", "credentialType": "oauth"}]', "credentialType 'oauth'"),
        ('[{"urls": "http://example.org"}]', "not a stun:, turn: or turns: URL"),
        ('[{"urls": []}]', "non-empty list"),
        ('[{"urls": "stun:s"}, "stun:x"]', "ice_servers[1]"),
        ('{"urls": "stun:s"}', "a JSON list"),
        ("[{'urls': 'stun:s'}]", "not valid JSON"),
        ("http://example.org", "not a STUN/TURN URL"),
        ('[{"urls": "stuns:s.example.org"}]', "not a stun:, turn: or turns: URL"),
    ],
)
def test_ice_servers_refused_with_the_reason(setting, says):
    with pytest.raises(ValueError) as err:
        parse_ice_servers(setting)
    assert says in str(err.value)
    # The command line refuses it before loading a model, naming the flag.
    assert check_deploy(Settings(ice_servers=setting)).startswith("--ice-servers: ")


def test_server_peer_uses_one_stun_and_one_turn_url():
    servers = parse_ice_servers(
        json.dumps(
            [
                {"urls": ["stun:a.example.org", "stun:b.example.org"]},
                {"urls": ["turns:t.example.org:5349?transport=udp", "turn:t.example.org?transport=tcp"], **_creds()},
                TURN,
            ]
        )
    )
    used, ignored = server_peer_uses(servers)
    assert used == ["stun:a.example.org", "turn:t.example.org?transport=tcp"]
    assert ignored == ["stun:b.example.org", "turns:t.example.org:5349?transport=udp", TURN["urls"][0]]


def _creds() -> dict:
    return {"username": "u", "credential": "p"}


def test_ice_servers_endpoint_needs_the_key_when_the_server_has_one():
    servers = parse_ice_servers(json.dumps([TURN]))
    for key, header, status in (("", None, 200), ("k", None, 401), ("k", "Bearer k", 200)):
        settings = Settings(api_key=key)
        app = FastAPI()
        app.include_router(ice_router(servers, lambda request, s=settings: authorized(s, request.headers)))
        reply = TestClient(app).get("/v1/realtime/ice_servers", headers={"Authorization": header} if header else {})
        assert reply.status_code == status, (key, header, reply.text)
        if status == 200:
            assert reply.json() == {"ice_servers": [TURN]}
            assert reply.headers["cache-control"] == "no-store"
        else:
            assert reply.json()["error"]["code"] == "invalid_api_key"


# ---------------------------------------------------------------------------- HTTPS and --root-path


def test_tls_and_root_path_settings_are_checked(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    assert check_deploy(Settings()) is None
    assert "drop --ssl-self-signed" in check_deploy(Settings(ssl_self_signed=True, ssl_certfile=str(cert)))
    assert "needs --ssl-certfile" in check_deploy(Settings(ssl_keyfile=str(cert)))
    assert "no such file" in check_deploy(Settings(ssl_certfile=str(tmp_path / "missing.pem")))
    assert check_deploy(Settings(ssl_certfile=str(cert))) is None
    for bad in ("assistant", "/assistant/"):
        assert "--root-path" in check_deploy(Settings(root_path=bad))
    assert check_deploy(Settings(root_path="/a/b")) is None


def test_serve_refuses_before_loading_a_model(capsys):
    assert serve(Settings(root_path="oops", model="/nonexistent")) == 2
    assert "--root-path 'oops'" in capsys.readouterr().err


def test_self_signed_certificate_names_this_host_and_is_cached(tmp_path):
    names = tls.host_names("10.9.8.7")
    assert "localhost" in names[0] and socket.gethostname().lower() in names[0]
    assert {"127.0.0.1", "::1", "10.9.8.7"} <= set(names[1])
    first = tls.self_signed(tmp_path, names)
    cert = x509.load_pem_x509_certificate(open(first.certfile, "rb").read())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == set(names[0])
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == set(names[1])
    assert stat.S_IMODE((tmp_path / tls.KEY_NAME).stat().st_mode) == 0o600
    der = cert.public_bytes(serialization.Encoding.DER)
    assert first.fingerprint == ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    # Reused while it covers the names; remade when the host gains one.
    assert tls.self_signed(tmp_path, names).fingerprint == first.fingerprint
    assert tls.self_signed(tmp_path, (names[0], [*names[1], "10.1.1.1"])).fingerprint != first.fingerprint


def test_the_tested_nginx_configuration_is_the_one_in_the_docs():
    conf = (ROOT / "docs" / "nginx-assistant.conf").read_text()
    assert conf in (ROOT / "docs" / "deploy.md").read_text()


@pytest.mark.parametrize("source", ["self_signed", "files"])
def test_uvicorn_serves_https(tmp_path, capsys, source):
    app = FastAPI()

    @app.get("/health")
    async def health(request: Request) -> dict:
        return {"root_path": request.scope.get("root_path")}

    if source == "self_signed":
        settings = Settings(ssl_self_signed=True, cache_dir=str(tmp_path), root_path="/assistant")
        certfile = tmp_path / "tls" / tls.CERT_NAME
    else:  # a certificate from elsewhere, as --ssl-certfile/--ssl-keyfile
        made = tls.self_signed(tmp_path / "own", (["localhost"], ["127.0.0.1"]))
        settings = Settings(ssl_certfile=made.certfile, ssl_keyfile=made.keyfile, root_path="/assistant")
        certfile = made.certfile
    settings = dataclasses.replace(settings, host="127.0.0.1", port=0)
    server = _Server(uvicorn_config(app, settings))
    ready = threading.Event()
    server.on_ready = lambda url: ready.set()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert ready.wait(30)
        printed = capsys.readouterr().out
        assert server.url.startswith("https://127.0.0.1:")
        assert "served by the proxy under /assistant/" in printed
        # A client that trusts exactly this certificate; plain verification, host name checked.
        context = ssl.create_default_context(cafile=str(certfile))
        with urllib.request.urlopen(server.url + "/health", context=context, timeout=10) as reply:
            assert json.load(reply) == {"root_path": "/assistant"}
        # What the browser shows as the certificate's SHA-256 is the fingerprint printed.
        with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as sock:
            with context.wrap_socket(sock, server_hostname="localhost") as tls_sock:
                der = tls_sock.getpeercert(binary_form=True)
        if source == "self_signed":
            fingerprint = printed.split("SHA-256 fingerprint ")[1].split()[0]
            assert fingerprint == ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
        else:
            assert "fingerprint" not in printed
    finally:
        server.should_exit = True
        thread.join(10)
