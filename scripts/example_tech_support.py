"""A tech-support agent on the stock `openai` SDK: declares tools, runs the calls the model
makes, sends their results back and plays (saves) the spoken answer.

    make run                                               # in another terminal
    python scripts/example_tech_support.py "My wifi keeps dropping"
    python scripts/example_tech_support.py --input-wav question.wav --output-wav answer.wav

The first response must call a tool (`--first-tool-choice required`: look before you
answer); later ones may (`auto`). With the tiny random-weight model the calls are valid
but their contents are babble, and so is the speech.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import wave

from openai import AsyncOpenAI

GUIDE = {
    "wifi drops": "Move the router off the floor, away from microwaves; set the channel to 1, 6 or 11.",
    "no internet": "Restart the modem, then the router; check that the WAN light is on.",
    "slow": "Run a speed test on a cable; if it is fast, the wifi band is crowded: try 5 GHz.",
    "printer offline": "Turn the printer off and on; re-add it with its IP address.",
}

TOOLS = [
    {
        "type": "function",
        "name": "search_guide",
        "description": "Search the troubleshooting guide",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 40}},
            "required": ["query"],
            "additionalProperties": False,
        },
    },
    {
        "type": "function",
        "name": "open_ticket",
        "description": "Open a support ticket for a human technician",
        "parameters": {
            "type": "object",
            "properties": {
                "device": {"type": "string", "enum": ["router", "modem", "laptop", "phone", "printer"]},
                "summary": {"type": "string", "maxLength": 80},
                "priority": {"type": "string", "enum": ["low", "normal", "high"]},
            },
            "required": ["device", "summary", "priority"],
            "additionalProperties": False,
        },
    },
    {
        "type": "function",
        "name": "local_time",
        "description": "The current local time",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
]


def run_tool(name: str, arguments: str) -> str:
    args = json.loads(arguments)
    if name == "search_guide":
        words = set(args["query"].lower().split())
        hits = [tip for key, tip in GUIDE.items() if words & set(key.split())]
        return json.dumps({"results": hits or ["No match; offer to open a ticket."]})
    if name == "open_ticket":
        return json.dumps({"ticket": 4211, "eta_hours": 24 if args["priority"] != "high" else 4})
    if name == "local_time":
        return json.dumps({"time": datetime.datetime.now().strftime("%H:%M")})
    return json.dumps({"error": f"unknown tool {name}"})


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("question", nargs="?", default="My wifi keeps dropping every few minutes.")
    ap.add_argument("--url", default="http://127.0.0.1:8000/v1", help="the server's /v1 base URL")
    ap.add_argument("--api-key", default="unused")
    ap.add_argument("--input-wav", help="ask with speech instead: a mono 16-bit WAV at 24 kHz")
    ap.add_argument("--output-wav", default="answer.wav")
    ap.add_argument("--first-tool-choice", default="required", choices=["auto", "required"])
    ap.add_argument("--rounds", type=int, default=3, help="at most this many call/result rounds")
    args = ap.parse_args()

    client = AsyncOpenAI(base_url=args.url, api_key=args.api_key)
    async with client.realtime.connect(model="qwen3-omni") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "You are a friendly tech-support agent. Look things up before you answer.",
                "audio": {"input": {"turn_detection": None}},
                "tools": TOOLS,
                "tool_choice": "auto",
            }
        )
        if args.input_wav:
            with wave.open(args.input_wav, "rb") as w:
                audio = base64.b64encode(w.readframes(w.getnframes())).decode()
            content = [{"type": "input_audio", "audio": audio}]
        else:
            content = [{"type": "input_text", "text": args.question}]
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": content})
        await conn.response.create(response={"tool_choice": args.first_tool_choice})
        pcm = bytearray()
        for _ in range(args.rounds + 1):
            calls = []
            async for event in conn:
                if event.type == "error":
                    raise SystemExit(f"server error: {event.error.message}")
                if event.type == "response.output_audio.delta":
                    pcm += base64.b64decode(event.delta)
                elif event.type == "response.output_audio_transcript.done":
                    print("assistant:", event.transcript)
                elif event.type == "response.function_call_arguments.done":
                    calls.append(event)
                    print(f"call: {event.name}({event.arguments})")
                elif event.type == "response.done":
                    break
            if not calls:
                break
            for call in calls:  # run them here, hand the results back, and let the model answer
                output = run_tool(call.name, call.arguments)
                print(f"result: {output}")
                item = {"type": "function_call_output", "call_id": call.call_id, "output": output}
                await conn.conversation.item.create(item=item)
            await conn.response.create()
    with wave.open(args.output_wav, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24_000)
        w.writeframes(bytes(pcm))
    print(f"wrote {len(pcm) / 48_000:.1f} s of speech to {args.output_wav}")


if __name__ == "__main__":
    asyncio.run(main())
