"""Checked reading of raw dataset files: PNG structure and pixel format, required paths, plausible joints.

Every reader of a raw dataset (NYU, ICVL, MSRA, STB, RHD) and ``experiments.predict`` read their PNGs through
:func:`read_png`, which checks the file before PIL decodes it:

* the structure: the 8-byte signature, an IHDR chunk first, every chunk complete and its CRC-32 right, an IEND
  chunk at the end. A truncated file, or any flipped byte in any chunk, raises instead of decoding to wrong
  pixels (PIL checks neither the CRC of the image data nor a missing end);
* the pixel format from IHDR (colour type and bit depth), so that e.g. a 16-bit-per-channel RGB PNG, which PIL
  silently reduces to 8 bits, or an 8-bit greyscale image given where depth in mm is expected, is refused;
* the size, before the pixels are decoded (no decompression of a huge image that is refused anyway).

:func:`check_hand_joints` refuses joints that cannot be a hand: non-finite values, a joint behind the camera or
beyond the sensor range, or joints spread wider than any hand (a corrupted coordinate).

Errors are :class:`RawDataError` (a ``ValueError``) whose message starts with the file (and line) and says what
was expected and what was found.

Legend: H, W image size, C channels, J joints.
"""
from __future__ import annotations

import io
import multiprocessing
import os
import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type -> (name, channels)
COLOUR_TYPES = {0: ("greyscale", 1), 2: ("RGB", 3), 3: ("palette", 1), 4: ("greyscale+alpha", 2), 6: ("RGBA", 4)}
#: The PIL mode names users know, for messages: (colour type, bit depth) -> mode.
_PIL_MODES = {(0, 1): "1", (0, 8): "L", (0, 16): "I;16", (2, 8): "RGB", (2, 16): "RGB;16", (3, 8): "P",
              (4, 8): "LA", (4, 16): "LA;16", (6, 8): "RGBA", (6, 16): "RGBA;16"}
#: No hand is this wide: a larger bounding-box diagonal of the joints means a corrupted coordinate.
MAX_HAND_EXTENT_MM = 400.0


class RawDataError(ValueError):
    """A raw dataset file is missing or does not have the documented format."""


def require_file(path: str, what: str) -> str:
    """Raise RawDataError naming ``path`` unless it is an existing file."""
    if not os.path.isfile(path):
        raise RawDataError(f"{path}: expected {what}, file not found")
    return path


def require_dir(path: str, what: str) -> str:
    """Raise RawDataError naming ``path`` unless it is an existing directory."""
    if not os.path.isdir(path):
        raise RawDataError(f"{path}: expected {what}, directory not found")
    return path


def png_mode(colour_type: int, bit_depth: int) -> str:
    """PIL-style name of a PNG pixel format, e.g. (0, 16) -> 'I;16'."""
    return _PIL_MODES.get((colour_type, bit_depth), f"{COLOUR_TYPES.get(colour_type, ('?',))[0]};{bit_depth}")


def png_header(data: bytes, path: str) -> dict:
    """Check a PNG's chunk structure and CRCs; return its IHDR fields.

    Args:
      data: the whole file. path: for messages.
    Returns:
      dict ``width``, ``height``, ``bit_depth``, ``colour_type``, ``mode`` (PIL-style name).
    Raises:
      RawDataError naming the file: not a PNG, truncated, a chunk with a wrong CRC, IHDR not first or malformed,
      no IEND chunk.
    """
    if data[:8] != PNG_SIGNATURE:
        raise RawDataError(f"{path}: expected a PNG file (8-byte PNG signature), found {data[:8]!r}")
    pos, header, n = 8, None, len(data)
    while True:
        if pos + 8 > n:
            raise RawDataError(f"{path}: expected a complete PNG ending with an IEND chunk, found the file cut "
                               f"after {n} bytes (truncated)")
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > n:
            raise RawDataError(f"{path}: expected a {length}-byte {ctype!r} chunk at byte {pos}, found the file cut "
                               f"after {n} bytes (truncated or a damaged length field)")
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(ctype + body) != crc:
            raise RawDataError(f"{path}: expected a valid CRC-32 for the {ctype!r} chunk at byte {pos}, found a "
                               f"mismatch (the file is damaged)")
        if header is None:
            if ctype != b"IHDR" or length != 13:
                raise RawDataError(f"{path}: expected the 13-byte IHDR chunk first, found {ctype!r} of {length} bytes")
            width, height, bit_depth, colour_type = struct.unpack(">IIBB", body[:10])
            header = {"width": width, "height": height, "bit_depth": bit_depth, "colour_type": colour_type,
                      "mode": png_mode(colour_type, bit_depth)}
        if ctype == b"IEND":
            return header
        pos = end


