"""Regenerate tests/fixtures: short real speech clips and a camera-like frame sequence.

Run it with `make fixtures` (needs espeak-ng). The output is committed; rerunning it
with the same espeak-ng version gives the same bytes, because every step after the
synthesis is deterministic (soxr resampling, integer padding, PIL's PNG encoder).

Speech clips are 16 kHz mono 16-bit WAV, the rate Qwen3-Omni's feature extractor
wants (reference §3). Each has 0.3 s of leading and at least 1.0 s of trailing
silence, so a server's voice-activity detector sees the end of speech (its default
silence window is 500 ms) inside the clip.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import soxr
from PIL import Image, ImageDraw

RATE_HZ = 16000
LEAD_S = 0.3
TRAIL_S = 1.0
LONG_CLIP_S = 10.0

# name, espeak-ng voice, words per minute, sentence
CLIPS = [
    ("hello_en_us", "en-us", 160, "Hello, can you hear me?"),
    ("weather_en_gb_f3", "en-gb+f3", 165, "What is the weather like today?"),
    ("count_en_us_m3", "en-us+m3", 170, "Please count from one to five."),
    ("describe_en_scotland", "en-gb-scotland", 160, "Describe what you see in the picture."),
]
# About 8.7 s of speech, padded to exactly LONG_CLIP_S: a "10 s utterance" for prefill timing.
LONG_CLIP = (
    "long_10s_en_us",
    "en-us",
    185,
    "I would like to plan a short trip to the mountains next weekend. "
    "Could you suggest a few quiet places to stay, and tell me what I should pack "
    "if the nights turn cold?",
)

FRAME_SIZE = (128, 96)  # width, height
FRAME_COUNT = 6
FRAME_FPS = 2.0  # qwen-omni-utils samples video at 2 fps (reference §3)


def synthesize(voice: str, wpm: int, text: str) -> np.ndarray:
    """espeak-ng speech as int16 at RATE_HZ, with silence trimmed from both ends."""
    wav_bytes = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", text], check=True, capture_output=True
    ).stdout
    with wave.open(io.BytesIO(wav_bytes)) as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise RuntimeError(f"unexpected espeak-ng output: {w.getnchannels()} ch, {w.getsampwidth()} bytes")
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    audio = soxr.resample(pcm.astype(np.float32) / 32768.0, rate, RATE_HZ, quality="HQ")
    voiced = np.flatnonzero(np.abs(audio) > 1e-3)
    audio = audio[voiced[0] : voiced[-1] + 1]
    return np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)


def pad(speech: np.ndarray, total_s: float | None = None) -> np.ndarray:
    lead = np.zeros(int(LEAD_S * RATE_HZ), np.int16)
    trail_n = int(TRAIL_S * RATE_HZ)
    if total_s is not None:
        trail_n = int(total_s * RATE_HZ) - len(lead) - len(speech)
        if trail_n < int(TRAIL_S * RATE_HZ):
            raise RuntimeError(f"speech is {len(speech) / RATE_HZ:.2f} s, too long for a {total_s} s clip")
    return np.concatenate([lead, speech, np.zeros(trail_n, np.int16)])


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE_HZ)
        w.writeframes(pcm.tobytes())


def make_speech(out: Path) -> list[dict]:
    entries = []
    for name, voice, wpm, text in [*CLIPS, LONG_CLIP]:
        speech = synthesize(voice, wpm, text)
        total = LONG_CLIP_S if name == LONG_CLIP[0] else None
        pcm = pad(speech, total)
        write_wav(out / f"{name}.wav", pcm)
        entries.append(
            {
                "file": f"{name}.wav",
                "text": text,
                "voice": voice,
                "sample_rate_hz": RATE_HZ,
                "duration_s": round(len(pcm) / RATE_HZ, 4),
                "speech_start_s": LEAD_S,
                "speech_end_s": round(LEAD_S + len(speech) / RATE_HZ, 4),
            }
        )
    return entries


def draw_frame(i: int) -> Image.Image:
    """A camera-like scene: a lit background gradient, a static 'desk' and a red ball
    moving left to right, so consecutive frames differ in a known way."""
    w, h = FRAME_SIZE
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([60 + x * 80 // w, 90 + y * 60 // h, np.full_like(x, 150)], axis=-1).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, h - 24, w - 1, h - 1], fill=(110, 80, 50))
    cx, cy, r = 16 + i * (w - 32) // (FRAME_COUNT - 1), h // 2, 12
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(220, 30, 30))
    return img


def make_frames(out: Path) -> dict:
    frames_dir = out / "frames"
    frames_dir.mkdir()
    frames = []
    for i in range(FRAME_COUNT):
        name = f"frame_{i:03d}.png"
        draw_frame(i).save(frames_dir / name, format="PNG", optimize=True)
        frames.append({"file": f"frames/{name}", "t_s": round(i / FRAME_FPS, 3)})
    return {"width": FRAME_SIZE[0], "height": FRAME_SIZE[1], "fps": FRAME_FPS, "frames": frames}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_out = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
    parser.add_argument("--out", type=Path, default=default_out, help=f"output folder (default {default_out})")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed (apt-get install espeak-ng)", file=sys.stderr)
        return 1

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    # Replace only what this script owns, so a README or another helper's files stay.
    for old in out.glob("*.wav"):
        old.unlink()
    shutil.rmtree(out / "frames", ignore_errors=True)

    manifest = {"speech": make_speech(out), "video": make_frames(out)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {len(manifest['speech'])} clips and {FRAME_COUNT} frames to {out} ({total / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
