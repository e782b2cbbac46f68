"""Positives are the conversation as bytes; each negative strategy keeps what it says and breaks the rest."""

import numpy as np
import pytest

from engram_ff.ingest.samples import STRATEGIES, conversation, negatives, unigram, windows

TEXT = b"alice: hello there, how are you today?\nbot: fine thanks, and you?\n" * 20


def rows(*items):
    return [dict(zip(("day", "session", "sender", "text"), item)) for item in items]


def test_conversation_groups_sessions_with_a_blank_line():
    data = conversation(
        rows(
            ("d1", "s1", "alice", "hi"),
            ("d1", "s1", "bot", "hello\nthere"),
            ("d1", "s2", "carol", "yo"),
            ("d2", "s2", "carol", "next day"),
        )
    )
    assert data == b"alice: hi\nbot: hello\nthere\n\ncarol: yo\n\ncarol: next day\n"
    assert conversation(rows(("d", "s", "\u00e9ve", "\u2713"))) == "\u00e9ve: \u2713\n".encode()


def test_windows_are_slices_of_the_stream():
    rng = np.random.default_rng(0)
    x = windows(TEXT, 16, 32, rng)
    assert x.shape == (32, 16) and x.dtype == np.uint8
    assert all(row.tobytes() in TEXT for row in x)
    with pytest.raises(ValueError, match="shorter"):
        windows(b"abc", 16, 1, rng)


def test_wrong_byte_changes_about_rate_and_always_to_another_byte():
    rng = np.random.default_rng(1)
    x = windows(TEXT, 64, 64, rng)
    neg = negatives(x, "wrong_byte", rng, rate=0.25)
    changed = neg != x
    assert 0.2 < changed.mean() < 0.3
    assert negatives(x, "wrong_byte", rng, rate=1.0).tolist() != x.tolist()
    assert (negatives(x, "wrong_byte", rng, rate=1.0) != x).all()


def test_unigram_draws_from_the_byte_frequencies():
    rng = np.random.default_rng(2)
    probs = unigram(TEXT)
    neg = negatives(np.zeros((50, 200), np.uint8), "unigram", rng, probs=probs)
    assert neg.shape == (50, 200)
    seen = np.bincount(neg.ravel(), minlength=256) / neg.size
    assert seen[ord(" ")] == pytest.approx(probs[ord(" ")], abs=0.02)
    assert seen[ord("a")] > seen[ord("Z")]


def test_shuffled_span_keeps_the_spans_and_changes_their_order():
    rng = np.random.default_rng(3)
    x = windows(TEXT, 64, 8, rng)
    neg = negatives(x, "shuffled_span", rng, span=8)
    for pos_row, neg_row in zip(x, neg):
        spans = sorted(pos_row[i : i + 8].tobytes() for i in range(0, 64, 8))
        assert sorted(neg_row[i : i + 8].tobytes() for i in range(0, 64, 8)) == spans
    assert (neg != x).any()


def test_model_strategy_continues_the_prefix_with_the_generator():
    calls = []

    def generate(prefix: bytes, n: int) -> bytes:
        calls.append(prefix)
        return b"z" * n

    x = windows(TEXT, 10, 3, np.random.default_rng(4))
    neg = negatives(x, "model", np.random.default_rng(5), generate=generate, keep=0.6)
    assert (neg[:, :6] == x[:, :6]).all() and (neg[:, 6:] == ord("z")).all()
    assert calls == [row[:6].tobytes() for row in x]
    with pytest.raises(ValueError, match="returned 1 bytes"):
        negatives(x, "model", np.random.default_rng(5), generate=lambda p, n: b"z")


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match="unknown negative strategy 'nope'; known: " + ", ".join(STRATEGIES)):
        negatives(np.zeros((1, 4), np.uint8), "nope", np.random.default_rng())