def read_png(path: str, *, what: str, colour_types, bit_depths, size=None) -> np.ndarray:
    """Read a PNG after checking its structure, pixel format and size.

    Args:
      what: what the file should be, for messages (e.g. "an ICVL depth PNG (16-bit greyscale, mm)").
      colour_types: accepted PNG colour types (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA).
      bit_depths: accepted bits per sample. size: (width, height), or None for any.
    Returns:
      [H, W] (grey, palette) or [H, W, C] pixels: uint8 for 8-bit (and lower) samples, uint16 for 16-bit.
    Raises:
      RawDataError naming the file: missing, damaged (see :func:`png_header`), wrong pixel format, wrong size,
      or undecodable.
    """
    require_file(path, what)
    with open(path, "rb") as f:
        data = f.read()
    head = png_header(data, path)
    if head["colour_type"] not in colour_types or head["bit_depth"] not in bit_depths:
        modes = " or ".join(png_mode(c, b) for c in colour_types for b in bit_depths if (c, b) in _PIL_MODES)
        name = COLOUR_TYPES.get(head["colour_type"], ("unknown colour type",))[0]
        raise RawDataError(f"{path}: expected {what} (PNG mode {modes}), found mode {head['mode']!r} "
                           f"({head['bit_depth']}-bit {name})")
    if size is not None and (head["width"], head["height"]) != tuple(size):
        raise RawDataError(f"{path}: expected {size[0]}x{size[1]} pixels, found {head['width']}x{head['height']} "
                           f"(the file should be {what})")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            arr = np.asarray(img)
    except Exception as e:  # PIL raises several types on data that passed the CRCs but does not decode
        raise RawDataError(f"{path}: expected a decodable PNG ({what}), PIL failed: {e}") from e
    channels = COLOUR_TYPES[head["colour_type"]][1]
    expected_shape = (head["height"], head["width"]) + ((channels,) if channels > 1 else ())
    if arr.shape != expected_shape:
        raise RawDataError(f"{path}: expected decoded pixels of shape {expected_shape}, found {arr.shape}")
    return arr.astype(np.uint16 if head["bit_depth"] == 16 else np.uint8, copy=False)


