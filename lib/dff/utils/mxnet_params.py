"""Read and write MXNet ``.params`` files (``mx.nd.save`` / ``mx.nd.load``) with numpy alone.

A ``.params`` file is an MXNet NDArray list (fixtures README section 5, docs/design.md §4.1), all
little-endian::

    uint64 0x112 (kMXAPINDArrayListMagic) | uint64 0 (reserved)
    uint64 N, then N NDArrays
    uint64 K (== N), then K x (uint64 len, len bytes UTF-8 name)   e.g. 'arg:conv1_weight'

One NDArray, in the four layouts MXNet's ``NDArray::Load`` accepts:

* ``v2`` (magic 0xF993FAC9, MXNet >= 0.11): int32 storage type, uint32 ndim, int64 dims[ndim],
  int32 dev_type, int32 dev_id, int32 type flag, raw C-order data.
* ``v3`` (magic 0xF993FACA, written only in numpy-shape mode): as v2, but ndim is a signed int32
  where 0 means a 0-d scalar (in v2 it means "no array").
* ``v1`` (magic 0xF993FAC8, May-Aug 2017): no storage type field; otherwise as v2.
* ``legacy`` (before May 2017, the layout of the released DFF models): no magic; the first
  uint32 *is* ndim, followed by **uint32** dims, then context, type flag and data.

The reader parses bytes with ``struct``/``numpy.frombuffer`` and never unpickles anything. Only
dense storage is supported: a sparse array is a clear error, since no DFF/R-FCN checkpoint has one.
"""
from __future__ import annotations

import dataclasses
import os
import struct
from typing import Mapping

import numpy as np

from dff.utils.io import atomic_write_bytes

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA
MAGIC_OF_LAYOUT = {"v1": V1_MAGIC, "v2": V2_MAGIC, "v3": V3_MAGIC}
_LAYOUT_OF_MAGIC = {v: k for k, v in MAGIC_OF_LAYOUT.items()}
LAYOUTS = ("v2", "v1", "legacy", "v3")

# mshadow type flags; the data is stored little-endian whatever the host
DTYPE_OF_FLAG: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
}
_FLAG_OF_KIND = {(np.dtype(d).kind, np.dtype(d).itemsize): f for f, d in DTYPE_OF_FLAG.items()}
_STORAGE_NAMES = {-1: "undefined", 0: "dense", 1: "row_sparse", 2: "csr"}
_DEV_TYPES = {1: "cpu", 2: "gpu", 3: "cpu_pinned", 5: "cpu_shared"}

# No MXNet operator goes beyond a few dimensions; a larger ndim means we are reading garbage
# (typically a file in a layout we misdetected), so stop before allocating anything.
MAX_NDIM = 32


class MXNetParamsError(ValueError):
    """A ``.params`` file is malformed; the one-line message names the file, the byte offset and the problem."""


@dataclasses.dataclass(frozen=True)
class ArrayRecord:
    """Where and how one array is stored in a ``.params`` file (the per-tensor part of the layout json)."""

    key: str
    offset: int  # byte offset of the array's first field (its magic, or ndim for legacy)
    layout: str  # "v1" | "v2" | "v3" | "legacy"
    stype: int  # storage type (0 = dense); 0 for v1/legacy, which have no such field
    shape: tuple[int, ...]
    ctx: tuple[int, int]  # (dev_type, dev_id): 1 = cpu, 2 = gpu
    type_flag: int
    data_offset: int
    nbytes: int

    @property
    def magic(self) -> int | None:
        """The per-array magic number (None for the legacy layout, which has none)."""
        return MAGIC_OF_LAYOUT.get(self.layout)


@dataclasses.dataclass(frozen=True)
class ParamsFile:
    """A parsed ``.params`` file: arrays in file order (keys with their ``arg:``/``aux:`` prefixes)."""

    path: str
    arrays: dict[str, np.ndarray]
    records: list[ArrayRecord]
    reserved: int
    size: int

    @property
    def layout(self) -> str:
        """The layout shared by all arrays ("mixed" if they differ, "v2" for an empty list)."""
        layouts = {r.layout for r in self.records}
        return layouts.pop() if len(layouts) == 1 else ("v2" if not layouts else "mixed")


