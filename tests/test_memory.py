"""The context memory (model/memory.py): the sparse top layer that learns a sentence from one reading."""

import logging
import math
import random
import string
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import torch

from engram_ff.daemon import ask, checkpoints, recipe, update
from engram_ff.ingest.reader import catch_up
from engram_ff.model import checkpoint as ckpt
from engram_ff.model.config import PRESETS, LMConfig
from engram_ff.model.generate import generate
from engram_ff.model.hashing import context_hashes
from engram_ff.model.lm import FFLM
from engram_ff.model.memory import PASS_SHARE, STAMP_MAX, STREAMS, ContextMemory, learn
from engram_ff.model.train import evaluate_nats
from engram_ff.state import queries, runs
from tests.daemon_helpers import recorder_line, write_day
from tests.test_incremental import make  # noqa: F401  (the fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FILLER = b"".join(
    b"user: tell me about day %d\nassistant: it was an ordinary day, number %d.\n\n" % (i, i) for i in range(60)
)
FACT = b"user: What is the door code at the studio?\nassistant: The studio door code is 47193.\n\n"


def tiny(memory: bool = True) -> FFLM:
    torch.manual_seed(0)
    return FFLM(PRESETS["tiny"] if memory else replace(PRESETS["tiny"], memory_bits=0))


def greedy(model: FFLM, prompt: bytes, n: int) -> bytes:
    return b"".join(generate(model, prompt, n, temperature=0.0))


def test_hashes_tell_orders_and_contexts_apart_and_depend_only_on_the_last_n_bytes():
    model = tiny()
    weights, P = model.memory.weights, model.memory.P
    a = torch.tensor([list(b"x" * (P - 3) + b"abcd")])
    b = torch.tensor([list(b"y" * (P - 3) + b"abcd")])
    ha, hb = context_hashes(a, weights)[0, -1], context_hashes(b, weights)[0, -1]  # [O] at the last byte
    orders = model.memory.orders
    for o, n in enumerate(orders):
        assert (ha[o] == hb[o]) == (n <= 4), n  # the same last 4 bytes, then x against y
    assert len(set(ha.tolist())) == len(orders)  # every order hashes to its own value


def test_an_empty_memory_changes_no_prediction():
    with_memory, without = tiny(), tiny(memory=False)
    without.load_state_dict({k: v for k, v in with_memory.state_dict().items() if not k.startswith("memory.")})
    x = torch.tensor([list(FACT)])
    assert torch.equal(with_memory(x)[0], without(x)[0])
    assert evaluate_nats(with_memory, FACT) == evaluate_nats(without, FACT)


