"""The four line shapes, where a day comes from, and every malformed line refused with a reason."""

import orjson
import pytest

from engram_ff.ingest.parse import BadLine, Event, LineContext, Message, Skip, context_for, parse_line

CTX = LineContext(day="2026-11-20", session="file-session")


def parse(obj) -> Message | Event | Skip:
    return parse_line(obj if isinstance(obj, bytes) else orjson.dumps(obj), CTX)


def test_recorder_line():
    m = parse(
        {
            "timestamp": "2026-11-27T05:00:00.123Z",
            "session_key": "agent:main:tg:42",
            "direction": "in",
            "channel": "telegram",
            "sender": "alice",
            "content": "hello",
            "tool_calls": [],
        }
    )
    assert m == Message(
        "2026-11-27", "2026-11-27T05:00:00.123Z", "agent:main:tg:42", "user", "alice", "hello", "recorder"
    )
    out = parse({"timestamp": "2026-11-27T05:00:01Z", "session_key": "s", "direction": "out", "content": "hi"})
    assert (out.role, out.sender) == ("assistant", "assistant")


def test_recorder_line_with_only_tool_calls_has_no_text():
    assert parse({"session_key": "s", "direction": "out", "content": "", "tool_calls": [{"name": "x"}]}) == Skip(
        "no text"
    )


@pytest.mark.parametrize("kind,action", [("command", "new"), ("agent", "bootstrap"), ("gateway", "startup")])
def test_hook_events_are_counted_not_trained(kind, action):
    e = parse(
        {
            "timestamp": "2026-11-27T05:00:00Z",
            "type": kind,
            "action": action,
            "sessionKey": "agent:main",
            "senderId": "u1",
            "source": "telegram",
            "workspaceDir": "/w",
            "sessionId": "abc",
        }
    )
    assert e == Event("2026-11-27", "2026-11-27T05:00:00Z", kind, action, "agent:main")


def test_transcript_keeps_text_parts_only():
    m = parse(
        {
            "type": "message",
            "timestamp": "2026-11-27T05:00:00Z",
            "message": {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "secret plan"},
                    {"type": "text", "text": "first"},
                    {"type": "toolCall", "name": "read", "arguments": {}},
                    {"type": "text", "text": "second"},
                    {"type": "image", "data": "..."},
                    "stray string",
                    {"type": "text", "text": 7},
                ],
            },
        }
    )
    assert (m.text, m.role, m.session, m.shape) == ("first\nsecond", "assistant", "file-session", "transcript")


def test_transcript_string_content_and_skipped_entries():
    assert parse({"type": "message", "message": {"role": "user", "content": "hey"}}).text == "hey"
    assert parse({"type": "message", "message": {"role": "toolResult", "content": "file dump"}}) == Skip(
        "role toolResult"
    )
    assert parse(
        {"type": "message", "message": {"role": "assistant", "content": [{"type": "toolCall", "name": "x"}]}}
    ) == Skip("no text")
    for entry in (
        {"type": "session", "id": "abc", "cwd": "/"},
        {"type": "compaction", "summary": "..."},
        {"type": "model_change", "provider": "x", "modelId": "y"},
    ):
        assert isinstance(parse(entry), Skip)


def test_generic_chat_line():
    m = parse({"role": "user", "content": "plain"})
    assert (m.day, m.ts, m.session, m.role, m.sender, m.shape) == (
        "2026-11-20",
        None,
        "file-session",
        "user",
        "user",
        "chat",
    )


@pytest.mark.parametrize(
    "stamp,day",
    [
        ("2026-11-27T23:30:00Z", "2026-11-27"),
        ("2026-11-27T23:30:00-05:00", "2026-11-28"),  # an offset is converted to the UTC date
        ("2026-11-27", "2026-11-27"),
        (1795737600000, "2026-11-27"),  # JavaScript milliseconds
        (1795737600, "2026-11-27"),  # seconds
        ("2026-02-31T00:00:00Z", "2026-11-20"),  # impossible date: the file's day
        ("yesterday", "2026-11-20"),
        (None, "2026-11-20"),
        (True, "2026-11-20"),
        (1e300, "2026-11-20"),
    ],
)
def test_day_from_timestamp_else_file(stamp, day):
    assert parse({"role": "user", "content": "x", "timestamp": stamp}).day == day


def test_context_from_file_name(tmp_path):
    assert context_for(tmp_path / "raw" / "2026-11-27.jsonl") == LineContext("2026-11-27", "2026-11-27")
    assert context_for("/x/session-abc.jsonl").session == "session-abc"
    assert context_for("/x/2026-13-45.jsonl").day != "2026-13-45"


def test_wrongly_typed_metadata_falls_back():
    m = parse({"session_key": 5, "direction": 3, "sender": ["x"], "content": "text", "timestamp": {}})
    assert (m.session, m.role, m.sender, m.day) == ("file-session", "unknown", "unknown", "2026-11-20")


@pytest.mark.parametrize("direction", [["in"], {"in": 1}])
def test_an_unhashable_direction_falls_back_too(direction):
    """A list or object is no key of the roles table: once a TypeError that escaped the parser."""
    m = parse({"session_key": "s", "direction": direction, "content": "text"})
    assert (m.role, m.sender, m.shape) == ("unknown", "unknown", "recorder")


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"{not json", "malformed JSON"),
        (b'{"content": "x"', "malformed JSON"),
        (b"[1, 2]", "not a JSON object: list"),
        (b'"a string"', "not a JSON object: str"),
        (b"42", "not a JSON object: int"),
        (b'{"content": "caf\xe9"}', "invalid UTF-8 at byte 16"),
        (b"\x00\x01\x02\xff\xfe", "invalid UTF-8"),
        (b"\x00\x00\x00", "binary data (NUL bytes)"),
        (b'{"content": 5}', "content: expected a string or a list of parts, got int"),
        (b'{"content": {"text": "x"}}', "content: expected a string or a list of parts, got dict"),
        (b'{"type": "message", "message": "hello"}', "message: expected an object, got str"),
        (b'{"type": "message", "message": {"content": "x"}}', "message.role: expected a string, got NoneType"),
        (b'{"foo": 1}', "unknown shape"),
        (b"[" * 5000 + b"]" * 5000, "malformed JSON"),  # nesting past orjson's limit
    ],
)
def test_bad_lines_name_the_problem(raw, reason):
    with pytest.raises(BadLine, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse(raw)


def test_empty_and_blank_lines_are_skipped():
    assert parse(b"") == Skip("empty line")
    assert parse(b"  \t ") == Skip("empty line")


def test_duplicate_keys_and_huge_numbers_do_not_crash():
    assert parse(b'{"role": "user", "content": "a", "content": "b"}').text == "b"
    assert parse(b'{"role": "user", "content": "a", "timestamp": 123456789012345678901234567890}').day == "2026-11-20"
