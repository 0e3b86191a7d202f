"""`assistant`: the command line. Subcommands: serve, talk, make-tiny."""

from __future__ import annotations

import argparse
import sys

from . import settings as settings_mod

DESCRIPTION = """Real-time voice and video assistant around Qwen3-Omni.

  assistant serve               start the server (OpenAI Realtime over websocket and WebRTC)
  assistant talk                desktop push-to-talk client for a running server
  assistant make-tiny DIR       write a tiny random-weight Qwen3-Omni checkpoint (--variant instruct|thinking|captioner)

Every serve flag can also be set as an ASSISTANT_* environment variable."""


def _make_tiny(args: argparse.Namespace) -> int:
    from . import tiny

    path = tiny.build(args.dir, args.variant)
    digest = tiny.weights_digest(path)[:16]
    print(f"wrote tiny Qwen3-Omni checkpoint ({args.variant}) to {path} (weights sha256 {digest})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .server.main import serve

    return serve(settings_mod.from_sources(args))


def _talk(args: argparse.Namespace) -> int:
    from .client.talk import main as talk_main

    return talk_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assistant", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="start the server",
        description="Serve /v1/realtime (websocket), /v1/realtime/calls (WebRTC), the demo page at /, /health and /metrics.",
    )
    settings_mod.add_arguments(serve)
    serve.set_defaults(func=_serve)

    tiny = sub.add_parser(
        "make-tiny",
        help="write the tiny random-weight checkpoint",
        description="Write a complete random-weight Qwen3-Omni checkpoint (config, safetensors, tokenizer, "
        "processor, chat template) that loads with from_pretrained(DIR). Deterministic: same bytes every time.",
    )
    tiny.add_argument("dir", help="output directory (replaced if it exists)")
    tiny.add_argument(
        "--variant",
        choices=["instruct", "thinking", "captioner"],
        default="instruct",
        help="which checkpoint to mirror: instruct (thinker, talker, Code2Wav), thinking or captioner "
        "(thinker only, sampling T=0.6, top-p 0.95, top-k 20)",
    )
    tiny.set_defaults(func=_make_tiny)

    talk = sub.add_parser(
        "talk",
        help="desktop push-to-talk client",
        description="Talk to a running server over the websocket protocol: hold a key to talk, "
        "hear the answer as it streams. --input-wav/--output-wav for headless use.",
    )
    from .client.talk_args import add_talk_arguments

    add_talk_arguments(talk)
    talk.set_defaults(func=_talk)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
