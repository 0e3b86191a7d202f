"""Flags of `assistant talk` (kept apart so `assistant --help` does not import audio libraries)."""

from __future__ import annotations

import argparse


def add_talk_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime", help="server websocket URL")
