"""Qwen3-Omni's languages and its task prompts for recognition and translation.

Speech input: the 19 languages of the technical report's Table 3 (arXiv 2509.17765; Qwen's
README omits Thai). Speech output: the 10 of Qwen's README. Text: Qwen3 reads and writes 119
languages, but Qwen publishes them as names, not codes; text targets are checked against
the ISO 639-1 codes below, which are the languages a client can name with a code.

The prompts are Qwen's own (README and cookbooks), text placed after the audio:
- recognition: `Transcribe the <Language> audio into text.` (Chinese: `请将这段中文语音转换为纯文本。`);
- speech translation to text: `Listen to the provided <Source> speech and produce a translation in <Target> text.`
Without a language the language word is left out, so the model transcribes in the
language spoken.
"""

from __future__ import annotations

SPEECH_INPUT = (
    "ar", "de", "en", "es", "fr", "id", "it", "ja", "ko", "ms", "nl", "pt", "ru", "th", "tr", "ur", "vi", "yue", "zh",
)  # fmt: skip
SPEECH_OUTPUT = ("de", "en", "es", "fr", "it", "ja", "ko", "pt", "ru", "zh")

# ISO 639-1 (plus Cantonese, ISO 639-3 `yue`) -> the English name the prompts use.
NAMES = {
    "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "as": "Assamese", "az": "Azerbaijani", "ba": "Bashkir",
    "be": "Belarusian", "bg": "Bulgarian", "bn": "Bengali", "bo": "Tibetan", "br": "Breton", "bs": "Bosnian",
    "ca": "Catalan", "cs": "Czech", "cy": "Welsh", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "eo": "Esperanto", "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian", "fi": "Finnish",
    "fo": "Faroese", "fr": "French", "ga": "Irish", "gl": "Galician", "gu": "Gujarati", "ha": "Hausa",
    "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "ht": "Haitian Creole", "hu": "Hungarian", "hy": "Armenian",
    "id": "Indonesian", "ig": "Igbo", "is": "Icelandic", "it": "Italian", "ja": "Japanese", "jv": "Javanese",
    "ka": "Georgian", "kk": "Kazakh", "km": "Khmer", "kn": "Kannada", "ko": "Korean", "ku": "Kurdish",
    "ky": "Kyrgyz", "la": "Latin", "lb": "Luxembourgish", "lo": "Lao", "lt": "Lithuanian", "lv": "Latvian",
    "mg": "Malagasy", "mi": "Maori", "mk": "Macedonian", "ml": "Malayalam", "mn": "Mongolian", "mr": "Marathi",
    "ms": "Malay", "mt": "Maltese", "my": "Burmese", "ne": "Nepali", "nl": "Dutch", "nn": "Norwegian Nynorsk",
    "no": "Norwegian", "oc": "Occitan", "or": "Odia", "pa": "Punjabi", "pl": "Polish", "ps": "Pashto",
    "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sa": "Sanskrit", "sd": "Sindhi", "si": "Sinhala",
    "sk": "Slovak", "sl": "Slovenian", "sn": "Shona", "so": "Somali", "sq": "Albanian", "sr": "Serbian",
    "su": "Sundanese", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu", "tg": "Tajik",
    "th": "Thai", "tk": "Turkmen", "tl": "Tagalog", "tr": "Turkish", "tt": "Tatar", "ug": "Uyghur",
    "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek", "vi": "Vietnamese", "xh": "Xhosa", "yi": "Yiddish",
    "yo": "Yoruba", "yue": "Cantonese", "zh": "Chinese", "zu": "Zulu",
}  # fmt: skip
TEXT = tuple(sorted(NAMES))


class UnsupportedLanguage(ValueError):
    """A language code outside the list that applies; the message names the supported ones."""


def normalize(code: str) -> str:
    """`EN`, `en-US`, `en_GB` -> `en`; `zh-yue` -> `yue`."""
    parts = code.strip().lower().replace("_", "-").split("-")
    return "yue" if "yue" in parts else parts[0]


def check(code: str, supported: tuple[str, ...], what: str) -> str:
    """The normalized code, or UnsupportedLanguage naming the supported codes."""
    norm = normalize(code)
    if norm not in supported:
        raise UnsupportedLanguage(f"{what} language {code!r} is not supported; use one of {', '.join(supported)}")
    return norm


def speech_input(code: str) -> str:
    return check(code, SPEECH_INPUT, "speech input")


def speech_output(code: str) -> str:
    return check(code, SPEECH_OUTPUT, "speech output")


def text(code: str) -> str:
    return check(code, TEXT, "text")


def recognition_prompt(language: str | None) -> str:
    """Qwen's speech-recognition prompt for a (checked) speech-input code, or for the
    language spoken when None."""
    if language == "zh":
        return "请将这段中文语音转换为纯文本。"
    if language is None:
        return "Transcribe the audio into text."
    return f"Transcribe the {NAMES[language]} audio into text."


def translation_prompt(source: str | None, target: str, *, spoken: bool = False) -> str:
    """Qwen's speech-to-text translation prompt (source None: whatever is spoken). With
    `spoken`, the answer is to be heard (the talker speaks the thinker's text), so the
    prompt asks for the translation alone, in words to be spoken."""
    heard = f"{NAMES[source]} speech" if source else "speech"
    if spoken:
        return f"Listen to the provided {heard} and say only its translation in {NAMES[target]}."
    return f"Listen to the provided {heard} and produce a translation in {NAMES[target]} text."


def context_instructions(prompt: str) -> str:
    """A client's transcription `prompt` (OpenAI: vocabulary, style, or the text before
    this audio), given to the model as a system message."""
    return f"Context for the transcription (expected words, spelling, or the text that came before): {prompt}"
