"""The client's reply rebuilder: stored text plus live deltas, with gaps filled by a refetch."""

from __future__ import annotations

from papo.client import GrowingReply


def test_deltas_extend_the_text_and_repeats_change_nothing() -> None:
    reply = GrowingReply("Olá")
    reply.apply(3, ", mundo")
    reply.apply(0, "Olá, mu")  # already had it
    assert reply.text == "Olá, mundo"
    assert not reply.needs_refetch


def test_a_gap_waits_for_a_fresher_stored_text() -> None:
    reply = GrowingReply("abc")
    reply.apply(6, "ghi")
    reply.apply(9, "jk")
    assert reply.text == "abc" and reply.needs_refetch
    reply.rebase("abcd")  # still behind: keep waiting
    assert reply.needs_refetch
    reply.rebase("abcdefg")  # overlaps the first waiting delta
    assert reply.text == "abcdefghijk"
    assert not reply.needs_refetch
    reply.rebase("abc")  # an older stored copy never shortens the text
    assert reply.text == "abcdefghijk"
