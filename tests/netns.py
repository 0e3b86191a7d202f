"""Run tests inside a private network namespace that the test run creates.

WebRTC tests need real interface addresses: aioice gathers no host candidate on
127.0.0.1 (aioice/ice.py `get_host_addresses`), and with default settings aiortc
would contact a public STUN server. So tests marked `netns` are re-executed in a
child pytest started under `unshare -n` (a fresh, empty network namespace, which
needs root). Inside, `lo` is brought up and a veth pair with two private addresses
is added; nothing outside the namespace is reachable, by construction.

The parent runs all `netns` tests of one module in a single child (so a module-scoped
server or engine is built once), reads the child's JUnit XML and reports each test's
outcome as if it had run in the parent. Inside the child, `ASSISTANT_TEST_NETNS` is set
and the tests run normally.

This module is plain code, used by tests/conftest.py; it has no pytest hooks of its own.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

INSIDE_ENV = "ASSISTANT_TEST_NETNS"
# RFC 1918 addresses no real network here uses; both veth ends stay in the namespace.
SERVER_ADDR = "10.201.0.1"
CLIENT_ADDR = "10.201.0.2"
PREFIX_LEN = 24
_VETH = ("vassist0", "vassist1")
_BANNER = re.compile(r"-+ Captured \w+ -+")

SETUP_SCRIPT = " && ".join(
    [
        "ip link set lo up",
        f"ip link add {_VETH[0]} type veth peer name {_VETH[1]}",
        f"ip addr add {SERVER_ADDR}/{PREFIX_LEN} dev {_VETH[0]}",
        f"ip addr add {CLIENT_ADDR}/{PREFIX_LEN} dev {_VETH[1]}",
        f"ip link set {_VETH[0]} up",
        f"ip link set {_VETH[1]} up",
    ]
)


@dataclass(frozen=True)
class Netns:
    """The addresses a test inside the namespace may use."""

    server_addr: str = SERVER_ADDR
    client_addr: str = CLIENT_ADDR


def inside() -> bool:
    return os.environ.get(INSIDE_ENV) == "1"


_reason_cache: list[str | None] = []


def unavailable_reason() -> str | None:
    """None when namespaces can be made here; otherwise why not (the skip reason)."""
    if _reason_cache:
        return _reason_cache[0]
    reason: str | None = None
    if os.geteuid() != 0:
        reason = "needs root to create a network namespace (unshare -n)"
    elif shutil.which("unshare") is None or shutil.which("ip") is None:
        reason = "needs util-linux `unshare` and iproute2 `ip`"
    else:
        probe = subprocess.run(
            ["unshare", "-n", "sh", "-c", SETUP_SCRIPT], capture_output=True, text=True, timeout=30, check=False
        )
        if probe.returncode != 0:
            reason = f"cannot set up a network namespace: {probe.stderr.strip()[:200]}"
    _reason_cache.append(reason)
    return reason


@dataclass
class ChildResult:
    outcome: str  # "passed", "failed" or "skipped"
    message: str  # failure text or skip reason
    duration_s: float
    output: str = ""  # what the test printed and logged


@dataclass
class ChildRun:
    returncode: int
    output: str
    results: dict[str, ChildResult]  # by "classname::name" as JUnit writes it


def run_pytest_inside(nodeids: list[str], *, rootdir: Path, timeout_s: float, per_test_timeout_s: int) -> ChildRun:
    """Run `nodeids` in a child pytest inside a fresh namespace; collect per-test results."""
    with tempfile.TemporaryDirectory(prefix="netns-") as tmp:
        junit = Path(tmp) / "junit.xml"
        pytest_argv = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--timeout={per_test_timeout_s}",
            f"--junitxml={junit}",
            "-o",
            "junit_family=xunit1",
            "-o",
            "junit_logging=all",
            *nodeids,
        ]
        # `exec` so that killing the shell on timeout kills pytest too.
        script = SETUP_SCRIPT + " && exec " + shlex.join(pytest_argv)
        env = dict(os.environ, **{INSIDE_ENV: "1"})
        try:
            proc = subprocess.run(
                ["unshare", "-n", "sh", "-c", script],
                cwd=rootdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
            rc, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, output = (
                -1,
                f"namespace child timed out after {timeout_s:.0f} s\n{_text(exc.stdout)}{_text(exc.stderr)}",
            )
        results = _read_junit(junit) if junit.exists() else {}
    return ChildRun(rc, output, results)


def _read_junit(path: Path) -> dict[str, ChildResult]:
    results: dict[str, ChildResult] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        key = f"{case.get('classname', '')}::{case.get('name', '')}"
        duration = float(case.get("time", "0") or 0)
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                message += (child.get("message") or "") + "\n" + (child.text or "")
            elif child.tag == "skipped":
                if outcome == "passed":
                    outcome, message = "skipped", child.get("message") or ""
        output = "\n".join(_meaningful(c.text) for c in case if c.tag in ("system-out", "system-err") and c.text)
        results[key] = ChildResult(outcome, message.strip(), duration, output)
    return results


def junit_key(nodeid: str) -> str:
    """The key JUnit XML gives a pytest node id: 'tests.test_x::test_y[param]' or
    'tests.test_x.TestClass::test_y'."""
    path, _, rest = nodeid.partition("::")
    module = path.removesuffix(".py").replace("/", ".")
    parts = rest.split("::")
    classname = ".".join([module, *parts[:-1]])
    return f"{classname}::{parts[-1]}"


def _meaningful(text: str) -> str:
    """Captured output without pytest's empty section banners."""
    return "\n".join(line for line in text.splitlines() if line.strip() and not _BANNER.fullmatch(line.strip()))


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")
