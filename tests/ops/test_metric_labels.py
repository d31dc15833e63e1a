"""Metric labels taken from tenant input stay bounded: a tenant admin who configures a thousand model
names (or one enormous one) cannot make /metrics grow without end."""

from __future__ import annotations

import secrets

from prometheus_client import REGISTRY

from papo.ops.metrics import MODEL_LABEL, BoundedLabel, record_ai_reply


def _label_values(metric: str, label: str) -> set[str]:
    return {
        sample.labels[label]
        for family in REGISTRY.collect()
        if family.name == metric
        for sample in family.samples
        if label in sample.labels
    }


def test_a_thousand_model_names_do_not_make_a_thousand_series() -> None:
    run = secrets.token_hex(3)
    for index in range(1000):
        record_ai_reply(
            {"provider": "openai", "model": f"tenant-model-{run}-{index}", "usage": {"prompt_tokens": 3}}, "complete"
        )
    record_ai_reply({"provider": "made-up-provider", "model": "x" * 10_000}, "failed")

    models = _label_values("papo_ai_replies", "model")
    # Whatever earlier tests recorded counts against the same bound.
    assert len(models) <= MODEL_LABEL.limit + 2  # + "other" and "unknown"
    assert "other" in models
    assert all(len(model) <= MODEL_LABEL.max_length for model in models)
    assert len(_label_values("papo_ai_tokens", "model")) <= MODEL_LABEL.limit + 2
    assert _label_values("papo_ai_replies", "provider") <= {"openai", "demo", "other", "unknown"}


def test_bounded_label_keeps_known_values_and_cleans_the_rest() -> None:
    label = BoundedLabel(2, max_length=10, known=("gpt-4o",))
    assert label("a") == "a" and label("b") == "b"
    assert label("c") == "other"
    assert label("a") == "a"  # values already seen keep their series
    assert label("gpt-4o") == "gpt-4o"  # known values always pass
    assert label(None) == "unknown" and label("") == "unknown"
    cleaned = BoundedLabel(5, max_length=10)('llama"3}\n{evil="1')
    assert cleaned == "llama_3___" and len(cleaned) == 10