def read_mat(path: str, *, what: str, allowed=None) -> dict:
    """Load a MATLAB v5 .mat file after checking that none of it is missing.

    scipy reads a MAT v5 file whose last variable is cut short as if that variable did not exist, so the
    top-level elements are walked first (128-byte header, then elements of an 8-byte tag and their data, padded
    to 8 bytes unless compressed): they must end exactly at the end of the file.

    Args:
      what: what the file should be, for messages. allowed: the variable names the file may hold (None: any);
        a damaged name then raises instead of the variable silently going missing.
    Returns:
      ``scipy.io.loadmat``'s dict without the ``__header__``-style entries.
    Raises:
      RawDataError naming the file: missing, not MAT v5 (e.g. v7.3 HDF5), truncated, unreadable, or holding a
      variable outside ``allowed``.
    """
    require_file(path, what)
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 128 or data[126:128] not in (b"IM", b"MI"):
        raise RawDataError(f"{path}: expected {what} (a MATLAB v5 .mat file with a 128-byte header), found "
                           f"{len(data)} bytes without the v5 header (a MATLAB v7.3/HDF5 file is not read)")
    order = "<" if data[126:128] == b"IM" else ">"
    pos = 128
    while pos < len(data):
        if pos + 8 > len(data):
            raise RawDataError(f"{path}: expected {what}, found the file cut inside an element tag at byte {pos} "
                               "(truncated)")
        dtype, nbytes = struct.unpack(order + "II", data[pos:pos + 8])
        pos += 8 + nbytes + (0 if dtype == 15 else -nbytes % 8)  # 15 = miCOMPRESSED, not padded
    if pos != len(data):
        raise RawDataError(f"{path}: expected {what}, found its last element needing {pos} bytes in a "
                           f"{len(data)}-byte file (truncated or a damaged element size)")
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # scipy's compiled MAT reader can crash the whole process (segmentation fault) on a damaged element (found
    # by tests/test_fuzz_raw.py, about 2 % of random byte flips), so it runs in a forked child: a crash there
    # becomes this error. The file is read once per split, so the fork costs little.
    try:
        if multiprocessing.current_process().daemon:  # a pool worker may not fork children: read in place
            out = _loadmat_bytes(data, isolated=False)
        else:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
                out = pool.submit(_loadmat_bytes, data).result()
    except BrokenProcessPool as e:
        raise RawDataError(f"{path}: expected {what}; scipy.io.loadmat crashed on it (a damaged file)") from e
    except Exception as e:  # scipy raises several types on damaged data
        raise RawDataError(f"{path}: expected {what} readable by scipy.io.loadmat: {e}") from e
    if allowed is not None and set(out) - set(allowed):
        raise RawDataError(f"{path}: expected only the variables {sorted(allowed)} ({what}), found also "
                           f"{sorted(set(out) - set(allowed))}")
    return out


def _loadmat_bytes(data: bytes, isolated: bool = True) -> dict:
    """scipy.io.loadmat of a file's bytes, without the ``__header__``-style entries (``isolated``: in a child)."""
    import faulthandler

    import scipy.io

    if isolated:
        faulthandler.disable()  # a crash here is reported by the parent as RawDataError; no stack dump on stderr

    return {k: v for k, v in scipy.io.loadmat(io.BytesIO(data)).items() if not k.startswith("__")}


def check_hand_joints(joints, where: str, depth_range=(10.0, 2000.0)) -> np.ndarray:
    """Refuse joints [J, 3] (camera mm) that cannot be a hand; return them as float64.

    Raises:
      RawDataError naming ``where``: a non-finite value, a z outside ``depth_range`` (the sensor's, mm), or a
      bounding-box diagonal above MAX_HAND_EXTENT_MM.
    """
    j = np.asarray(joints, dtype=np.float64)
    if j.ndim != 2 or j.shape[1] != 3 or len(j) == 0:
        raise RawDataError(f"{where}: expected joints of shape [J, 3], found {j.shape}")
    if not np.all(np.isfinite(j)):
        raise RawDataError(f"{where}: expected finite joint coordinates, found NaN/Inf")
    lo, hi = depth_range
    if j[:, 2].min() < lo or j[:, 2].max() > hi:
        raise RawDataError(f"{where}: expected joint depths z in [{lo:g}, {hi:g}] mm (in front of the camera, "
                           f"within the sensor's range), found [{j[:, 2].min():.1f}, {j[:, 2].max():.1f}]")
    extent = float(np.linalg.norm(j.max(axis=0) - j.min(axis=0)))
    if extent > MAX_HAND_EXTENT_MM:
        raise RawDataError(f"{where}: expected the joints of one hand (bounding-box diagonal <= "
                           f"{MAX_HAND_EXTENT_MM:g} mm), found {extent:.1f} mm (a corrupted coordinate?)")
    return j
