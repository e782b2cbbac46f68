"""The language model's shape and its named presets, kept free of torch so that the daemon can
check `model_preset` at start without loading it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

VOCAB = 256  # a byte model: every byte value is a symbol


@dataclass
class LMConfig:
    n_layers: int = 3
    d_model: int = 128
    d_state: int = 128  # SSM channels per layer
    max_memory: float = 100.0  # bytes: the longest time constant an SSM channel may have
    mlp_mult: int = 2  # hidden width of each layer's GELU block, in units of d_model
    d_score: int = 64  # G: width of the candidate table
    goodness: str = "linear"  # "linear" (one matmul) or "relu" (nonlinear, broadcast over candidates)
    mlp_in_head: bool = True  # the GELU block feeds only this layer's head; the layer above gets the SSM stream
    memory_bits: int = 0  # the context memory (model/memory.py) has 2^bits rows; 0: none
    memory_dim: int = 8  # G: width of a memory row
    memory_orders: tuple[int, ...] = (2, 3, 4, 6, 8, 12, 16, 24, 32)  # context lengths it hashes, in bytes
    memory_ways: int = 2  # the rows a context may live in (set-associative); 2, what checkpoints before it used
    memory_count_orders: tuple[int, ...] = ()  # next-byte counts of these contexts under the rows (model/counts.py)
    memory_count_bits: int = 18  # the counts' table has 2^bits rows
    match: bool = False  # the match model (model/match.py): copies what the stream being read repeats; no weights

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LMConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown LMConfig keys: {sorted(unknown)}")
        for key in ("memory_orders", "memory_count_orders"):  # a checkpoint's JSON-like dict may hold a list
            if key in d:
                d = {**d, key: tuple(d[key])}
        return cls(**d)


PRESETS = {
    # Nightly CPU training: what the text benchmark's main model uses (chosen by short trials on 2 cores:
    # wider or deeper stacks trained fewer bytes per second and ended worse in 200-300 s; the GELU block
    # in the head let upper FF layers contribute; 3 x 128 keeps generation above 5,000 bytes/s, the layers alone;
    # with a trained memory and the match model, 1,965 bytes/s on one thread, 2,267 without the match model:
    # bench/results/match-sweep.md).
    # Counts of the last 1-4 bytes under the rows (model/counts.py, 42 MiB): on the frozen layers the later days
    # scored 2.109 bits per byte against 2.196, facts as before (bench/results/memory-sweep-14.md).
    # The context memory (model/memory.py): 2^23 rows of 8, 176 MiB. 34 days of 35 kB of dialogue filled 95 %
    # of 2^22 rows, and 30 days after the fact day 9 of 12 facts were answered; 2^23 rows were 61 % full and
    # kept 12 (bench/results/memory-sweep-8b.md, memory-sweep-9a.md).
    # The match model: the model of the night before predicted bench learning's fact day at 2.755 bits per byte
    # without it and 2.391 with it, the day after at 2.546 and 2.467 (bz2 -9: 2.423, 2.494; docs/match.md).
    "daemon": LMConfig(memory_bits=23, memory_ways=8, memory_count_orders=(1, 2, 3, 4), match=True),
    # 4 layers of 192, 2.6 times the parameters: in bench learning's 10 nights at the daemon's step limits it
    # predicted new days worse (2.591 bits per byte against 2.566; worse on 8 of 9 nights) and answered as many
    # facts, in about twice the wall time a night on 2 cores (bench/results/learning-large.md); no default.
    "large": LMConfig(
        n_layers=4,
        d_model=192,
        d_state=192,
        memory_bits=23,
        memory_ways=8,
        memory_count_orders=(1, 2, 3, 4),
        match=True,
    ),
    # Tests and smoke runs.
    "tiny": LMConfig(
        n_layers=2,
        d_model=32,
        d_state=32,
        mlp_mult=2,
        d_score=16,
        memory_bits=18,
        memory_ways=8,
        memory_count_orders=(1, 2, 3, 4),
        memory_count_bits=14,
        match=True,
    ),
}
