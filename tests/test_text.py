"""Messages become training text in one format: `sender: text` lines, sessions apart, days in order."""

from engram_ff.state.text import conversation, message_line


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


def test_a_message_line_keeps_lone_surrogates_of_odd_input():
    assert message_line("a", "\udcff") == b"a: \xed\xb3\xbf\n"
