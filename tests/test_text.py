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


def test_a_question_is_a_new_session_in_the_training_format():
    from engram_ff.state.text import question_prompt

    assert question_prompt("Who is Victor?", "me", "bot") == b"me: Who is Victor?\nbot: "


def test_the_turn_ends_where_the_next_message_or_session_begins():
    from engram_ff.state.text import end_of_turn

    senders = ["user", "assistant"]
    assert end_of_turn(b"He is your brother.\nuser: And", senders) == 19
    assert end_of_turn(b"He is your brother.\n\ncarol: hi", senders) == 19
    assert end_of_turn(b"line one\nline two\nassistant: x", senders) == 17  # a multi-line answer
    assert end_of_turn(b"He is your brother.\nus", senders) is None  # may become "user: "
    assert end_of_turn(b"He is your brother.\nus", senders, complete=True) == 19
    assert end_of_turn(b"He is your brother.", senders) is None
    assert end_of_turn(b"a\nnot a sender: x\nuser: y", senders) == 17
