"""A small PNG codec in numpy + zlib: enough to write previews and read dataset labels.

Reads 8-bit grey and RGB, non-interlaced PNGs (every filter type); anything else is refused
with a message saying what the file is. Writes 8-bit grey or RGB with no filtering.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from mtsc.errors import MtscError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS_BY_COLOR_TYPE = {0: 1, 2: 3}
_COLOR_TYPE_NAMES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 array shaped [H, W] (grey) or [H, W, 3] (RGB)."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"PNG pixels must be uint8, got {pixels.dtype}")
    if pixels.ndim == 2:
        color_type = 0
    elif pixels.ndim == 3 and pixels.shape[2] == 3:
        color_type = 2
    else:
        raise ValueError(f"PNG pixels must be [H, W] or [H, W, 3], got {list(pixels.shape)}")
    height, width = pixels.shape[:2]
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    # Filter type 0 (none) in front of every row.
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)),
            _chunk(b"IEND", b""),
        )
    )


def write_png(path: str | Path, pixels: np.ndarray) -> None:
    Path(path).write_bytes(encode_png(pixels))


def _read_chunks(data: bytes, name: str) -> tuple[bytes, bytes]:
    """The IHDR payload and the concatenated IDAT payloads, checking every CRC."""
    if not data.startswith(PNG_SIGNATURE):
        raise MtscError(None, f"{name}: not a PNG file (bad signature)")
    pos = len(PNG_SIGNATURE)
    header = b""
    idat = []
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        crc_bytes = data[pos + 8 + length : pos + 12 + length]
        if len(payload) != length or len(crc_bytes) != 4:
            raise MtscError(None, f"{name}: truncated PNG ({kind.decode('latin-1')} chunk)")
        if struct.unpack(">I", crc_bytes)[0] != zlib.crc32(kind + payload) & 0xFFFFFFFF:
            raise MtscError(None, f"{name}: corrupt PNG (bad CRC in {kind.decode('latin-1')})")
        if kind == b"IHDR":
            header = payload
        elif kind == b"IDAT":
            idat.append(payload)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if len(header) != 13 or not idat:
        raise MtscError(None, f"{name}: truncated PNG (no IHDR or IDAT chunk)")
    return header, b"".join(idat)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _unfilter(filters: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """Undo PNG row filters. `residuals` is [H, W, C] int32; returns [H, W, C] uint8.

    Pixel (r, x) depends on (r, x-1), (r-1, x) and (r-1, x-1) only, so every anti-diagonal
    r + x = d can be reconstructed at once from the two before it: H + W vectorised steps
    instead of H * W scalar ones.
    """
    height, width, _ = residuals.shape
    if np.all(filters <= 2):
        return _unfilter_rows(filters, residuals)
    out = np.zeros((height + 1, width + 1, residuals.shape[2]), np.int32)
    for d in range(height + width - 1):
        rows = np.arange(max(0, d - width + 1), min(height, d + 1))
        cols = d - rows
        left = out[rows + 1, cols]
        up = out[rows, cols + 1]
        up_left = out[rows, cols]
        kind = filters[rows][:, None]
        prediction = np.select(
            [kind == 1, kind == 2, kind == 3, kind == 4],
            [left, up, (left + up) >> 1, _paeth(left, up, up_left)],
            0,
        )
        out[rows + 1, cols + 1] = (residuals[rows, cols] + prediction) & 0xFF
    return out[1:, 1:].astype(np.uint8)


def _unfilter_rows(filters: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """The common case of only None/Sub/Up filters: each row is a whole-row operation."""
    out = np.empty(residuals.shape, np.uint8)
    previous = np.zeros(residuals.shape[1:], np.int32)
    for r, kind in enumerate(filters):
        row = residuals[r]
        if kind == 1:
            row = np.cumsum(row, axis=0)
        elif kind == 2:
            row = row + previous
        previous = row & 0xFF
        out[r] = previous
    return out


def decode_png(data: bytes, name: str = "<png>") -> np.ndarray:
    """Pixels of an 8-bit grey ([H, W]) or RGB ([H, W, 3]) non-interlaced PNG, as uint8."""
    header, compressed = _read_chunks(data, name)
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    kind = _COLOR_TYPE_NAMES.get(color_type, f"color type {color_type}")
    if depth != 8 or color_type not in _CHANNELS_BY_COLOR_TYPE or interlace != 0:
        layout = f"{depth}-bit {kind}{', interlaced' if interlace else ''}"
        raise MtscError(
            None,
            f"{name}: unsupported PNG ({layout}); mtsc reads 8-bit grey or RGB non-interlaced "
            "PNGs only (re-save the file in one of those formats)",
        )
    channels = _CHANNELS_BY_COLOR_TYPE[color_type]
    try:
        raw = zlib.decompress(compressed)
    except zlib.error as err:
        raise MtscError(None, f"{name}: corrupt PNG image data ({err})") from None
    stride = 1 + width * channels
    if len(raw) != height * stride:
        raise MtscError(None, f"{name}: corrupt PNG (image data has the wrong length)")
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride)
    filters = rows[:, 0]
    if np.any(filters > 4):
        raise MtscError(None, f"{name}: corrupt PNG (unknown row filter {filters.max()})")
    residuals = rows[:, 1:].reshape(height, width, channels).astype(np.int32)
    pixels = _unfilter(filters, residuals)
    return pixels[:, :, 0] if channels == 1 else pixels


def read_png(path: str | Path) -> np.ndarray:
    path = Path(path)
    return decode_png(path.read_bytes(), str(path))