class _Cursor:
    """Sequential little-endian reads over the file bytes; every failure names file and offset."""

    def __init__(self, buf: bytes, path: str) -> None:
        self.buf = memoryview(buf)  # slices of a memoryview do not copy the (large) array data
        self.path = path
        self.pos = 0

    def fail(self, what: str, at: int | None = None) -> MXNetParamsError:
        return MXNetParamsError(f"{self.path}: byte {self.pos if at is None else at}: {what}")

    def take(self, n: int, what: str) -> memoryview:
        if n > len(self.buf) - self.pos:
            raise self.fail(f"truncated file: {what} needs {n} bytes, only {len(self.buf) - self.pos} left "
                            f"(file size {len(self.buf)})")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def _read_array(cur: _Cursor, index: int) -> tuple[np.ndarray, ArrayRecord]:
    start = cur.pos
    label = f"array #{index}"
    (first,) = cur.unpack("I", f"{label} magic")
    if first in (V2_MAGIC, V3_MAGIC):
        layout = _LAYOUT_OF_MAGIC[first]
        (stype,) = cur.unpack("i", f"{label} storage type")
        if stype != 0:
            raise cur.fail(f"{label} has storage type {stype} ({_STORAGE_NAMES.get(stype, 'unknown')}); "
                           f"only dense arrays are supported", cur.pos - 4)
    elif first == V1_MAGIC:
        layout, stype = "v1", 0
    else:
        layout, stype = "legacy", 0
    ndim_at = cur.pos if layout != "legacy" else start
    if layout == "legacy":
        ndim = first  # the legacy format has no magic: the first word is ndim
    elif layout == "v3":
        (ndim,) = cur.unpack("i", f"{label} ndim")
    else:
        (ndim,) = cur.unpack("I", f"{label} ndim")
    if layout == "legacy" and ndim > MAX_NDIM:
        raise cur.fail(f"{label}: bad magic 0x{first:08X} (not an NDArray V1/V2/V3 magic, and too large to be "
                       f"the ndim of the legacy layout)", start)
    if ndim < 0 or ndim > MAX_NDIM:
        raise cur.fail(f"{label}: absurd ndim {ndim} (unknown shape or corrupt file)", ndim_at)
    if ndim == 0 and layout != "v3":
        # MXNet loads this as an empty 'none' NDArray with no data; a checkpoint never holds one
        raise cur.fail(f"{label}: ndim 0 (an empty 'none' NDArray) is not supported", ndim_at)
    dims_at = cur.pos
    dim_fmt = "I" if layout == "legacy" else "q"
    shape = cur.unpack(f"{ndim}{dim_fmt}", f"{label} dims")
    if any(d < 0 for d in shape):
        raise cur.fail(f"{label}: absurd dims {shape} (negative, i.e. unknown)", dims_at)
    dev_type, dev_id = cur.unpack("ii", f"{label} context")
    if dev_type not in _DEV_TYPES:
        raise cur.fail(f"{label}: absurd device type {dev_type} (corrupt file or misread layout)", cur.pos - 8)
    (type_flag,) = cur.unpack("i", f"{label} type flag")
    if type_flag not in DTYPE_OF_FLAG:
        raise cur.fail(f"{label}: unsupported type flag {type_flag} (known: 0 f32, 1 f64, 2 f16, 3 u8, 4 i32, "
                       f"5 i8, 6 i64)", cur.pos - 4)
    dtype = DTYPE_OF_FLAG[type_flag]
    count = 1
    for d in shape:
        count *= d
    nbytes = count * dtype.itemsize
    data_at = cur.pos
    if nbytes > len(cur.buf) - cur.pos:
        raise cur.fail(f"truncated file: {label} data of shape {shape} ({dtype.name}) needs {nbytes} bytes, "
                       f"only {len(cur.buf) - cur.pos} left (file size {len(cur.buf)})")
    raw = cur.take(nbytes, f"{label} data")
    # astype copies into native byte order, so the result owns aligned, writable memory
    arr = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape).astype(dtype.newbyteorder("="))
    rec = ArrayRecord("", start, layout, stype, tuple(int(d) for d in shape), (dev_type, dev_id), type_flag,
                      data_at, nbytes)
    return arr, rec


