"""The deployment paths of docs/deploy.md, inside a private network namespace: the real server
(tiny model) behind Debian's nginx running docs/nginx-assistant.conf (TLS ended at nginx, path
prefix /assistant, websocket upgrade), Debian's coturn as the TURN server the server hands out,
headless Chromium over HTTPS through the proxy, and an aiortc peer that may only use the relay.

One server, one nginx and one coturn serve every test of the module.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import ssl
import subprocess
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import browser
import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "docs" / "nginx-assistant.conf"
PREFIX = "/assistant"
TURN_PORT = 3478
TURN_USER, TURN_PASSWORD = "assistant", "relay-pass-7f3a"
# Debian's binaries; /usr/sbin is not on every user's PATH.
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"

pytestmark = [pytest.mark.netns]


def _wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def _udp_listening(port: int) -> bool:
    out = subprocess.run(["ss", "-Hlun", f"sport = :{port}"], capture_output=True, text=True).stdout
    return bool(out.strip())


def _spki_sha256_b64(cert_path: str) -> str:
    """What Chromium's --ignore-certificate-errors-spki-list takes: base64 SHA-256 of the public key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class Stack:
    def __init__(self, tmp: Path, addrs, tiny_dir: Path) -> None:
        self.tmp, self.addrs, self.tiny_dir = tmp, addrs, tiny_dir
        self.procs: list[subprocess.Popen] = []
        self.server = None
        self.turn_url = f"turn:{addrs.server_addr}:{TURN_PORT}?transport=udp"
        self.ice = [{"urls": [self.turn_url], "username": TURN_USER, "credential": TURN_PASSWORD}]
        self.base = f"https://{addrs.server_addr}{PREFIX}"

    def start(self) -> Stack:
        from assistant.server import tls

        # The certificate --ssl-self-signed would make, for the proxy's address.
        self.tls = tls.self_signed(self.tmp / "tls", (["localhost"], [self.addrs.server_addr, "127.0.0.1"]))
        self._start_coturn()
        self._start_server()
        self._start_nginx()
        return self

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process, in stop())
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        proc.log_file = log
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def _start_coturn(self) -> None:
        # Long-term credentials (RFC 8489 10.2), one static user; relays come from the server's side.
        argv = [
            TURNSERVER, "-n", "--no-cli", "--no-tls", "--no-dtls", "--simple-log", "--log-file=stdout",
            f"--listening-ip={self.addrs.server_addr}", f"--listening-port={TURN_PORT}",
            f"--relay-ip={self.addrs.server_addr}", "--min-port=49160", "--max-port=49260",
            "--lt-cred-mech", f"--user={TURN_USER}:{TURN_PASSWORD}", "--realm=assistant.test",
            f"--userdb={self.tmp / 'turndb'}", f"--pidfile={self.tmp / 'turnserver.pid'}",
        ]  # fmt: skip
        proc = self._spawn("coturn", argv)
        _wait_for(lambda: _udp_listening(TURN_PORT) or proc.poll() is not None, 20, "coturn did not start")
        assert proc.poll() is None, "coturn exited:\n" + self.log("coturn")

    def _start_server(self) -> None:
        from assistant.server.main import ServerThread
        from assistant.settings import from_sources

        settings = from_sources(
            None,
            env={},
            model=str(self.tiny_dir),
            device="cpu",
            host="127.0.0.1",
            port=0,
            root_path=PREFIX,
            ice_servers=json.dumps(self.ice),
            max_sessions=2,
            min_answer_tokens=12,
            max_answer_tokens=24,
            min_answer_frames=30,
            max_answer_frames=40,
            log_level="warning",
        )
        self.server = ServerThread(settings).start()

    def _start_nginx(self) -> None:
        """docs/nginx-assistant.conf as it stands, with its certificate paths and upstream port replaced."""
        port = self.server.url.rsplit(":", 1)[1]
        site = NGINX_CONF.read_text()
        for old, new in (
            ("/etc/ssl/assistant/fullchain.pem", self.tls.certfile),
            ("/etc/ssl/assistant/privkey.pem", self.tls.keyfile),
            ("http://127.0.0.1:8000/", f"http://127.0.0.1:{port}/"),
        ):
            assert site.count(old) == 1, old
            site = site.replace(old, new)
        (self.tmp / "assistant.conf").write_text(site)
        temp = {n: self.tmp / f"nginx-{n}" for n in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for path in temp.values():
            path.mkdir()
        # What Debian's /etc/nginx/nginx.conf gives the http block, minus what a test must not
        # touch (system logs, /run); workers stay root so they can use the test's temp dirs.
        (self.tmp / "nginx.conf").write_text(
            f"""user root;
worker_processes 1;
pid {self.tmp}/nginx.pid;
error_log {self.tmp}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {self.tmp}/assistant.conf;
}}
"""
        )
        proc = self._spawn(
            "nginx", [NGINX, "-p", str(self.tmp), "-c", str(self.tmp / "nginx.conf"), "-g", "daemon off;"]
        )

        def up() -> bool:
            if proc.poll() is not None:
                return True
            try:
                return httpx.get(self.base + "/health", verify=self.tls.certfile, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for(up, 20, "nginx did not start")
        assert proc.poll() is None, "nginx exited:\n" + self.log("nginx") + (self.tmp / "nginx-error.log").read_text()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            proc.log_file.close()

    def sessions(self) -> int:
        return httpx.get(self.base + "/health", verify=self.tls.certfile, timeout=5).json()["sessions"]

    def wait_idle(self, timeout_s: float = 15) -> None:
        _wait_for(lambda: self.sessions() == 0, timeout_s, "a session is still open")


@pytest.fixture(scope="module")
def stack(netns_addrs, tiny_dir, tmp_path_factory):
    if not (Path(NGINX).exists() and Path(TURNSERVER).exists()):
        pytest.skip("needs Debian's nginx and coturn (apt-get install nginx coturn)")
    s = Stack(tmp_path_factory.mktemp("deploy"), netns_addrs, tiny_dir)
    try:
        yield s.start()
    finally:
        s.stop()


# ---------------------------------------------------------------------------- nginx: TLS, prefix, upgrade


def test_every_endpoint_works_through_nginx_under_the_prefix(stack):
    verify = stack.tls.certfile
    with httpx.Client(verify=verify, timeout=10) as http:
        page = http.get(stack.base + "/")
        assert page.status_code == 200 and 'src="app.js"' in page.text
        # The page's ES modules, under the prefix, as JavaScript (a browser refuses any other type for a module).
        for module in sorted((ROOT / "web").glob("*.js")):
            assert http.get(stack.base + "/" + module.name).headers["content-type"].startswith("text/javascript")
        bare = http.get(stack.base, follow_redirects=False)
        assert bare.status_code == 301 and bare.headers["location"].endswith(PREFIX + "/")
        assert http.get(stack.base + "/health").json()["is_tiny"] is True
        metrics = http.get(stack.base + "/metrics")
        assert metrics.status_code == 200 and "# TYPE" in metrics.text
        assert http.get(stack.base + "/v1/realtime/ice_servers").json() == {"ice_servers": stack.ice}
        # The calls endpoint answers through the proxy (a bad offer: a real 400, not nginx's 404).
        bad = http.post(stack.base + "/v1/realtime/calls", content=b"v=0", headers={"Content-Type": "application/sdp"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_offer"
    asyncio.run(_websocket_turn(stack))


async def _websocket_turn(stack) -> None:
    """The Realtime websocket through nginx's upgrade: a text turn answered to the end."""
    import websockets

    url = stack.base.replace("https://", "wss://") + "/v1/realtime"
    context = ssl.create_default_context(cafile=stack.tls.certfile)
    async with websockets.connect(url, ssl=context, max_size=None, open_timeout=10) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.created"
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        await ws.send(json.dumps({"type": "response.create"}))
        types = []
        async with asyncio.timeout(90):
            while True:
                event = json.loads(await ws.recv())
                types.append(event["type"])
                if event["type"] == "response.done":
                    break
        assert event["response"]["status"] == "completed", event
        assert "response.output_audio.delta" in types
    stack.wait_idle()


# ---------------------------------------------------------------------------- the page in Chromium


INBOUND_AUDIO = """async () => {
  let out = null;
  (await demo.pc().getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") out = { packets: s.packetsReceived, energy: s.totalAudioEnergy || 0 };
  });
  return out;
}"""


def test_chromium_over_https_through_nginx_with_a_prefix_completes_a_spoken_turn(stack, tmp_path):
    mic = browser.mic_wav(tmp_path / "mic.wav", "hello_en_us.wav", 12.0)
    # Trust exactly the proxy's certificate, as a user who compared its fingerprint would.
    pin = f"--ignore-certificate-errors-spki-list={_spki_sha256_b64(stack.tls.certfile)}"
    with browser.chromium(mic, extra_args=(pin,)) as page:
        errors = browser.console_errors(page)
        foreign = browser.watch_requests(page, stack.base + "/")
        scripts = browser.scripts_loaded(page)
        t0 = time.monotonic()
        page.goto(stack.base + "/")
        page.wait_for_selector("#tiny-banner:not([hidden])", timeout=10_000)
        browser.assert_every_module_loaded(scripts, ROOT / "web")  # relative imports resolve under the prefix
        assert page.evaluate("window.isSecureContext") is True
        assert page.locator("#insecure").is_hidden()
        page.click("#connect")
        page.wait_for_selector('#conn-state[data-state="connected"]', timeout=30_000)
        # The page's peer got the server's ICE list (TURN with its credentials).
        config = page.evaluate("demo.pc().getConfiguration().iceServers")
        assert [s["urls"] for s in config] == [[stack.turn_url]] and config[0]["username"] == TURN_USER
        page.wait_for_function(
            "demo.turns().some(t => t.status === 'completed' && t.ttfpMs !== null)"
            " && demo.events().includes('output_audio_buffer.stopped')",
            timeout=90_000,
        )
        turn_s = time.monotonic() - t0
        events = page.evaluate("demo.events()")
        for name in ("input_audio_buffer.speech_stopped", "response.output_audio_transcript.delta", "response.done"):
            assert name in events, name
        inbound = page.evaluate(INBOUND_AUDIO)
        assert inbound["packets"] > 50 and inbound["energy"] > 0, inbound
        turn = next(t for t in page.evaluate("demo.turns()") if t["status"] == "completed")
        print(f"page over nginx: load to completed turn {turn_s:.1f} s, first packet {turn['ttfpMs']:.0f} ms")
        browser.screenshot(page, "deploy_https_proxy_turn")
        # Disconnect hangs up through the proxy, at the prefixed Location the server gave.
        page.click("#connect")
        page.wait_for_selector('#conn-state[data-state="disconnected"]', timeout=10_000)
        stack.wait_idle(10)
        assert foreign == []
        assert errors == []


def test_page_over_plain_http_from_elsewhere_says_what_to_do(stack, netns_addrs):
    """Served as http://10.x (not localhost): no microphone, and the page says the three ways out."""
    site = ThreadingHTTPServer((netns_addrs.server_addr, 0), partial(_Quiet, directory=str(ROOT / "web")))
    thread = threading.Thread(target=site.serve_forever, name="plain-http", daemon=True)
    thread.start()
    port = site.server_address[1]
    try:
        with browser.chromium() as page:
            page.goto(f"http://{netns_addrs.server_addr}:{port}/")
            page.wait_for_selector("#insecure:not([hidden])", timeout=10_000)
            assert page.evaluate("window.isSecureContext") is False
            text = page.inner_text("#insecure")
            assert f"http://{netns_addrs.server_addr}:{port}/" in text and "not a secure context" in text
            assert f"https://{netns_addrs.server_addr}:{port}/" in text and "--ssl-self-signed" in text
            assert f"http://localhost:{port}/" in text
            assert f"ssh -N -L {port}:localhost:{port} {netns_addrs.server_addr}" in text
            browser.screenshot(page, "deploy_insecure_context")
    finally:
        site.shutdown()
        site.server_close()
        thread.join(5)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# ---------------------------------------------------------------------------- TURN relay


def test_peer_limited_to_the_coturn_relay_completes_a_call(stack):
    asyncio.run(_relay_call(stack))


async def _relay_call(stack) -> None:
    from aiortc import RTCConfiguration, RTCIceServer
    from aiortc.rtcconfiguration import RTCIceTransportPolicy
    from webrtc_peer import FIXTURES, ClientPeer, read_wav

    # The client's only candidates are relayed ones on coturn: every packet it exchanges with
    # the server goes through the TURN server, authenticated with the credentials handed out.
    ice = [RTCIceServer(urls=s["urls"], username=s["username"], credential=s["credential"]) for s in stack.ice]
    client = ClientPeer(configuration=RTCConfiguration(iceServers=ice, iceTransportPolicy=RTCIceTransportPolicy.RELAY))
    try:
        t0 = time.monotonic()
        offer = await client.offer()
        candidates = [line for line in offer.splitlines() if line.startswith("a=candidate:")]
        assert candidates and all(" typ relay " in line for line in candidates), candidates
        async with httpx.AsyncClient(verify=stack.tls.certfile) as http:
            reply = await http.post(
                stack.base + "/v1/realtime/calls", content=offer, headers={"Content-Type": "application/sdp"}
            )
        assert reply.status_code == 201, reply.text
        assert reply.headers["location"].startswith(PREFIX + "/v1/realtime/calls/")
        await client.accept(reply.text)
        await asyncio.wait_for(client.connected.wait(), 20)
        await asyncio.wait_for(client.channel_open.wait(), 10)
        connect_ms = (time.monotonic() - t0) * 1000
        ice_conn = client.pc.getTransceivers()[0].sender.transport.transport.iceGatherer._connection
        pair = ice_conn._nominated[1]
        assert pair.local_candidate.type == "relay", pair
        pcm, _ = read_wav(FIXTURES / "hello_en_us.wav")
        client.play(pcm)
        client.play_silence(1500)
        done = await client.wait_for("response.done", timeout_s=90)
        assert done["response"]["status"] == "completed", done
        await asyncio.sleep(1.0)  # the answer's last packets
        assert client.received.loud_frames() > 10, "no answer audio came through the relay"
        print(f"relay call: connected in {connect_ms:.0f} ms via {pair}, {client.received.loud_frames()} loud frames")
        # coturn saw the allocation (its log names the user).
        assert TURN_USER in stack.log("coturn")
        # Hang up at the Location the server gave, which carries the proxy's prefix.
        origin = stack.base.removesuffix(PREFIX)
        async with httpx.AsyncClient(verify=stack.tls.certfile) as http:
            assert (await http.delete(origin + reply.headers["location"])).status_code == 204
    finally:
        await client.close()
    stack.wait_idle()
