"""Helpers of the fuzz tests of the raw readers: byte-level corruptions (hypothesis strategies) and a PNG
writer for any colour type and bit depth (PIL cannot write 16-bit RGB, the format PIL silently reads as 8-bit).
"""
import os
import struct
import zlib

import numpy as np
from hypothesis import strategies as st

#: Hypothesis settings of the default suite and of the slow variant (run with ``-m slow``).
DEFAULT_EXAMPLES = 25
SLOW_EXAMPLES = 300


def corruptions(max_flips: int = 4):
    """Strategy of one corruption: ('truncate', fraction kept) or ('flip', [(fraction, xor mask), ...])."""
    truncate = st.tuples(st.just("truncate"), st.floats(0.0, 1.0, exclude_max=True))
    flips = st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)), min_size=1,
                     max_size=max_flips)
    return st.one_of(truncate, st.tuples(st.just("flip"), flips))


def corrupt(data: bytes, op) -> tuple:
    """Apply a corruption to ``data``; returns (damaged bytes, sorted offsets of the bytes that changed).

    A truncation keeps ``int(fraction * len)`` bytes (so always removes at least one). Flips XOR a byte with a
    non-zero mask; two flips of one byte combine, and a pair that cancels is no change.
    """
    kind, arg = op
    if kind == "truncate":
        return data[:int(arg * len(data))], []
    masks = {}
    for frac, mask in arg:
        pos = int(frac * len(data))
        masks[pos] = masks.get(pos, 0) ^ mask
    out = bytearray(data)
    for pos, mask in masks.items():
        out[pos] ^= mask
    return bytes(out), sorted(p for p, m in masks.items() if m)


def write_corrupted(path: str, original: bytes, op) -> list:
    """Write ``corrupt(original, op)`` to ``path``; returns the changed offsets."""
    data, changed = corrupt(original, op)
    with open(path, "wb") as f:
        f.write(data)
    return changed


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def write_png(path: str, pixels, colour_type: int, bit_depth: int) -> None:
    """Write a PNG of any colour type (0 grey, 2 RGB, 4 grey+alpha, 6 RGBA) at 8 or 16 bits per sample.

    Args:
      pixels: [H, W] or [H, W, C] integers (C = 1, 3, 2, 4 for the colour types above), within the bit depth.
    """
    a = np.asarray(pixels)
    h, w = a.shape[:2]
    a = a.reshape(h, w, -1).astype(">u2" if bit_depth == 16 else np.uint8)
    raw = b"".join(b"\x00" + a[r].tobytes() for r in range(h))  # filter type 0 (none) on every row
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) +
                _chunk(b"IEND", b""))


#: (name, colour type, bit depth, channels) of every pixel format the wrong-format tests try.
PNG_FORMATS = (("L", 0, 8, 1), ("I;16", 0, 16, 1), ("LA", 4, 8, 2), ("RGB", 2, 8, 3), ("RGB;16", 2, 16, 3),
               ("RGBA", 6, 8, 4))


def pixels_for(fmt, width: int, height: int, seed: int = 0):
    """Random pixels [H, W, C] for one of PNG_FORMATS."""
    _, _, bits, channels = fmt
    return np.random.default_rng(seed).integers(0, 2 ** bits, size=(height, width, channels))


def fuzz_variants(check, default: dict, slow: dict):
    """Two hypothesis tests of one property ``check`` (fixtures first, then the drawn arguments): the default
    suite's (``default`` strategies, DEFAULT_EXAMPLES) and a slow one (``slow`` strategies, SLOW_EXAMPLES)."""
    import pytest
    from hypothesis import HealthCheck, given, settings

    common = dict(deadline=None, suppress_health_check=list(HealthCheck))
    quick = settings(max_examples=DEFAULT_EXAMPLES, **common)(given(**default)(check))
    many = pytest.mark.slow(settings(max_examples=SLOW_EXAMPLES, **common)(given(**slow)(check)))
    return quick, many


def read_damaged(reader, path: str, error_type):
    """``reader(path)`` on a damaged file: its result, or None when it raised ``error_type`` with a message that
    starts with the file and says what was expected (recorded as the hypothesis event "raised")."""
    from hypothesis import event

    try:
        return reader(path)
    except error_type as e:
        assert str(e).startswith(path) and "expected" in str(e), e
        event("raised")
        return None