def parse_params(data: bytes, path: str = "<bytes>") -> ParamsFile:
    """Parse the bytes of a ``.params`` file (``path`` only labels error messages)."""
    cur = _Cursor(data, str(path))
    if len(data) == 0:
        raise cur.fail("empty file (not an MXNet .params file)")
    (magic,) = cur.unpack("Q", "file magic")
    if magic != LIST_MAGIC:
        raise cur.fail(f"bad file magic 0x{magic:X} (expected 0x112, an MXNet NDArray list)", 0)
    (reserved,) = cur.unpack("Q", "reserved field")
    (n,) = cur.unpack("Q", "array count")
    # every array takes at least 16 bytes; checking now avoids looping over a corrupt count of 2**60
    if n > (len(data) - cur.pos) // 16:
        raise cur.fail(f"truncated file or absurd array count: {n} arrays need at least {16 * n} bytes, only "
                       f"{len(data) - cur.pos} left (file size {len(data)})", cur.pos - 8)
    arrays: list[np.ndarray] = []
    records: list[ArrayRecord] = []
    for i in range(n):
        arr, rec = _read_array(cur, i)
        arrays.append(arr)
        records.append(rec)
    count_at = cur.pos
    (k,) = cur.unpack("Q", "name count")
    if k != n:
        if k == 0:
            raise cur.fail(f"the file holds {n} unnamed arrays (an NDArray list, not a checkpoint)", count_at)
        raise cur.fail(f"count mismatch: {k} names for {n} arrays", count_at)
    keys: list[str] = []
    for i in range(k):
        (length,) = cur.unpack("Q", f"length of name #{i}")
        if length > len(data) - cur.pos:
            raise cur.fail(f"truncated file: name #{i} needs {length} bytes, only {len(data) - cur.pos} left "
                           f"(file size {len(data)})")
        name_at = cur.pos
        raw = cur.take(length, f"name #{i}")
        try:
            key = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise cur.fail(f"name #{i} is not valid UTF-8 ({e.reason})", name_at) from None
        if key in keys:
            raise cur.fail(f"duplicate name {key!r} (#{keys.index(key)} and #{i})", name_at)
        keys.append(key)
    if cur.pos != len(data):
        raise cur.fail(f"{len(data) - cur.pos} trailing bytes after the last name (file size {len(data)})")
    records = [dataclasses.replace(r, key=key) for key, r in zip(keys, records)]
    return ParamsFile(str(path), dict(zip(keys, arrays)), records, reserved, len(data))


def inspect_params(path: str | os.PathLike) -> ParamsFile:
    """Read a ``.params`` file with its layout: arrays plus per-array offsets, shapes, contexts and type flags."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise MXNetParamsError(f"{path}: byte 0: cannot read file ({e.strerror or e})") from None
    return parse_params(data, path)


def read_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``mx.nd.load(path)`` without MXNet: ``{'arg:NAME' | 'aux:NAME': array}`` in file order.

    Arrays keep the file's dtype (float32 for every DFF/R-FCN checkpoint) and shape, e.g.
    ``arg:conv1_weight`` (64, 3, 7, 7). Raises :class:`MXNetParamsError` on any malformed input.
    """
    return inspect_params(path).arrays


def _shape_bytes(shape: tuple[int, ...], layout: str, key: str) -> bytes:
    if layout == "legacy":
        if any(d > 0xFFFFFFFF for d in shape):
            raise ValueError(f"array {key!r}: dims {shape} do not fit the legacy layout's uint32 dims")
        return struct.pack(f"<I{len(shape)}I", len(shape), *shape)
    return struct.pack(f"<I{len(shape)}q", len(shape), *shape)


