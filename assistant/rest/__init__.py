"""The one-shot OpenAI REST APIs on the resident model: Chat Completions and the audio
endpoints, one module each, beside the Realtime protocol in `realtime/`.

Each module builds an `APIRouter` over the same `Engine` interface (`engine/api.py`) that
the realtime sessions use, so a request runs on the one worker and its scheduler; errors
reach the client as real HTTP statuses with OpenAI-shaped bodies.
"""
