"""Read (and, for tests, write) MXNet NDArray `.params` files with NumPy alone.

The ademxapp ImageNet weights PSA starts from are in this format; reading it ourselves means nobody
has to install MXNet (which no longer builds on current Python). Layout, all little-endian, from
MXNet's ndarray.cc Save/Load and dmlc-core's serializer (see docs/reference.md):

    u64 magic 0x112, u64 reserved, u64 n, n array records, u64 m (0 or n), m x (u64 len, bytes)

An array record is one of four layouts, told apart by its first u32:
    V2 0xF993FAC9 / V3 0xF993FACA: i32 storage type, shape (i32 ndim, ndim x i64), context, dtype, data
    V1 0xF993FAC8:                 shape (i32 ndim, ndim x i64), context, dtype, data
    legacy (anything else):        that u32 is ndim, ndim x u32 dims, context, dtype, data
An empty array (ndim 0; in V3 an unknown shape, ndim -1) ends right after its shape.
"""
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .fileio import write_bytes

FILE_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA
LAYOUTS = {V1_MAGIC: "v1", V2_MAGIC: "v2", V3_MAGIC: "v3"}

# MXNet dtype flag -> little-endian NumPy dtype. 12 (bfloat16) has no NumPy type: read as u16 bits.
DTYPES = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8", 7: "?",
          8: "<i2", 9: "<u2", 10: "<u4", 11: "<u8", 12: "<u2"}
BFLOAT16 = 12
DTYPE_FLAGS = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items() if k != BFLOAT16}
STORAGE = {0: "dense", 1: "row_sparse", 2: "csr"}
CONTEXTS = (1, 2, 3, 5)  # cpu, gpu, cpu_pinned, cpu_shared; anything else means a garbled record
MAX_NDIM = 32            # MXNet's own limit; a larger ndim means we are not reading a shape


@dataclass
class Record:
    """One array record as found in the file (`array` is None when not loaded)."""
    name: str          # full name as stored (with `arg:`/`aux:`), None when the file has no names
    layout: str        # legacy / v1 / v2 / v3
    offset: int        # byte offset of the record
    shape: tuple       # None for an empty record
    dtype_flag: int    # None for an empty record
    array: np.ndarray = None


class _Reader:
    """Sequential reads that name the file and byte offset when something does not fit."""

    def __init__(self, path, f, size):
        self.path, self.f, self.size, self.pos = path, f, size, 0

    def fail(self, what, offset=None):
        raise InputError(f"{self.path}: {what} at byte offset {self.pos if offset is None else offset} "
                         f"(not a valid MXNet .params file, or a truncated/corrupt copy)")

    def need(self, n, what):
        if n > self.size - self.pos:
            self.fail(f"truncated: {what} needs {n} bytes but only {self.size - self.pos} remain")

    def take(self, n, what):
        self.need(n, what)
        b = self.f.read(n)
        if len(b) != n:  # the file shrank under us
            self.fail(f"short read of {what}")
        self.pos += n
        return b

    def unpack(self, fmt, what):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def data(self, dtype, count, what, load):
        dtype = np.dtype(dtype)
        n = dtype.itemsize * count
        self.need(n, what)
        if not load:
            self.f.seek(n, 1)
            self.pos += n
            return None
        buf = bytearray(n)  # writable, read straight in: no second copy of a 500 MB file
        if self.f.readinto(buf) != n:
            self.fail(f"short read of {what}")
        self.pos += n
        return np.frombuffer(buf, dtype=dtype)


def _read_record(r: _Reader, load: bool) -> Record:
    start = r.pos
    (magic,) = r.unpack("I", "array record header")
    layout = LAYOUTS.get(magic, "legacy")
    if layout in ("v2", "v3"):
        (stype,) = r.unpack("i", "storage type")
        if stype in (1, 2):
            r.fail(f"array record uses sparse storage ({STORAGE[stype]}), which this reader does not "
                   f"support (save it as dense in MXNet first)", start)
        if stype != 0:
            r.fail(f"unknown storage type {stype} in array record", start + 4)
    if layout == "legacy":
        ndim = magic
        if ndim > MAX_NDIM:
            r.fail(f"array record starts with 0x{magic:08X}: neither a known NDArray magic nor a "
                   f"plausible legacy ndim", start)
        shape = r.unpack(f"{ndim}I", "legacy shape") if ndim else ()
    else:
        at = r.pos
        (ndim,) = r.unpack("i", "shape ndim")
        if ndim < -1 or ndim > MAX_NDIM:
            r.fail(f"implausible ndim {ndim}", at)
        shape = r.unpack(f"{ndim}q", "shape dims") if ndim > 0 else ()
        if any(d < -1 for d in shape) or (layout != "v3" and any(d < 0 for d in shape)):
            r.fail(f"negative dimension in shape {shape}", at)
    # Empty NDArray: ndim 0 (V3: unknown shape, ndim -1 or a -1 dim; ndim 0 there is a scalar).
    if (layout == "v3" and (ndim == -1 or -1 in shape)) or (layout != "v3" and ndim <= 0):
        return Record(None, layout, start, None, None,
                      np.empty((0,), np.float32) if load else None)
    at = r.pos
    dev_type, _dev_id = r.unpack("ii", "context")
    if dev_type not in CONTEXTS:
        r.fail(f"unknown device type {dev_type} in array context", at)
    at = r.pos
    (flag,) = r.unpack("i", "dtype flag")
    if flag not in DTYPES:
        r.fail(f"unknown dtype flag {flag} (known: 0..12)", at)
    count = math.prod(shape)  # Python ints: a garbled shape must not wrap around
    arr = r.data(DTYPES[flag], count, f"data of a {shape} array", load)
    if arr is not None:
        if flag == BFLOAT16:  # bfloat16 is the top half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        arr = arr.astype(arr.dtype.newbyteorder("="), copy=False).reshape(shape)
    return Record(None, layout, start, tuple(shape), flag, arr)