def test_a_sentence_read_once_is_answered_by_greedy_generation():
    model = tiny()
    before = greedy(model, b"user: What is the door code at the studio?\nassistant: ", 32)
    learn(model, FILLER[: len(FILLER) // 2] + FACT + FILLER[len(FILLER) // 2 :])
    after = greedy(model, b"user: What is the door code at the studio?\nassistant: ", 32)
    assert b"47193" not in before and b"The studio door code is 47193." in after


def test_the_bytes_a_step_still_gets_wrong_settle():
    """After the pass, fewer bytes of the text it read are not the most likely one with settling than without
    (the tiny model: 135 of 4,506 without, 102 with 3 settling steps, when this was written)."""
    text = FILLER + FACT
    x = torch.tensor([list(text)])
    wrong = {}
    for settle in (0, 3):
        model = tiny()
        model.memory.settle = settle
        learn(model, text)
        with torch.no_grad():
            wrong[settle] = int((model(x[:, :-1])[0].argmax(-1) != x[:, 1:]).sum())
    assert 0 < wrong[3] < 0.8 * wrong[0]


def test_the_pass_scores_each_part_before_learning_it():
    """A text of one chunk per stream is scored before any row learns: its bits are the SSM layers' own (the
    match model, which copies what a stream repeats, is not part of what the memory learns over)."""
    model = tiny()
    text = FILLER[: STREAMS * 200 + 1]
    streams = [text[i * 200 : (i + 1) * 200 + 1] for i in range(STREAMS)]  # 200 predictions each
    match, model.match = model.match, None
    alone = sum(evaluate_nats(model, s) for s in streams) / STREAMS / math.log(2)
    model.match = match
    assert learn(model, text) == pytest.approx(alone, rel=1e-5)
    assert learn(model, text) < alone - 1  # read once: the same text again costs far less
    assert model.memory.used_rows() > 0 and model.memory.rows.abs().sum() > 0


def test_another_context_in_the_same_row_reads_as_empty():
    model = tiny()
    model.memory.claim_nats = 0.0  # every context gets a row, however predictable its byte,
    model.memory.claim_orders = 0  # and every order of it
    learn(model, FACT * 64)
    x = torch.tensor([list(FACT * 2)])
    h = context_hashes(torch.cat([model.memory.empty_context(1), x], 1), model.memory.weights)[:, model.memory.P :]
    vectors, idx, hit = model.memory.read(h)  # past the first P bytes, every context is one the text had
    assert hit.all() and vectors.abs().sum() > 0
    ways = model.memory.ways
    for way in range(ways):  # as if other contexts (tags are odd) had taken every row of each set since
        model.memory.tags[(idx & -ways) + way] += 2
    vectors, _, hit = model.memory.read(h)
    assert not hit.any() and vectors.abs().sum() == 0


def _full_set(memory: ContextMemory, h: torch.Tensor, stamps: list[int], seen: list[float]) -> torch.Tensor:
    """The rows of h's set, every one taken by another context, with these stamps and `seen`."""
    first, tag = memory.locate(h)
    rows = int(first) + torch.arange(memory.ways)
    memory.tags[rows] = torch.tensor([int(tag) ^ (2 * (i + 1)) for i in range(memory.ways)], dtype=torch.int16)
    memory.stamp[rows] = torch.tensor(stamps, dtype=torch.int16)
    memory.seen[rows] = torch.tensor(seen, dtype=torch.float16)
    memory.rows[rows] = 1.0
    return rows


def test_a_new_context_evicts_the_row_of_its_set_stepped_longest_ago_and_of_those_the_one_that_learned_least():
    memory = ContextMemory((2, 4), bits=6, dim=4, ways=4)
    memory.clock[0] = 9
    h = torch.tensor([[0x1234_5678_9ABC_DEF1, 0x0FED_CBA9_8765_4321]])  # one byte's two orders, both new
    rows = _full_set(memory, h[:, 0], stamps=[3, 7, 3, 5], seen=[5.0, 0.5, 2.0, 1.0])
    memory._claim(h)
    idx, hit, _ = memory.find(h[:, 0])
    assert bool(hit) and int(idx) == int(rows[2])  # stamp 3 twice: of those, the smaller `seen`
    assert memory.rows[idx].abs().sum() == 0 and memory.seen[idx] == 0 and memory.stamp[idx] == 9
    assert (memory.rows[rows[[0, 1, 3]]] == 1.0).all()  # the set's other rows are untouched
    memory.evict = "seen"  # the rule before: the row that learned least, however recently
    rows = _full_set(memory, h[:, 0], stamps=[3, 7, 3, 5], seen=[5.0, 0.5, 2.0, 1.0])
    memory._claim(h)
    assert int(memory.find(h[:, 0])[0]) == int(rows[1])


def test_one_pass_takes_at_most_half_of_a_set_from_older_passes():
    """A huge paste is one pass: it may not wipe everything learned before it."""
    memory = ContextMemory((2,), bits=6, dim=4, ways=4)
    memory.clock[0] = 9
    base = 0x1234_5678_9ABC_DEF1
    old = _full_set(memory, torch.tensor([base]), stamps=[1, 2, 3, 4], seen=[1.0] * 4)
    for i in range(1, 9):  # eight new contexts of that set (other tags, the same set bits), in the same pass
        memory._claim(torch.tensor([[base + (i << 54)]]))
    assert memory.stamp[old].tolist().count(9) == 2 and sorted(memory.stamp[old].tolist())[:2] == [3, 4]
    memory.tags[old[memory.stamp[old] == 3]] = 0  # an older row emptied: the pass, at its share, still takes it
    memory._claim(torch.tensor([[base + (20 << 54)]]))
    assert sorted(memory.stamp[old].tolist()) == [4, 9, 9, 9] and (memory.tags[old] != 0).all()


def test_a_byte_claims_rows_for_all_its_new_contexts_while_there_is_room_then_its_two_shortest_and_longest():
    memory = ContextMemory((2, 3, 4, 6, 8), bits=12, dim=4, ways=4)
    h = torch.tensor([[11 << 20, 22 << 20, 33 << 20, 44 << 20, 55 << 20]]) * 7919
    assert len(set(memory.locate(h)[0].flatten().tolist())) == 5  # five sets
    memory._claim(h)  # empty sets: every order
    assert memory.find(h)[1].all()
    memory.tags.zero_()
    for order in range(5):  # full sets, taken by other contexts
        _full_set(memory, h[:, order], stamps=[1] * 4, seen=[1.0] * 4)
    memory._claim(h[:, :1])  # the order-2 context gets a row first
    memory._claim(h)
    assert memory.find(h)[1].tolist() == [[True, True, True, False, True]]
    memory._claim(h, settling=True)  # a byte still wrong: the longest contexts still without one
    assert memory.find(h)[1].all()


def test_a_huge_paste_in_one_pass_leaves_what_came_before_it():
    """200 kB of random characters fill the tiny model's table; read in one pass they may take only half of each
    set, and the fact read before is still answered. Without that cap, or with the rule before (evict the row
    that learned least), the paste wiped it (a gate-refused call by day, 3.9 bits per byte worse, in test_today)."""
    noise = random.Random(0)
    paste = "".join(noise.choice(string.printable[:94]) for _ in range(200_000)).encode()
    answers = {}
    for share, evict in ((PASS_SHARE, "stamp"), (1.0, "stamp"), (PASS_SHARE, "seen")):
        model = tiny()
        model.memory.pass_share, model.memory.evict = share, evict
        learn(model, FILLER[: len(FILLER) // 2] + FACT + FILLER[len(FILLER) // 2 :])
        learn(model, paste)
        answers[share, evict] = greedy(model, b"user: What is the door code at the studio?\nassistant: ", 32)
    assert b"47193" in answers[PASS_SHARE, "stamp"]
    assert b"47193" not in answers[1.0, "stamp"] and b"47193" not in answers[PASS_SHARE, "seen"]


def test_the_clock_moves_every_stamp_back_at_its_end_and_keeps_their_order():
    memory = ContextMemory((2,), bits=4, dim=4, ways=2)
    memory.clock[0] = STAMP_MAX
    memory.stamp[:3] = torch.tensor([5, STAMP_MAX // 2 + 10, STAMP_MAX], dtype=torch.int16)
    memory.tick()
    assert memory.stamp[:3].tolist() == [0, 10, STAMP_MAX - STAMP_MAX // 2]
    assert int(memory.clock) == STAMP_MAX - STAMP_MAX // 2 + 1


def test_two_readings_of_the_same_text_on_two_threads_learn_the_same_bits(two_torch_threads):
    """A chunk's writes go to rows that several of its entries point at (two new contexts of one set; a context
    with no row points at its set's first): which write won was the threads' race, and two runs of the same
    night on 2 threads ended with different tables. Now each row takes one defined write."""
    text = (Path(__file__).resolve().parents[1] / "bench" / "data" / "plays" / "hamlet.txt").read_bytes()[:20000]
    tables = []
    for _ in range(2):
        torch.manual_seed(0)
        model = FFLM(PRESETS["tiny"])
        learn(model, text)
        tables.append(dict(model.memory.named_buffers()))
    assert all(torch.equal(tables[0][name], tables[1][name]) for name in tables[0])


def test_ways_must_be_a_power_of_two_and_a_checkpoint_without_them_reads_two():
    with pytest.raises(ValueError, match="power of 2"):
        ContextMemory((2,), bits=6, dim=4, ways=3)
    before = {k: v for k, v in PRESETS["tiny"].to_dict().items() if k != "memory_ways"}  # saved before ways
    assert LMConfig.from_dict(before).memory_ways == 2


def test_parallel_chunked_and_recurrent_reading_agree():
    model = tiny()
    learn(model, FILLER + FACT)
    x = torch.tensor([list(FACT + FILLER[:100])])
    whole, _ = model(x)
    first, state = model(x[:, :50])
    rest, _ = model(x[:, 50:], state)
    assert torch.allclose(torch.cat([first, rest], 1), whole, atol=1e-4)
    state, step, stepped = model.init_state(1), model.recurrent(), []
    with torch.inference_mode():
        for byte in x[0]:
            logits, state = step(state, byte[None])
            stepped.append(logits)
    assert torch.allclose(torch.stack(stepped, 1), whole, atol=1e-4)


def test_a_checkpoint_keeps_what_the_memory_learned_and_an_older_one_gets_an_empty_memory(tmp_path, make):  # noqa: F811
    model = tiny()
    learn(model, FILLER + FACT)
    ckpt.save_model(tmp_path / "m.pt", model)
    loaded = ckpt.load_model(tmp_path / "m.pt").model
    x = torch.tensor([list(FACT)])
    assert torch.equal(loaded(x)[0], model(x)[0])
    assert torch.equal(loaded.memory.tags, model.memory.tags)

    old = tiny(memory=False)  # saved before the memory existed: its config has no memory_* keys
    config, _ = make()
    checkpoints.upgrade(old, config)
    assert old.memory is not None and old.config.memory_bits == PRESETS["tiny"].memory_bits
    assert torch.equal(old(x)[0], tiny(memory=False)(x)[0])  # empty: the same predictions as before


def test_a_checkpoint_from_before_the_stamps_loads_with_every_row_as_old_as_the_others(tmp_path):
    model = tiny()
    learn(model, FILLER + FACT)
    ckpt.save_model(tmp_path / "m.pt", model)
    payload = ckpt.load_checkpoint(tmp_path / "m.pt")
    payload["model"] = {k: v for k, v in payload["model"].items() if k not in ("memory.stamp", "memory.clock")}
    ckpt.save_checkpoint(tmp_path / "before.pt", payload)
    loaded = ckpt.load_model(tmp_path / "before.pt").model
    assert loaded.memory.stamp.count_nonzero() == 0 and int(loaded.memory.clock) == 0
    assert torch.equal(loaded.memory.rows, model.memory.rows)
    learn(loaded, FACT)  # and it learns on, stamping what it steps
    assert int(loaded.memory.clock) == 1 and loaded.memory.stamp.count_nonzero() > 0


def test_a_fact_said_once_in_a_day_is_answered_after_the_night(make, caplog):  # noqa: F811
    """Through the daemon's own path: ingest, update (FF layers, then the memory's pass), gate, ask."""
    config, db = make()
    assert update.run_update(config)["status"] == "ok"
    day = "2026-01-02"
    question, answer = "What is the door code at the studio?", "The studio door code is 47193."
    lines = [recorder_line(day, n) for n in range(30)]
    said = [
        {
            "timestamp": f"{day}T11:00:00Z",
            "session_key": "fact",
            "direction": "in",
            "sender": "user",
            "content": question,
        },
        {
            "timestamp": f"{day}T11:00:05Z",
            "session_key": "fact",
            "direction": "out",
            "sender": "bot",
            "content": answer,
        },
    ]
    lines[15:15] = [orjson.dumps(line) + b"\n" for line in said]
    (config.watch / "raw" / f"{day}.jsonl").write_bytes(b"".join(lines))
    catch_up(db, config.watch)
    with caplog.at_level(logging.INFO, logger="engram_ff.daemon.update"):
        night = update.run_update(config)
    assert night["status"] == "ok" and "the context memory read" in caplog.text
    model = checkpoints.current_model(db)[0]
    who = ask.voices(db)
    assert "47193" in ask.answer(model, ask.prompt(question, who), who, max_bytes=64).decode()


def test_the_memory_reads_at_most_a_cap_of_the_nights_replay(make, monkeypatch):  # noqa: F811
    """A backlog's night replays twice its text; the memory reads its new text whole but no more than
    recipe.MEMORY_REPLAY_MAX_BYTES of the replay (a cap of 2 KiB here, so that a small night reaches it)."""
    config, db = make()
    assert update.run_update(config)["status"] == "ok"
    write_day(config.watch, "2026-01-02", 80)
    catch_up(db, config.watch)
    read: list[tuple[bytes, int]] = []

    def reading(model, text, rate=1.0, count_bytes=None):
        read.append((text, count_bytes))
        return learn(model, text, rate, count_bytes)

    monkeypatch.setattr(recipe, "MEMORY_REPLAY_MAX_BYTES", 2048)
    monkeypatch.setattr(update.memory, "learn", reading)
    night = update.run_update(config)
    assert night["status"] == "ok" and night["replay_bytes"] > 4096  # the layers train on all of it
    ((text, counted),) = read
    new, reread = queries.night_text(db, night), recipe.reread_text(db, night["id"], config.memory_reread_nights)
    assert counted == len(new) and text.startswith(new) and text.endswith(reread)
    assert len(text) == len(new) + 2 + 2048 + 2 + len(reread)  # the replay's first 2 KiB between them


def test_a_rejected_nights_retry_moves_the_rows_less():
    full, gentle = tiny(), tiny()
    learn(full, FILLER + FACT)
    learn(gentle, FILLER + FACT, rate=0.25)  # the retry rate after two rejected nights
    assert gentle.memory.row_lr == full.memory.row_lr  # the rate is the night's, not kept
    assert 0 < gentle.memory.rows.float().abs().sum() < 0.5 * full.memory.rows.float().abs().sum()


def test_the_memory_rereads_the_nights_one_two_and_four_promoted_nights_back(make):  # noqa: F811
    """recipe.reread_text over a real database: five days ingested, each trained by a night of its own
    (one more night rejected between them, which holds nothing), then tonight's reread."""
    config, db = make()
    days = [f"2026-02-0{d}" for d in range(1, 6)]
    for day in days:  # six lines a day name it: some are held out (probe split), never all six
        lines = [recorder_line(day, n, text=f"only on {day}, line {n}") for n in range(6)]
        (config.watch / "raw" / f"{day}.jsonl").write_bytes(b"".join(lines))
    catch_up(db, config.watch)
    for day in days:
        first, last = db.execute("SELECT min(id), max(id) FROM messages WHERE day = ?", [day]).fetchone()
        runs.finish_run(db, runs.start_run(db), "ok", first_message_id=first, last_message_id=last)
        if day == days[2]:
            runs.finish_run(db, runs.start_run(db), "rejected", first_message_id=first, last_message_id=last)
    tonight = runs.start_run(db)
    on = {day for day in days if f"only on {day}".encode() in recipe.reread_text(db, tonight, 3)}
    assert on == {days[4], days[3], days[1]}  # 1, 2 and 4 promoted nights back; the rejected one not counted
    assert recipe.reread_text(db, tonight, 0) == b""
    stretch = recipe.reread_text(db, tonight, 1, night_max_bytes=40)  # a backlog night: one stretch of it
    assert len(stretch) == 40 and stretch in recipe.reread_text(db, tonight, 1)
