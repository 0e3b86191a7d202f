"""Flags of `assistant talk` (kept apart so `assistant --help` does not import audio libraries)."""

from __future__ import annotations

import argparse
import os


def add_talk_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime", help="server websocket URL")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("ASSISTANT_API_KEY") or None,
        help="sent as 'Authorization: Bearer KEY' (env ASSISTANT_API_KEY)",
    )
    parser.add_argument("--voice", default=None, help="Ethan, Chelsie or Aiden (default: the server's)")
    parser.add_argument("--instructions", default=None, help="system instructions for the session")
    parser.add_argument(
        "--preset",
        choices=("assistant", "interpreter", "transcriber", "camera"),
        default=None,
        help="a task in one step (instructions, output, input transcription): a voice assistant, an interpreter "
        "(--target-language), a transcriber (text only, nothing answered) or camera help; --instructions wins",
    )
    parser.add_argument(
        "--target-language",
        default=None,
        help="the interpreter's target: spoken for de en es fr it ja ko pt ru zh, written for other language codes",
    )
    talk = parser.add_argument_group("talking")
    talk.add_argument("--key", default="space", help="the push-to-talk key: 'space' or one character")
    talk.add_argument("--toggle", action="store_true", help="tap the key to start and again to stop talking")
    talk.add_argument("--pre-roll-ms", type=int, default=300, help="audio kept from before the key went down")
    talk.add_argument("--jitter-ms", type=int, default=80, help="playback buffer before the answer starts playing")
    talk.add_argument("--input-device", default=None, help="microphone: index or name (see --list-devices)")
    talk.add_argument("--output-device", default=None, help="speaker: index or name (see --list-devices)")
    talk.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    talk.add_argument("--camera", type=int, default=None, metavar="N", help="send frames of webcam N while talking")
    talk.add_argument("--camera-fps", type=float, default=2.0, help="camera frames per second (at most 2)")
    head = parser.add_argument_group("headless")
    head.add_argument("--input-wav", default=None, help="send this WAV file as one turn instead of the microphone")
    head.add_argument("--output-wav", default=None, help="write the answer's audio (24 kHz) here")
    head.add_argument("--vad", action="store_true", help="let the server's VAD end the turn instead of committing")
    head.add_argument("--fast", action="store_true", help="send the WAV as fast as possible, not at real-time pace")
    head.add_argument("--response-timeout-s", type=float, default=120.0, help="how long to wait for the answer")
    parser.add_argument("--connect-timeout-s", type=float, default=10.0, help="connection and handshake timeout")
