"""Input transcription in the sans-I/O session and in the scheduler, on plain data: which
commands a commit gives, how engine events become transcription events, and where the
worker ranks a transcription job."""

from __future__ import annotations

import json

import numpy as np
from test_batching import FakeJob, order_of

from assistant import languages
from assistant.engine.api import EngineError, ResponseDone, ResponseStats, TextDelta, TextJob
from assistant.engine.worker import ModelWorker
from assistant.realtime.session import RealtimeSession, Send, StartResponse, TranscribeItem
from assistant.settings import Settings


def sends(outputs) -> list[dict]:
    return [o.event for o in outputs if isinstance(o, Send)]


def session(**update) -> RealtimeSession:
    s = RealtimeSession(Settings(transcription_max_tokens=7))
    s.start()
    out = s.receive_text(json.dumps({"type": "session.update", "session": update}))
    assert [e["type"] for e in sends(out)] == ["session.updated"], sends(out)
    return s


def commit(s: RealtimeSession) -> list:
    s.append_audio(np.zeros(4800, np.float32), 24_000)
    return s.receive_text('{"type": "input_audio_buffer.commit"}')


def test_a_commit_asks_for_a_transcript_with_qwens_prompt():
    s = session(
        type="realtime",
        audio={"input": {"turn_detection": None, "transcription": {"language": "zh", "prompt": "Qwen"}}},
    )
    (cmd,) = [o for o in commit(s) if isinstance(o, TranscribeItem)]
    assert cmd.job.task == languages.recognition_prompt("zh") == "请将这段中文语音转换为纯文本。"
    assert "Qwen" in cmd.job.context and cmd.job.max_tokens == 7
    assert abs(cmd.job.audio.duration_s - 0.2) < 0.01
    assert s.session_json()["audio"]["input"]["transcription"] == {"model": "", "language": "zh", "prompt": "Qwen"}
    # Off again: no transcript for the next commit.
    s.receive_text(json.dumps({"type": "session.update", "session": {"audio": {"input": {"transcription": None}}}}))
    assert not [o for o in commit(s) if isinstance(o, TranscribeItem)]


def test_engine_events_become_transcription_events_and_the_transcript_stays_on_the_item():
    s = session(type="realtime", audio={"input": {"turn_detection": None, "transcription": {}}})
    (cmd,) = [o for o in commit(s) if isinstance(o, TranscribeItem)]
    item = cmd.item_id
    assert sends(s.on_transcription_event(item, TextDelta("he", 1)))[0]["delta"] == "he"
    s.on_transcription_event(item, TextDelta("llo", 2))
    retrieve = json.dumps({"type": "conversation.item.retrieve", "item_id": item})
    assert sends(s.receive_text(retrieve))[0]["item"]["content"][0]["transcript"] is None  # not done yet
    done = ResponseDone("completed", None, ResponseStats(prefill_tokens=40, text_tokens=3))
    (completed,) = sends(s.on_transcription_event(item, done))
    assert completed["type"] == "conversation.item.input_audio_transcription.completed"
    assert completed["transcript"] == "hello" and completed["content_index"] == 0
    assert completed["usage"] == {"type": "tokens", "input_tokens": 40, "output_tokens": 3, "total_tokens": 43}
    assert sends(s.receive_text(retrieve))[0]["item"]["content"][0]["transcript"] == "hello"
    assert sends(s.on_transcription_event(item, done)) == []  # once only


def test_a_failed_transcript_says_why():
    s = session(type="realtime", audio={"input": {"turn_detection": None, "transcription": {}}})
    (cmd,) = [o for o in commit(s) if isinstance(o, TranscribeItem)]
    failed = ResponseDone("failed", None, ResponseStats(), EngineError("overloaded", "queue full"))
    (event,) = sends(s.on_transcription_event(cmd.item_id, failed))
    assert event["type"] == "conversation.item.input_audio_transcription.failed"
    assert event["error"]["code"] == "overloaded" and event["error"]["message"] == "queue full"


def test_a_transcription_session_commits_without_responses():
    s = session(type="transcription", audio={"input": {"turn_detection": None}})
    out = commit(s)
    assert [o for o in out if isinstance(o, TranscribeItem)]
    assert not [o for o in out if isinstance(o, StartResponse)]
    assert s.session_json()["type"] == "transcription"
    (error,) = sends(s.receive_text('{"type": "response.create"}'))
    assert error["type"] == "error" and "transcription session" in error["error"]["message"]