def read_records(path, load=True):
    """Parse the whole file into `Record`s; raise InputError unless it ends exactly at its last byte."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot open MXNet .params file ({e.strerror})") from None
    with f:
        r = _Reader(path, f, os.fstat(f.fileno()).st_size)
        magic, _reserved = r.unpack("QQ", "file header")
        if magic != FILE_MAGIC:
            r.fail(f"bad magic 0x{magic:X} (expected 0x{FILE_MAGIC:X})", 0)
        at = r.pos
        (n,) = r.unpack("Q", "array count")
        if n * 4 > r.size - r.pos:  # every record has at least a 4-byte header
            r.fail(f"truncated or garbled: array count {n} needs at least {4 * n} bytes but only "
                   f"{r.size - r.pos} remain", at)
        records = [_read_record(r, load) for _ in range(n)]
        at = r.pos
        (m,) = r.unpack("Q", "name count")
        if m not in (0, n):
            r.fail(f"name count {m} is neither 0 nor the array count {n}", at)
        for rec in records[:m]:
            at = r.pos
            (k,) = r.unpack("Q", "name length")
            try:
                rec.name = r.take(k, "name").decode("utf-8")
            except UnicodeDecodeError:
                r.fail("name is not UTF-8", at)
        if r.pos != r.size:
            r.fail(f"{r.size - r.pos} trailing bytes after the name list")
    return records


def read_params(path):
    """(arrays, names): names as stored (with `arg:`/`aux:`), or None when the file has none."""
    records = read_records(path)
    names = [rec.name for rec in records] if records and records[0].name is not None else None
    return [rec.array for rec in records], names


def strip_prefix(name):
    """`arg:conv1_weight` -> `conv1_weight` (MXNet checkpoints mark aux states such as BN moving stats)."""
    return name[4:] if name.startswith(("arg:", "aux:")) else name


def load_params_dict(path, strip=True):
    """{name: array}. Names lose their `arg:`/`aux:` prefix unless strip=False (see read_params)."""
    arrays, names = read_params(path)
    if names is None:
        if not arrays:
            return {}
        raise InputError(f"{path}: the {len(arrays)} arrays have no names; use read_params for "
                         f"unnamed files")
    out = {}
    for name, arr in zip(names, arrays):
        key = strip_prefix(name) if strip else name
        if key in out:
            raise InputError(f"{path}: name {key!r} occurs twice")
        out[key] = arr
    return out


def write_params(path, arrays, layout="v2"):
    """Write `arrays` ({name: array}, or a list for an unnamed file) as MXNet would.

    layout "legacy" (MXNet <= 0.10, as in 2017 files) or "v2". None writes an empty record. Names are
    written as given (add `arg:`/`aux:` yourself). Written atomically. Meant for tests and tools.
    """
    if layout not in ("legacy", "v2"):
        raise ValueError(f"layout must be 'legacy' or 'v2', not {layout!r}")
    names = list(arrays) if isinstance(arrays, dict) else []
    values = list(arrays.values()) if isinstance(arrays, dict) else list(arrays)
    out = [struct.pack("<QQQ", FILE_MAGIC, 0, len(values))]
    for a in values:
        if a is None:
            out.append(struct.pack("<I", 0) if layout == "legacy" else struct.pack("<Iii", V2_MAGIC, 0, 0))
            continue
        a = np.asarray(a)
        if a.ndim == 0:
            raise ValueError("0-d arrays cannot be stored (ndim 0 means an empty record); reshape to (1,)")
        flag = DTYPE_FLAGS.get(a.dtype.newbyteorder("="))
        if flag is None:
            raise ValueError(f"dtype {a.dtype} has no MXNet flag")
        if layout == "legacy":
            out.append(struct.pack(f"<I{a.ndim}I", a.ndim, *a.shape))
        else:
            out.append(struct.pack(f"<Iii{a.ndim}q", V2_MAGIC, 0, a.ndim, *a.shape))
        out.append(struct.pack("<iii", 1, 0, flag))
        out.append(np.ascontiguousarray(a, dtype=DTYPES[flag]).tobytes())
    out.append(struct.pack("<Q", len(names)))
    for name in names:
        b = name.encode("utf-8")
        out.append(struct.pack("<Q", len(b)) + b)
    write_bytes(path, b"".join(out))
