"""The register-A prepared FP4 word (NOTES v15): search and bit-exact check.

The register-A wgmma family decodes, per lane and weight row, the bf16x2 pairs (k 2q, 2q + 1) and
(2q + 8, 2q + 9) of each k16 step. From today's linear bytes that is 6 instructions a pair
(DecodeE2m1Byte: SHF, PRMT, LOP3, IMAD, LOP3, then the block-scale HMUL2). A prepared layout that
puts a lane's 8 codes of two k16 steps in one 32-bit word can be decoded with fewer. This script

1. searches the bit placements for the cheapest decode of one word into 4 pairs, where a pair is
   taken either by a shift + the bf16 mask 0x81c0 (1 integer-ALU op, the shift on the FMA pipe) or
   by an isolating mask + one multiply that places the magnitude and sign copies + the mask
   (2 ALU + 1 IMAD), optionally from the word shifted right once (1 more ALU);
2. checks the chosen placement (fp4_decode.cuh, DecodePreparedEven / DecodePreparedOdd) against the
   e2m1 values on random words.

    python3 benchmarks/probes/prepared_layout.py
"""
import itertools
import struct

import numpy as np

MAG = [6, 7, 8]  # bf16 bits of e1 e0 m's targets: m -> 6, e0 -> 7, e1 -> 8 (value * 2^-126)
M = [6, 7, 8, 15, 22, 23, 24, 31]
MASK = 0x81C081C0


def _imad_sources(a, b):
    """Source bits (in the base word) of a pair placed by (x & iso) * (2^a + 2^b) & MASK."""
    mag = [m - a for m in MAG] + [m - a + 16 for m in MAG]
    sign = [15 - b, 31 - b]
    src = mag + sign
    if a == b or min(src) < 0 or len(set(src)) < 8:
        return None
    if {x + a for x in src} & {x + b for x in src}:  # the two copies would overlap: carries
        return None
    if any(x + a <= 31 and x + a in M for x in sign) or any(x + b <= 31 and x + b in M for x in mag):
        return None
    return src


def search():
    opts = []
    for d in range(17):  # base = w >> d (d > 0 costs one shift, shared by the pairs using it)
        for s in range(7):
            src = [m - s + d for m in M]
            if min(src) >= 0 and max(src) <= 31:
                opts.append((1, frozenset(src), ("shift", d, s)))
        for a in range(16):
            for b in range(16):
                r = _imad_sources(a, b)
                if r is not None and max(x + d for x in r) <= 31:
                    opts.append((2, frozenset(x + d for x in r), ("imad", d, a, b)))
    best = None
    for combo in itertools.combinations(opts, 4):
        used = set()
        for c in combo:
            if used & c[1]:
                break
            used |= c[1]
        else:
            if len(used) == 32:
                cost = sum(c[0] for c in combo) + len({c[2][1] for c in combo if c[2][1]})
                if best is None or cost < best[0]:
                    best = (cost, [c[2] for c in combo])
    return best


# The placement fp4_decode.cuh documents: pair -> (low element bits for m, e0, e1, sign), +16 for the high.
SRC = {0: [6, 7, 8, 15], 1: [3, 4, 5, 12], 2: [0, 1, 2, 14], 3: [9, 10, 11, 13]}
E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6]


def pack(codes):
    """codes[p][e]: the nibble of pair p, element e (0: low half) -> the prepared word."""
    w = 0
    for p in range(4):
        for e in range(2):
            for i, bit in enumerate(SRC[p]):
                w |= ((codes[p][e] >> i) & 1) << (bit + 16 * e)
    return w


def decode(w):
    m32 = 0xFFFFFFFF
    return [w & MASK, ((w << 3) & m32) & MASK, (((w & 0x40074007) * 66) & m32) & MASK,
            ((((w >> 3) & 0x05C005C0) * 33) & m32) & MASK]


def check(n=20000, seed=0):
    rng = np.random.default_rng(seed)
    bf16 = lambda h: struct.unpack("<f", struct.pack("<I", h << 16))[0]
    for _ in range(n):
        codes = [[int(x) for x in rng.integers(0, 16, 2)] for _ in range(4)]
        out = decode(pack(codes))
        for p in range(4):
            for e in range(2):
                c = codes[p][e]
                want = (-1 if c & 8 else 1) * E2M1[c & 7]
                assert bf16((out[p] >> (16 * e)) & 0xFFFF) * 2.0**126 == want, (codes, p, e)


if __name__ == "__main__":
    print("cheapest placement (ALU ops a word of 4 pairs, choice):", search())
    check()
    print("DecodePreparedEven / Odd placement: exact on 20000 random words")
