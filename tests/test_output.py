"""What people read: rounded numbers with units, local times, and text from outside made harmless."""

from engram_ff.daemon.output import cell, duration, number, printable, size, table


def test_numbers_are_rounded_for_people():
    assert number(30.118446479000113) == "30.1"
    assert number(399.26953125) == "399"
    assert number(1.0) == "1"  # a rank
    assert number(2.3471234) == "2.347"
    assert number(0.00141) == "0.0014"
    assert number(-0.0517) == "-0.052"
    assert cell(None) == "-"


def test_sizes_and_durations():
    assert [size(n) for n in (0, 812, 1651, 23_456_789, 1.2e9)] == ["0 B", "812 B", "1.7 kB", "23 MB", "1.2 GB"]
    assert [duration(s) for s in (0.4, 42, 185, 720, 7800)] == ["0 s", "42 s", "3 min 5 s", "12 min", "2 h 10 min"]


def test_control_characters_are_escaped_in_every_cell():
    hostile = "new\nline\x1b[31mred\x07.jsonl"
    assert printable(hostile) == "new\\nline\\x1b[31mred\\x07.jsonl"
    out = table([{"path": hostile, "n": 1}], ["path", "n"])
    assert "\x1b" not in out and "\x07" not in out and out.count("\n") == 2  # header, rule, one row
    assert printable("ünïcödé \u2028x") == "ünïcödé \\u2028x"