def test_the_worker_ranks_a_transcription_below_first_packets_and_guards(monkeypatch):
    """Issue #15: a transcription job (background: no listener) never goes before a new
    turn's first packet or a response short of its playback guard. Under the one rule
    (earliest deadline first, worker.py) it may go before listeners with audio to spare."""
    import assistant.engine.worker as worker_mod

    monkeypatch.setattr(worker_mod, "now", lambda: 100.0)
    w = ModelWorker(4, guard_s=0.16)
    transcript = FakeJob("transcript", t_submitted=90.0, audio=False, _phase="text")
    transcript.background = True
    jobs = [
        transcript,
        FakeJob("ahead", slack_s=5.0),
        FakeJob("new", t_submitted=99.9),
        FakeJob("head_start", t_submitted=99.0, partial=True),
        FakeJob("text_answer", slack_s=1.0, audio=False, _phase="text"),
        FakeJob("short", slack_s=0.05),
    ]
    order = order_of(w, jobs)
    assert order.index("transcript") > max(order.index("new"), order.index("short")), order


def test_interpreter_mode_answers_each_turn_with_its_translation_only():
    s = session(type="realtime", audio={"input": {"turn_detection": None}}, interpreter={"target_language": "fr"})
    assert s.session_json()["interpreter"] == {"target_language": "fr", "source_language": None}
    commit(s)
    (turn,) = s.conversation.turns
    assert turn.parts[-1].text == "Listen to the provided speech and say only its translation in French."
    # Written translation into a text language that Qwen does not speak.
    update = {"output_modalities": ["text"], "interpreter": {"target_language": "sw", "source_language": "en"}}
    s.receive_text(json.dumps({"type": "session.update", "session": update}))
    commit(s)
    assert s.conversation.turns[-1].parts[-1].text == (
        "Listen to the provided English speech and produce a translation in Swahili text."
    )


def test_interpreter_languages_are_checked_against_qwens_lists():
    s = session(type="realtime")
    target, source = "session.interpreter.target_language", "session.interpreter.source_language"
    for update, param, names in (
        ({"target_language": "sw"}, target, "de, en, es, fr, it, ja, ko, pt, ru, zh"),  # written only
        ({"target_language": "xx"}, target, "yue, zh, zu"),  # no such language
        ({"target_language": "fr", "source_language": "sw"}, source, "th, tr, ur, vi, yue, zh"),  # not heard
    ):
        out = s.receive_text(json.dumps({"type": "session.update", "session": {"interpreter": update}}))
        (error,) = sends(out)
        assert error["type"] == "error" and error["error"]["param"] == param, error
        assert error["error"]["code"] == "unsupported_language" and names in error["error"]["message"]
    assert s.interpreter is None  # a refused update changes nothing


def test_the_benchmark_compares_first_packets_with_transcription_on_and_off():
    from assistant.bench.transcription import compare

    def rec(conc, ms, on):
        return {"concurrency": conc, "kind": "audio", "audio_ttfp_ms": ms, "error": None, "input_transcription": on}

    rows = compare([rec(1, 100, False), rec(1, 110, True), rec(4, 200, False), rec(4, 300, True), rec(4, 1, None)])
    assert rows["1/audio"]["p50_ratio"] == 1.1 and rows["4/audio"]["on_n"] == 1
    assert rows["4/audio"]["off_p50_ms"] == 100.5  # None counts as off


async def test_an_upstream_engine_refuses_transcripts_with_a_reason():
    from assistant.engine.api import AudioPart
    from assistant.engine.upstream import UpstreamEngine

    engine = UpstreamEngine(Settings(upstream_url="ws://127.0.0.1:9/v1/realtime"))
    events = [e async for e in engine.transcribe(TextJob(AudioPart(np.zeros(1600, np.float32)), "Transcribe."))]
    assert len(events) == 1 and events[0].status == "failed" and events[0].error.code == "unsupported"


def test_a_vad_turn_starts_its_response_before_its_transcription():
    """The worker is idle when a turn ends: the job submitted first starts first, and the
    response's first packet must not wait behind the transcription's prefill."""
    s = session(type="realtime", audio={"input": {"transcription": {}}})  # server VAD, the default
    outputs = s.append_audio(np.zeros(72_000, np.float32), 24_000)  # 3 s
    while (work := s.take_vad_work()) is not None:
        n = len(work.samples) // 512
        t0 = work.start_sample // 512
        probs = np.array([0.95 if t0 + i < 30 else 0.0 for i in range(n)], np.float32)  # ~1 s of speech
        outputs += s.on_vad(work, probs)
    kinds = [type(o).__name__ for o in outputs if isinstance(o, (StartResponse, TranscribeItem))]
    assert kinds == ["StartResponse", "TranscribeItem"], kinds