def encode_params(arrays: Mapping[str, np.ndarray], layout: str = "v2",
                  ctx: tuple[int, int] = (1, 0)) -> bytes:
    """The bytes ``mx.nd.save`` writes for ``arrays`` (keys written as given, e.g. ``'arg:conv1_weight'``).

    ``layout`` is "v2" (MXNet >= 0.11), "v1", "legacy" (pre-May-2017, the released DFF models) or
    "v3" (numpy-shape mode). ``ctx`` is the (dev_type, dev_id) recorded for every array; MXNet
    ignores it on a CPU-only load.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown .params layout {layout!r}; expected one of {LAYOUTS}")
    parts = [struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays))]
    names = []
    for key, value in arrays.items():
        if not isinstance(key, str):
            raise ValueError(f"array key {key!r} is not a string")
        arr = np.asarray(value)
        flag = _FLAG_OF_KIND.get((arr.dtype.kind, arr.dtype.itemsize))
        if flag is None:
            raise ValueError(f"array {key!r}: dtype {arr.dtype} has no MXNet type flag "
                             f"(supported: float32/64/16, uint8, int32, int8, int64)")
        if arr.ndim == 0 and layout != "v3":
            raise ValueError(f"array {key!r}: a 0-d array can only be written in the v3 layout "
                             f"(ndim 0 means 'no array' in {layout})")
        if arr.ndim > MAX_NDIM:
            raise ValueError(f"array {key!r}: ndim {arr.ndim} exceeds {MAX_NDIM}")
        if layout in MAGIC_OF_LAYOUT:
            parts.append(struct.pack("<I", MAGIC_OF_LAYOUT[layout]))
        if layout in ("v2", "v3"):
            parts.append(struct.pack("<i", 0))  # dense storage
        parts.append(_shape_bytes(tuple(int(d) for d in arr.shape), layout, key))
        parts.append(struct.pack("<iii", ctx[0], ctx[1], flag))
        parts.append(np.ascontiguousarray(arr, dtype=DTYPE_OF_FLAG[flag]).tobytes(order="C"))
        names.append(key.encode("utf-8"))
    parts.append(struct.pack("<Q", len(names)))
    for name in names:
        parts.append(struct.pack("<Q", len(name)) + name)
    return b"".join(parts)


def write_params(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], layout: str = "v2",
                 ctx: tuple[int, int] = (1, 0)) -> None:
    """``mx.nd.save(path, arrays)`` in the given layout (see :func:`encode_params`), written atomically."""
    atomic_write_bytes(path, encode_params(arrays, layout, ctx))


def _split_arg_aux(params: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The reference's ``load_checkpoint``: split keys on the first ':'; keep only ``arg``/``aux`` ones."""
    arg: dict[str, np.ndarray] = {}
    aux: dict[str, np.ndarray] = {}
    for key, value in params.items():
        if ":" not in key:
            raise ValueError(f"parameter key {key!r} has no 'arg:'/'aux:' prefix (expected mx.nd.load keys)")
        kind, name = key.split(":", 1)
        if kind == "arg":
            arg[name] = value
        elif kind == "aux":
            aux[name] = value
    return arg, aux


def _fold_test_keys(arg: dict[str, np.ndarray]) -> None:
    for name in [k for k in arg if "_test" in k]:
        arg[name.replace("_test", "")] = arg.pop(name)


def process_test_params(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference's ``load_param(..., process=True)`` on ``mx.nd.load`` output, keeping the prefixes.

    Keys are split on the first ':'; only ``arg:`` and ``aux:`` keys are kept (the reference
    drops others). Every ``arg:`` key containing ``_test`` replaces the key with *all* ``_test``
    substrings removed (``str.replace``), so a trained checkpoint's ``rfcn_bbox_weight_test``
    (the bbox-std de-normalised weight) becomes the ``rfcn_bbox_weight`` used for inference. A file
    without ``_test`` keys is returned unchanged: no BBOX_STDS are applied here.

    Returns ``{'arg:NAME': ...}`` in the reference's dict order (args in file order, a replaced key
    keeping its original position), then ``{'aux:NAME': ...}``.
    """
    arg, aux = _split_arg_aux(params)
    _fold_test_keys(arg)
    return {**{f"arg:{k}": v for k, v in arg.items()}, **{f"aux:{k}": v for k, v in aux.items()}}


def load_param(path: str | os.PathLike, process: bool = False) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The reference's ``load_param(prefix, epoch, process=...)`` given the file path: ``(arg_params, aux_params)``
    with bare names (no prefix)."""
    arg, aux = _split_arg_aux(read_params(path))
    if process:
        _fold_test_keys(arg)
    return arg, aux
