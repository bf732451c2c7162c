"""The course testbench's text format: write and read back, strictly.

A file is three header lines, each a single token ``#...#`` (no blanks; the course testbench skips them
with three ``$fscanf(fd, "%s", ...)``), then one data line per vector. ``acc_address.txt`` is the exception:
the template reads it with ``$fscanf(fd, "%11b", A_pmem)`` from its first line, so it has no header lines
(``headers=()``). A data line holds ``n`` values of ``bits`` bits as ASCII '0'/'1', MSB first, value ``n-1`` first
(so for activations input channel n-1 is in the MSBs). Signed values are two's complement: a line never
holds a '-' sign, sign-magnitude or a "negative zero". Lines end with '\\n'.

In memory a file is an int64 array ``[lines, n]`` in natural order (column 0 = channel 0). Writing a value
that does not fit and reading anything malformed raise :class:`qmap.errors.HardwareError` naming the file
and the 1-based line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import HardwareError
from ..io import atomic_write_text
from .spec import int_range

N_HEADER_LINES = 3


def header_line(token: str) -> str:
    """``#token#``; the token must be non-empty and hold no blank or '#'."""
    if not token or any(ch.isspace() or ch == "#" for ch in token):
        raise HardwareError(f"header token {token!r} must be one word without blanks or '#'")
    return f"#{token}#"


def format_vectors(data: np.ndarray, bits: int, signed: bool, headers: tuple[str, ...], name: str) -> str:
    """Text of a file holding ``data[lines, n]`` after ``headers`` (three tokens, or ``()`` for a headerless
    file); raises if a value does not fit (naming file and line)."""
    if len(headers) not in (0, N_HEADER_LINES):
        raise HardwareError(f"{name}: need {N_HEADER_LINES} header tokens or none, got {len(headers)}")
    arr = np.asarray(data, dtype=np.int64)
    if arr.ndim != 2:
        raise HardwareError(f"{name}: data must be 2-D [lines, values], got shape {arr.shape}")
    lo, hi = int_range(bits, signed)
    lines = [header_line(h) for h in headers]
    bad = (arr < lo) | (arr > hi)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise HardwareError(f"{name} line {i + len(headers) + 1}: value {int(arr[i, j])} (index {j}) does not "
                            f"fit {bits}-bit {'signed' if signed else 'unsigned'} [{lo}, {hi}]")
    # digits[i, j, b] = bit (bits-1-b) of value n-1-j: value n-1 first, MSB first
    digits = (arr[:, ::-1, None] >> np.arange(bits - 1, -1, -1)) & 1
    body = (digits.reshape(len(arr), arr.shape[1] * bits) + ord("0")).astype(np.uint8)
    body = np.concatenate([body, np.full((len(arr), 1), ord("\n"), np.uint8)], axis=1)
    return "".join(line + "\n" for line in lines) + body.tobytes().decode("ascii")


def write_vectors(path: str | Path, data: np.ndarray, bits: int, signed: bool,
                  headers: tuple[str, ...]) -> None:
    atomic_write_text(path, format_vectors(data, bits, signed, headers, Path(path).name))


def parse_vectors(text: str | bytes, name: str, n_values: int, bits: int, signed: bool,
                  n_lines: int | None = None, headered: bool = True) -> np.ndarray:
    """Parse a file's text into ``[lines, n_values]`` int64 (natural order). Any deviation from the format
    (encoding, header lines present iff ``headered``, line length, characters, line count) raises
    :class:`HardwareError`."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError as e:
            raise HardwareError(f"{name}: not ASCII text (byte {e.start})") from None
    if not text.endswith("\n"):
        raise HardwareError(f"{name}: must end with a newline")
    lines = text[:-1].split("\n")
    n_head = N_HEADER_LINES if headered else 0
    if len(lines) < n_head:
        raise HardwareError(f"{name}: expected {n_head} header lines, file has {len(lines)} lines")
    for i, line in enumerate(lines[:n_head]):
        if len(line) < 3 or line[0] != "#" or line[-1] != "#" or any(c.isspace() or c == "#" for c in line[1:-1]):
            raise HardwareError(f"{name} line {i + 1}: header must be one token '#...#', got {line[:40]!r}")
    body = lines[n_head:]
    if n_lines is not None and len(body) != n_lines:
        raise HardwareError(f"{name}: expected {n_lines} data lines, found {len(body)}")
    width = n_values * bits
    out = np.zeros((len(body), n_values), dtype=np.int64)
    weights = 1 << np.arange(bits - 1, -1, -1, dtype=np.int64)
    for i, line in enumerate(body):
        where = f"{name} line {i + n_head + 1}"
        if len(line) != width or line.strip("01"):
            raise HardwareError(f"{where}: expected {width} characters '0'/'1' ({n_values} x {bits} bits), "
                                f"got {line[:40]!r}{'...' if len(line) > 40 else ''} (length {len(line)})")
        digits = np.frombuffer(line.encode("ascii"), dtype=np.uint8).reshape(n_values, bits) - ord("0")
        vals = digits.astype(np.int64) @ weights
        if signed:
            vals = np.where(vals >= 1 << (bits - 1), vals - (1 << bits), vals)
        out[i] = vals[::-1]
    return out


def read_vectors(path: str | Path, n_values: int, bits: int, signed: bool, n_lines: int | None = None,
                 headered: bool = True) -> np.ndarray:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise HardwareError(f"cannot read {p}: {e.strerror}") from None
    return parse_vectors(raw, p.name, n_values, bits, signed, n_lines, headered)
