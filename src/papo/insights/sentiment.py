"""Sentiment of one message: the language is detected per message (py3langid, narrowed to the
languages we expect), then Portuguese (and Spanish, its closest neighbour) is scored with LeIA and
everything else with VADER. Both give a compound score in [-1, 1]; the usual VADER cut-offs make
the label."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

# Languages the detector may answer; short or ambiguous text falls back to the configured default.
CANDIDATE_LANGUAGES = ["pt", "en", "es", "fr", "de", "it"]
PORTUGUESE_LEXICON = {"pt", "es"}
MIN_CONFIDENCE = 0.5
POSITIVE_FROM, NEGATIVE_FROM = 0.05, -0.05


@dataclass(frozen=True)
class Sentiment:
    score: float
    label: str
    language: str


def label_of(score: float) -> str:
    if score >= POSITIVE_FROM:
        return "positive"
    if score <= NEGATIVE_FROM:
        return "negative"
    return "neutral"


class SentimentScorer:
    """Loads its models on first use (the language model takes most of a second) and is safe to
    call from worker threads."""

    def __init__(self, default_language: str = "pt") -> None:
        self.default_language = default_language
        self._lock = threading.Lock()
        self._models: tuple[Any, Any, Any] | None = None

    def _load(self) -> tuple[Any, Any, Any]:
        with self._lock:
            if self._models is None:
                from LeIA import SentimentIntensityAnalyzer as Leia
                from py3langid import langid
                from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer as Vader

                identifier = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)
                identifier.set_languages(CANDIDATE_LANGUAGES)
                self._models = (identifier, Leia(), Vader())
            return self._models

    def language(self, text: str) -> str:
        identifier, _, _ = self._load()
        language, confidence = identifier.classify(text)
        return str(language) if confidence >= MIN_CONFIDENCE else self.default_language

    def score(self, text: str) -> Sentiment:
        _, leia, vader = self._load()
        language = self.language(text)
        analyzer = leia if language in PORTUGUESE_LEXICON else vader
        compound = float(analyzer.polarity_scores(text)["compound"])
        return Sentiment(round(compound, 4), label_of(compound), language)
