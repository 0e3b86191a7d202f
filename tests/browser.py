"""Helpers for the browser tests: Debian's Chromium driven by Playwright with fake media
devices, a microphone WAV built from the speech fixtures, and screenshot artifacts.

Chromium is started with its own fresh profile, no sandbox (the tests run as root inside
a private network namespace) and every background service that could reach out turned
off. `playwright install` is never used: the browser is the system's /usr/bin/chromium.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "browser"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--allow-loopback-in-peer-connection",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    # Real host candidates instead of mDNS names, which the server's ICE agent would have to resolve.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


def unavailable_reason() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (python) is not installed"
    return None


def mic_wav(out: Path, clip: str, silence_s: float) -> Path:
    """`clip` followed by `silence_s` of silence, as 48 kHz 16-bit mono PCM WAV (Chromium's fake
    capture loops the file, so the silence decides how often the 'user' speaks)."""
    subprocess.run(
        ["sox", str(FIXTURES / clip), "-r", "48000", "-b", "16", "-c", "1", str(out), "pad", "0", str(silence_s)],
        check=True,
        capture_output=True,
    )
    return out


@contextmanager
def chromium(
    mic: Path | None = None,
    *,
    viewport: tuple[int, int] = (1280, 900),
    grant_media: bool = True,
    extra_args: tuple[str, ...] = (),
):
    """A fresh Chromium (own --user-data-dir, removed afterwards) playing `mic` as the microphone.
    `grant_media=False` leaves out --use-fake-ui-for-media-stream, so headless Chromium denies
    the permission as a user clicking "Block" would. Yields the first page."""
    from playwright.sync_api import sync_playwright

    args = [*CHROMIUM_FLAGS, *extra_args]
    if grant_media:
        args.append("--use-fake-ui-for-media-stream")
    if mic is not None:
        args.append(f"--use-file-for-fake-audio-capture={mic}")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=args,
                viewport={"width": viewport[0], "height": viewport[1]},
            )
            try:
                yield context.pages[0] if context.pages else context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def watch_requests(page, allowed_origin: str) -> list[str]:
    """Every URL the page requests outside `allowed_origin` (the page must need nothing else)."""
    foreign: list[str] = []

    def check(request) -> None:
        url = request.url
        if not (url.startswith(allowed_origin) or url.startswith("data:") or url.startswith("blob:")):
            foreign.append(url)

    page.on("request", check)
    return foreign


def console_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


# What browsers run as a module script (HTML, "JavaScript MIME type"; RFC 9239 makes text/javascript the one).
JS_TYPES = ("text/javascript", "application/javascript")


def scripts_loaded(page) -> dict[str, tuple[int, str]]:
    """Every script the page loads, by file name: (HTTP status, Content-Type). The page is a graph of
    ES modules: one that fails to load (or is served with a non-JavaScript type) stops the whole graph,
    so the tests compare this with web/*.js."""
    loaded: dict[str, tuple[int, str]] = {}

    def record(response) -> None:
        if response.request.resource_type == "script":
            name = response.url.split("?")[0].rsplit("/", 1)[-1]
            loaded[name] = (response.status, response.headers.get("content-type", ""))

    page.on("response", record)
    return loaded


def assert_every_module_loaded(scripts: dict[str, tuple[int, str]], web_dir: Path) -> None:
    """Each web/*.js is in the page's import graph (none left dead) and came back 200 as JavaScript."""
    assert sorted(scripts) == sorted(p.name for p in web_dir.glob("*.js")), scripts
    bad = {name: got for name, got in scripts.items() if got[0] != 200 or not got[1].startswith(JS_TYPES)}
    assert bad == {}, bad
