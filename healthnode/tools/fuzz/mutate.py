"""Seeded mutations of a seed corpus, for the test suite's short, repeatable pass over every
target (tests/test_fuzz.py).

libFuzzer's mutations are guided by coverage and change from run to run; the suite needs the same
inputs at every run, in a second or two, without atheris. These are libFuzzer's kinds of
mutation (a bit flipped, a byte set to a boundary value, bytes inserted, erased, repeated or
copied from another seed) and two that break parsers: a run of opening brackets and a long
number. One `random.Random(seed)` draws them all, so a failure names the seed and the index that
make its input again.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Final

_BOUNDARY_BYTES: Final = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xC0, 0xC3, 0x90, 0x9F, 0xDC, 0xDD,
                          0xCC, 0xCD, 0xCF, 0xD3, 0xC4, 0xC6, 0xA0, 0xD9, 0x22, 0x5B, 0x7B,
                          0x0A, 0x3D)


def _mutate_once(data: bytearray, rng: random.Random, seeds: Sequence[bytes]) -> None:
    at = rng.randrange(len(data) + 1)
    kind = rng.randrange(9)
    if kind == 0 and data:
        data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
    elif kind == 1 and data:
        data[min(at, len(data) - 1)] = rng.choice(_BOUNDARY_BYTES)
    elif kind == 2:
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    elif kind == 3 and data:
        del data[at:at + rng.randint(1, 8)]
    elif kind == 4 and data:
        start = rng.randrange(len(data))
        data[at:at] = data[start:start + rng.randint(1, 16)] * rng.randint(1, 4)
    elif kind == 5:
        other = rng.choice(seeds)
        start = rng.randrange(len(other) + 1)
        data[at:at] = other[start:start + rng.randint(1, 64)]
    elif kind == 6:
        del data[at:]
    elif kind == 7:
        data[at:at] = rng.choice((b"[", b"{\"a\":", b"\x91", b"a=[")) * rng.choice((65, 1100))
    else:
        data[at:at] = b"9" * rng.choice((21, 4301))


def mutations(seeds: Sequence[bytes], count: int, seed: int, max_len: int) -> Iterator[bytes]:
    """`count` inputs, each a seed changed by one to four mutations, at most `max_len` bytes."""
    rng = random.Random(seed)  # noqa: S311 - a replayable sequence of inputs, not a secret
    pool = [bytes(s) for s in seeds] or [b""]
    for _ in range(count):
        data = bytearray(rng.choice(pool))
        for _ in range(rng.randint(1, 4)):
            _mutate_once(data, rng, pool)
        yield bytes(data[:max_len])
