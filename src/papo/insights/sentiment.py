"""Sentiment of one message: the language is detected per message (py3langid, narrowed to the
languages we expect), then Portuguese (and Spanish, its closest neighbour) is scored with LeIA and
everything else with VADER. Both give a compound score in [-1, 1]; the usual VADER cut-offs make
the label."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
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


# Scoring is pure Python and holds the interpreter lock: in a thread of the serving process it
# slowed every request beside it. It runs in one child process per server process instead,
# shared by every app in it, at the lowest scheduling priority: Linux's SCHED_IDLE where there is
# one, and the highest niceness. At nice 10 it still took 1.3-1.5 ms of CPU per message from a
# saturated server (`make bench-core`); its work waits in the outbox until a core is free.
CHILD_NICENESS = 19
_child_scorers: dict[str, SentimentScorer] = {}
_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _start_child(server: int) -> None:
    """In the child: the lowest priority, and an exit once the server is gone (a server killed outright
    runs no clean-up that would stop its child, which would otherwise live on, orphaned). The
    server's pid comes from the server: one that died while this child started is gone already."""
    os.nice(CHILD_NICENESS)
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    def exit_with_server() -> None:
        while os.getppid() == server:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=exit_with_server, name="papo-scoring-watch", daemon=True).start()


def _score_in_child(texts: list[str], default_language: str) -> list[Sentiment]:
    scorer = _child_scorers.setdefault(default_language, SentimentScorer(default_language))
    return [scorer.score(text) for text in texts]


def _scoring_pool(*, replace: ProcessPoolExecutor | None = None) -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool is replace:
            if replace is not None:
                replace.shutdown(wait=False, cancel_futures=True)
            # spawn, not fork: the server has threads and open connections a fork would copy
            _pool = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"), initializer=_start_child, initargs=(os.getpid(),)
            )
        return _pool


class ChildProcessScorer:
    """Scores messages in the shared child process; a child that died is replaced once per call."""

    def __init__(self, default_language: str = "pt") -> None:
        self.default_language = default_language

    async def score_many(self, texts: list[str]) -> list[Sentiment]:
        loop = asyncio.get_running_loop()
        pool = _scoring_pool()
        try:
            return await loop.run_in_executor(pool, _score_in_child, texts, self.default_language)
        except BrokenProcessPool:
            pool = _scoring_pool(replace=pool)
            return await loop.run_in_executor(pool, _score_in_child, texts, self.default_language)
