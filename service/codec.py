"""The trajectory codec: one field table (``service.schemas.trajectory.TRAJECTORY_FIELDS``) → stored arrays, the JSON
document, the .npz archive.

    arrays = arrays_of(trajectory)                 # the core's Trajectory as named arrays (worker side)
    blob = pack(arrays)                            # what the store keeps: compressed binary arrays
    stored = StoredTrajectory(reader_of(blob))     # API side: reads only the arrays it is asked for
    body = to_json(select(stored, fields=["time", "loss"], every=10))

A trajectory is stored as binary arrays, never as JSON text, so ``?fields=``, .npz and plots decompress only what
they use and never parse float text; the JSON document is printed from the arrays (orjson's numpy path, which
prints the shortest repr that round-trips, as for Python floats, and null for a non-finite value).

Stored layout (codec ``ARRAYS``): ``MAGIC``, a little-endian uint32 header length, a JSON header
``{"arrays": [{"name", "dtype", "shape", "offset", "size", "crc32"}], "scalars": {name: value}}``, then one zstd
frame per array (with its content checksum) at the header's offsets, relative to the end of the header; ``crc32``
is that of the compressed frame, so stored bytes can be checked without decompressing them. An array's bytes are
byte-shuffled before compression (all first bytes of its values, then all second bytes, …): float mantissas that
differ only in their low bytes then compress well (see bench/results.md for the sizes against JSON text). Frames are
compressed on several threads (zstd releases the GIL). The earlier layout, the JSON document compressed as one zstd
frame (codec ``JSON_ZSTD``), is still read.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import zstandard

from service.schemas.trajectory import (
    FIELD_BY_NAME,
    MEMBERS,
    OBJECTS,
    TRAJECTORY_FIELDS,
    TrajectoryField,
)

ARRAYS = "arrays-zstd-1"
JSON_ZSTD = "zstd"
MAGIC = b"DLNSIMT1"
_LEVEL = 1  # the fastest level: higher levels hardly shrink shuffled float64 (docs/performance.md#storage)
_THREADS = max(1, min(os.cpu_count() or 1, 8))

Value = np.ndarray | str | bool | int | float | None
Arrays = dict[str, Value]


class CorruptTrajectory(ValueError):
    """Stored bytes that do not decode: a bad header, a frame that fails its checksum, sizes that disagree."""


# ------------------------------------------------------------------------------------------------
# the core's Trajectory -> named arrays


def array_names(field: TrajectoryField, value: Any) -> list[tuple[str, Any]]:
    """(name, value) of a field's value: one pair, or one per layer for a layered field."""
    if field.layered:
        return [(f"{field.name}_{l}", v) for l, v in enumerate(value)]
    return [(field.name, value)]


def _as_field_dtype(field: TrajectoryField, value: Any) -> Value:
    if field.kind == "scalar":
        if field.dtype == "str":
            return str(value)
        if field.dtype == "bool":
            return bool(value)
        if field.dtype == "int64":
            return int(value)
        value = float(value)
        return value if np.isfinite(value) else None
    if field.dtype == "str":  # a list of strings (task_loss_kind): fixed-width unicode
        return np.array([str(v) for v in value], dtype=np.str_)
    return np.ascontiguousarray(value, dtype=np.dtype(field.dtype))


def arrays_of(trajectory: Any) -> Arrays:
    """Every recorded quantity of a core Trajectory by name (absent quantities left out), in the table's order."""
    out: Arrays = {}
    for field in TRAJECTORY_FIELDS:
        value = field.source(trajectory)
        if value is None:
            continue
        for name, v in array_names(field, value):
            v = _as_field_dtype(field, v)
            if v is not None:
                out[name] = v
    return out


def field_of(name: str) -> TrajectoryField:
    """The table's field of an array name (``weights_2`` → the ``weights`` field)."""
    if name in FIELD_BY_NAME:
        return FIELD_BY_NAME[name]
    base, _, layer = name.rpartition("_")
    if layer.isdigit() and base in FIELD_BY_NAME and FIELD_BY_NAME[base].layered:
        return FIELD_BY_NAME[base]
    raise KeyError(name)


# ------------------------------------------------------------------------------------------------
# storage: pack and read


def _shuffle(a: np.ndarray) -> bytes:
    raw = a.reshape(-1).view(np.uint8)
    return raw.tobytes() if a.itemsize == 1 else raw.reshape(-1, a.itemsize).T.tobytes()


def _unshuffle(data: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.frombuffer(data, dtype=np.uint8)
    if dtype.itemsize > 1:
        raw = raw.reshape(dtype.itemsize, count).T
    return np.ascontiguousarray(raw).view(dtype).reshape(shape)


# Frames are read and decoded this many bytes at a time: a large array is never held twice, nor beside its frame.
# Pieces (and the JSON pieces below, and uvicorn's copy of each) stay under the API's mmap threshold
# (service/memory.py: 1 MiB), so they reuse the heap's warm pages: at 4 MiB every piece was a fresh mapping, faulted
# in page by page, and decoding ran at half speed (docs/performance.md#storage).
DECODE_PIECE_BYTES = 1 << 19


class _FrameStream(io.RawIOBase):
    """The stored bytes [offset, offset + size) as a file, read a piece at a time (for zstd's stream reader)."""

    def __init__(self, read: Reader, offset: int, size: int) -> None:
        self._read, self._pos, self._end = read, offset, offset + size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._end - self._pos, DECODE_PIECE_BYTES)
        if count <= 0:
            return 0
        data = self._read(self._pos, count)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


def _decode_frame(read: Reader, offset: int, size: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """An array from its stored frame (zstd, byte-shuffled), decompressed piece by piece straight into its place:
    the peak is the array itself plus a few MB, not the frame, the shuffled bytes and the array at once."""
    count = int(np.prod(shape, dtype=np.int64))
    out = np.empty(count * dtype.itemsize, dtype=np.uint8)
    planes = out.reshape(count, dtype.itemsize) if dtype.itemsize > 1 else out.reshape(count, 1)
    pos = 0
    with zstandard.ZstdDecompressor().stream_reader(_FrameStream(read, offset, size), read_across_frames=False,
                                                    closefd=False) as reader:
        while chunk := reader.read(DECODE_PIECE_BYTES):
            piece = np.frombuffer(chunk, dtype=np.uint8)
            if pos + len(piece) > out.size:
                raise ValueError(f"the frame decodes to more than the {out.size} bytes of a {dtype} array {shape}")
            done = 0
            while done < len(piece):  # byte plane k holds byte k of every value
                plane, start = divmod(pos, count)
                n = min(len(piece) - done, count - start)
                planes[start:start + n, plane] = piece[done:done + n]
                done += n
                pos += n
    if pos != out.size:
        raise ValueError(f"the frame decodes to {pos} bytes, a {dtype} array {shape} has {out.size}")
    return out.view(dtype).reshape(shape)


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    """This thread's compressor (one may not serve two threads at once): making one per array cost about as much as
    compressing a small trajectory's arrays."""
    c = getattr(_local, "compressor", None)
    if c is None:
        c = _local.compressor = zstandard.ZstdCompressor(level=_LEVEL, write_checksum=True)
    return c


def pack(arrays: Mapping[str, Value]) -> bytes:
    """The stored form of named arrays and scalars (module docstring); frames compressed on several threads."""
    names = [n for n, v in arrays.items() if isinstance(v, np.ndarray)]
    scalars = {n: v for n, v in arrays.items() if not isinstance(v, np.ndarray)}

    def compress(name: str) -> bytes:
        return _compressor().compress(_shuffle(arrays[name]))

    if len(names) > 1 and sum(arrays[n].nbytes for n in names) > 1 << 20:
        with ThreadPoolExecutor(_THREADS) as pool:
            frames = list(pool.map(compress, names))
    else:
        frames = [compress(n) for n in names]
    entries, offset = [], 0
    for name, frame in zip(names, frames, strict=True):
        a = arrays[name]
        entries.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": offset,
                        "size": len(frame), "crc32": zlib.crc32(frame)})
        offset += len(frame)
    header = orjson.dumps({"arrays": entries, "scalars": scalars})
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *frames])


Reader = Callable[[int, int], bytes]  # read(offset, size) -> exactly those bytes


def reader_of(blob: bytes) -> Reader:
    view = memoryview(blob)
    return lambda offset, size: bytes(view[offset:offset + size])


class StoredTrajectory:
    """A stored trajectory opened for reading: the header at once, each array when asked for (``get``).

    ``read(offset, size)`` reads the stored bytes (from memory, or an SQLite blob without loading the rest), and
    ``length`` is their total size. Raises CorruptTrajectory when the bytes do not decode.
    """

    def __init__(self, read: Reader, length: int) -> None:
        self._read = read
        head = read(0, len(MAGIC) + 4)
        if len(head) != len(MAGIC) + 4 or head[:len(MAGIC)] != MAGIC:
            raise CorruptTrajectory("not a stored trajectory (bad magic)")
        (header_size,) = struct.unpack("<I", head[len(MAGIC):])
        self._base = len(MAGIC) + 4 + header_size
        try:
            header = orjson.loads(read(len(MAGIC) + 4, header_size))
            self._entries = {e["name"]: e for e in header["arrays"]}
            self._scalars: dict[str, Value] = dict(header["scalars"])
            end = max((e["offset"] + e["size"] for e in self._entries.values()), default=0)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise CorruptTrajectory(f"unreadable header: {exc}") from None
        if self._base + end != length:
            raise CorruptTrajectory(f"{length} bytes stored, the header describes {self._base + end}")

    @property
    def names(self) -> list[str]:
        """Every stored name (arrays and scalars): the table's in its order, then any others."""
        present = set(self._entries) | set(self._scalars)
        known = _table_order(present)
        return known + sorted(present - set(known))

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._scalars

    def verify(self, names: Iterable[str]) -> None:
        """Check the stored bytes of the arrays ``names`` against their CRC-32 (CorruptTrajectory if one differs),
        without decompressing them: cheap, so that a response can be refused before its first byte is sent."""
        for name in names:
            entry = self._entries.get(name)
            if entry is None or "crc32" not in entry:  # a scalar, or stored before frames carried a CRC
                continue
            crc, offset, end = 0, self._base + entry["offset"], self._base + entry["offset"] + entry["size"]
            while offset < end:  # a piece at a time: a large frame is not read whole to be checked
                piece = self._read(offset, min(DECODE_PIECE_BYTES, end - offset))
                if not piece:
                    break
                crc, offset = zlib.crc32(piece, crc), offset + len(piece)
            if crc != entry["crc32"]:
                raise CorruptTrajectory(f"array {name}: its stored bytes fail their CRC-32")

    def get(self, name: str) -> Value:
        """The array or scalar ``name`` (None when not stored)."""
        if name in self._scalars:
            return self._scalars[name]
        entry = self._entries.get(name)
        if entry is None:
            return None
        try:
            return _decode_frame(self._read, self._base + entry["offset"], entry["size"], np.dtype(entry["dtype"]),
                                 tuple(entry["shape"]))
        except (zstandard.ZstdError, ValueError) as exc:
            raise CorruptTrajectory(f"array {name}: {exc}") from None

    def nbytes(self, name: str) -> int:
        """The bytes array ``name`` takes once decoded (0 for a scalar or a name not stored)."""
        entry = self._entries.get(name)
        if entry is None:
            return 0
        return int(np.prod(entry["shape"], dtype=np.int64)) * np.dtype(entry["dtype"]).itemsize


class JSONTrajectory:
    """A trajectory stored by earlier versions as its JSON document (codec ``JSON_ZSTD``), read as named arrays
    (decompressed and checked whole when it is opened)."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self._values: Arrays = {}
        for field in TRAJECTORY_FIELDS:
            value: Any = document
            for key in field.path:
                value = None if value is None else value.get(key)
            if value is None:
                continue
            if field.layered and field.kind == "record":  # per time, per layer → one (T, …) array per layer
                value = [[per_time[l] for per_time in value] for l in range(len(value[0]) if value else 0)]
            for name, v in array_names(field, value):
                if field.kind != "scalar":
                    v = np.array(v, dtype=np.float64 if field.dtype == "float64" else np.dtype(field.dtype))
                self._values[name] = _as_field_dtype(field, v)

    @property
    def names(self) -> list[str]:
        return _table_order(set(self._values))

    def verify(self, names: Iterable[str]) -> None:
        """Nothing left to check: the whole document was checked when it was opened."""

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def get(self, name: str) -> Value:
        return self._values.get(name)

    def nbytes(self, name: str) -> int:
        value = self._values.get(name)
        return int(value.nbytes) if isinstance(value, np.ndarray) else 0


Stored = StoredTrajectory | JSONTrajectory


def open_stored(read: Reader, length: int, codec: str, size: int | None = None) -> Stored:
    """The stored trajectory of either codec: ``ARRAYS``, or the earlier ``JSON_ZSTD`` whose document must
    decompress to ``size`` bytes."""
    if codec == ARRAYS:
        return StoredTrajectory(read, length)
    if codec == JSON_ZSTD:
        try:
            text = zstandard.ZstdDecompressor().decompress(read(0, length))
            if size is not None and len(text) != size:
                raise CorruptTrajectory(f"{len(text)} bytes instead of {size}")
            return JSONTrajectory(orjson.loads(text))
        except (zstandard.ZstdError, orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            if isinstance(exc, CorruptTrajectory):
                raise
            raise CorruptTrajectory(str(exc)) from None
    raise CorruptTrajectory(f"unknown codec {codec!r}")


def _table_order(names: set[str]) -> list[str]:
    order = []
    for field in TRAJECTORY_FIELDS:
        if field.layered:
            layers = sorted(int(n.rpartition("_")[2]) for n in names
                            if n.startswith(field.name + "_") and n.rpartition("_")[2].isdigit()
                            and n.rpartition("_")[0] == field.name)
            order += [f"{field.name}_{l}" for l in layers]
        elif field.name in names:
            order.append(field.name)
    return order


# ------------------------------------------------------------------------------------------------
# selection: ?fields= and ?every=


class SelectionError(ValueError):
    """A bad ``fields`` or ``every`` value; ``field`` names the query parameter."""

    def __init__(self, message: str, *, field: str, fix: str) -> None:
        super().__init__(message)
        self.message, self.field, self.fix = message, field, fix


def parse_fields(values: Iterable[str] | None) -> list[str] | None:
    """``?fields=time,loss&fields=modes`` -> ["time", "loss", "modes"] (validated, order kept, no repeats)."""
    if values is None:
        return None
    out: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            if name not in MEMBERS:
                raise SelectionError(f"the trajectory has no field {name!r}", field="fields",
                                     fix=f"use a comma-separated list of {', '.join(MEMBERS)}")
            if name not in out:
                out.append(name)
    if not out:
        raise SelectionError("fields is empty", field="fields", fix="name at least one field, e.g. fields=time,loss")
    return out


def record_indices(count: int, every: int) -> np.ndarray:
    """Records 0, every, 2·every, … and always the last one (so the final state is never thinned away)."""
    if every < 1:
        raise SelectionError(f"every must be ≥ 1, got {every}", field="every", fix="give a positive integer")
    idx = list(range(0, count, every))
    if count and idx[-1] != count - 1:
        idx.append(count - 1)
    return np.asarray(idx, dtype=np.intp)


def selected_names(stored: Stored | Mapping[str, Value], fields: Sequence[str] | None) -> list[str]:
    """The stored names the members ``fields`` (all when None) are made of."""
    return _selection(stored, fields, None).names


def select(stored: Stored | Mapping[str, Value], fields: Sequence[str] | None = None,
           every: int | None = None) -> Arrays:
    """The named arrays of the members ``fields`` (all when None), every ``every``-th record; only those are read."""
    source = _selection(stored, fields, every)
    return {name: source.get(name) for name in source.names}


# ------------------------------------------------------------------------------------------------
# representations


def _json_value(field: TrajectoryField, value: Value) -> Any:
    if isinstance(value, np.ndarray) and value.dtype == np.float32:
        return value.astype(np.float64)  # printed as the double it is, as the document always has
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":
        return value.tolist()  # a list of strings (orjson prints no unicode arrays)
    return value


def document(arrays: Mapping[str, Value], members: Sequence[str] | None = None) -> dict[str, Any]:
    """The Trajectory JSON document of named arrays (numpy arrays inside: print it with ``to_json``), with the
    members ``members`` (default: those of which something is stored), each null when nothing of it is stored."""
    present = {field_of(n).member for n in arrays}
    members = [m for m in MEMBERS if m in present] if members is None else list(members)
    out: dict[str, Any] = {}
    for member in members:
        fields = [f for f in TRAJECTORY_FIELDS if f.member == member]
        if member in OBJECTS:
            if not any(_stored(f, arrays) for f in fields):
                out[member] = None
                continue
            out[member] = {f.path[1]: _member_value(f, arrays) for f in fields}
        else:
            (field,) = fields
            out[member] = _member_value(field, arrays)
    return out


def _stored(field: TrajectoryField, arrays: Mapping[str, Value]) -> bool:
    return (f"{field.name}_0" if field.layered else field.name) in arrays


def _member_value(field: TrajectoryField, arrays: Mapping[str, Value]) -> Any:
    if field.layered:
        layers = [arrays[n] for n in _table_order(set(arrays)) if field_of(n) is field]
        if not layers:
            return None
        layers = [_json_value(field, a) for a in layers]
        if field.kind != "record":  # one array per layer: the list of the layers
            return layers
        return [[layer[t] for layer in layers] for t in range(len(layers[0]))]
    return _json_value(field, arrays.get(field.name))


class _Selection:
    """Lazy reads of ``stored`` restricted to ``names`` and thinned to the records ``idx`` (None: all)."""

    def __init__(self, stored: Stored | Mapping[str, Value], names: Sequence[str], idx: np.ndarray | None) -> None:
        self.stored, self.names, self.idx = stored, list(names), idx

    def get(self, name: str) -> Value:
        value = self.stored.get(name)
        if self.idx is not None and field_of(name).kind == "record" and value is not None:
            value = value[self.idx]
        return value


def _selection(stored: Stored | Mapping[str, Value], fields: Sequence[str] | None, every: int | None) -> _Selection:
    present = set(stored.names) if hasattr(stored, "names") else set(stored)
    wanted = set(fields or MEMBERS)
    names = [n for n in _table_order(present) if field_of(n).member in wanted]
    idx = None
    if every is not None and every != 1:
        idx = record_indices(len(stored.get("time")), every)
    return _Selection(stored, names, idx)


# JSON is printed in pieces of about this many bytes: a large trajectory streams out while the rest is printed,
# and no more than one array (and one piece of its text) is held at a time. Under the mmap threshold, as above.
JSON_PIECE_BYTES = 1 << 19
_BYTES_PER_NUMBER = 20  # what a float64 takes in JSON, roughly, to size the pieces


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def _float64(a: Any) -> Any:
    # float32 arrays are printed as the doubles they are (orjson would print float32's shortest repr)
    return a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype == np.float32 else a


def _iter_array(a: np.ndarray) -> Iterator[bytes]:
    """``a`` as JSON, in pieces along its first axis (float32 converted a piece at a time, not as a whole copy)."""
    per_row = max(1, a[0].size if a.ndim > 1 and len(a) else 1)
    rows = max(1, JSON_PIECE_BYTES // (_BYTES_PER_NUMBER * per_row))
    if a.ndim == 0 or len(a) <= rows:
        yield _json(_float64(a))
        return
    yield b"["
    for start in range(0, len(a), rows):
        yield (b"," if start else b"") + _json(_float64(a[start:start + rows]))[1:-1]
    yield b"]"


def _iter_layered(layers: list[np.ndarray]) -> Iterator[bytes]:
    """Per-layer arrays (T, …) as the document's per time, per layer lists, in pieces of records."""
    count = len(layers[0])
    rows = max(1, JSON_PIECE_BYTES // (_BYTES_PER_NUMBER * max(1, sum(a[0].size for a in layers))))
    yield b"["
    for start in range(0, count, rows):
        block = [[_float64(layer[t]) for layer in layers] for t in range(start, min(start + rows, count))]
        yield (b"," if start else b"") + _json(block)[1:-1]
    yield b"]"


def _iter_field(field: TrajectoryField, source: _Selection) -> Iterator[bytes]:
    if field.layered:
        names = [n for n in source.names if field_of(n) is field]
        if not names:
            yield b"null"
        elif field.kind != "record":  # one array per layer (final_weights): the list of the layers
            yield _json([_float64(source.get(n)) for n in names])
        else:
            yield from _iter_layered([source.get(n) for n in names])
        return
    value = source.get(field.name) if field.name in source.names else None
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":
        yield _json(value.tolist())  # a list of strings (orjson prints no unicode arrays)
    elif isinstance(value, np.ndarray) and value.ndim > 0:
        yield from _iter_array(value)
    else:
        yield _json(value)


def iter_json(stored: Stored | Mapping[str, Value], members: Sequence[str] | None = None,
              every: int | None = None) -> Iterator[bytes]:
    """The Trajectory JSON document of ``stored`` (a stored trajectory, or named arrays) in pieces, reading one array
    at a time: the members ``members`` (default: all, each null when nothing of it is stored), every ``every``-th
    record."""
    members = list(members or MEMBERS)
    source = _selection(stored, members, every)
    stored_fields = {field_of(n).name for n in source.names}
    yield b"{"
    for i, member in enumerate(members):
        yield (b"," if i else b"") + _json(member) + b":"
        fields = [f for f in TRAJECTORY_FIELDS if f.member == member]
        if member not in OBJECTS:
            yield from _iter_field(fields[0], source)
        elif not any(f.name in stored_fields for f in fields):
            yield b"null"
        else:
            yield b"{"
            for j, field in enumerate(fields):
                yield (b"," if j else b"") + _json(field.path[1]) + b":"
                yield from _iter_field(field, source)
            yield b"}"
    yield b"}"


def to_json(arrays: Stored | Mapping[str, Value], members: Sequence[str] | None = None,
            every: int | None = None) -> bytes:
    """The JSON document (``iter_json``) as one bytes object."""
    return b"".join(iter_json(arrays, members, every))


def _npz_array(name: str, value: Value) -> np.ndarray:
    field = field_of(name)
    if field.dtype == "str":
        return np.array(value, dtype=np.str_)
    if field.dtype == "bool":
        return np.array(bool(value))
    return np.asarray(value, dtype=np.dtype(field.dtype))


def npz_arrays(arrays: Mapping[str, Value]) -> dict[str, np.ndarray]:
    """The .npz members: every array and scalar by its name, floats as float64 (NaN where not finite)."""
    return {name: _npz_array(name, value) for name, value in arrays.items() if value is not None}


class _Pipe(io.RawIOBase):
    """A write-only, unseekable stream whose writes are collected until ``drain``: zipfile then writes each member
    with a data descriptor, so an archive can be sent as it is made."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._chunks.append(bytes(b))
        return len(b)

    def drain(self) -> bytes:
        out, self._chunks = b"".join(self._chunks), []
        return out


def iter_npz(stored: Stored | Mapping[str, Value], fields: Sequence[str] | None = None,
             every: int | None = None) -> Iterator[bytes]:
    """An uncompressed .npz archive (what ``numpy.load`` reads) of the selected arrays, in pieces, one array read at
    a time (the stored arrays are compressed already; zlib would cost seconds)."""
    source = _selection(stored, fields, every)
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name in source.names:
            value = source.get(name)
            if value is None:
                continue
            with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                yield from _write_npy(member, _npz_array(name, value), pipe)
            yield pipe.drain()
    yield pipe.drain()


# An .npy member is written (and sent) this many bytes at a time.
NPY_PIECE_BYTES = 1 << 24


def _write_npy(member: Any, array: np.ndarray, pipe: _Pipe) -> Iterator[bytes]:
    """``array`` as ``numpy.lib.format.write_array`` writes it (the same header, its bytes in C order), a slice of
    rows at a time, each sent before the next is made: an array is never copied whole into the archive's buffer."""
    header = np.lib.format.header_data_from_array_1_0(array)
    try:
        np.lib.format.write_array_header_1_0(member, header)
    except ValueError:  # a header over 64 KiB: format 2.0, as write_array does
        np.lib.format.write_array_header_2_0(member, header)
    if array.ndim == 0 or array.nbytes <= NPY_PIECE_BYTES:
        member.write(np.ascontiguousarray(array).tobytes("C"))
        return
    rows = max(1, NPY_PIECE_BYTES // max(1, array[0].nbytes))
    for start in range(0, len(array), rows):
        member.write(np.ascontiguousarray(array[start:start + rows]).tobytes("C"))
        yield pipe.drain()


def to_npz(arrays: Stored | Mapping[str, Value], fields: Sequence[str] | None = None,
           every: int | None = None) -> bytes:
    """The .npz archive (``iter_npz``) as one bytes object."""
    return b"".join(iter_npz(arrays, fields, every))


def _dims(field: TrajectoryField, name: str) -> tuple[str, ...]:
    """The netCDF dimensions of array ``name`` of ``field``: "time" first for per-record fields, a layer's "{l}" and
    "{l+1}" filled in."""
    layer = int(name.rpartition("_")[2]) if field.layered else 0
    dims = tuple(d.replace("{l+1}", str(layer + 1)).replace("{l}", str(layer)) for d in field.dims)
    return ("time", *dims) if field.kind == "record" else dims


def to_netcdf(stored: Stored | Mapping[str, Value], fields: Sequence[str] | None = None, every: int | None = None,
              attributes: Mapping[str, str] | None = None) -> bytes:
    """The selected arrays as a netCDF-3 file (64-bit offsets; what ``xarray.open_dataset`` reads with its scipy
    engine): named dimensions from the field table ("time", "mode", "output", "input", "unit_l" …), a "mode"
    coordinate 1…k, "step" as the records' coordinate for GD, each variable described; scalars that are strings
    (and ``attributes``, e.g. the request and provenance as JSON) as global attributes, text in UTF-8. netCDF-3 has
    no 64-bit integers: integers are stored as int32, flags as int8."""
    from scipy.io import netcdf_file

    source = _selection(stored, fields, every)
    values = {name: source.get(name) for name in source.names}
    buf = io.BytesIO()
    out = netcdf_file(buf, "w", version=2)
    out.title = "dlnsim trajectory"
    for key, text in (attributes or {}).items():
        setattr(out, key, text.encode())  # netCDF-3 text is bytes: UTF-8 (xarray decodes it)
    sizes: dict[str, int] = {}
    for name, value in values.items():
        field = field_of(name)
        if field.dtype == "str":
            # a list of strings (task_loss_kind) as its JSON text: netCDF-3 attributes hold text, not lists
            text = orjson.dumps(value.tolist()).decode() if isinstance(value, np.ndarray) else str(value)
            setattr(out, name, text.encode())
            continue
        array = np.asarray(value)
        dims = _dims(field, name)
        for dim, size in zip(dims, array.shape, strict=True):
            if sizes.setdefault(dim, size) != size:
                raise ValueError(f"dimension {dim} is {sizes[dim]} and {size}")
    for dim, size in sizes.items():
        out.createDimension(dim, size)
    if "mode" in sizes:
        mode = out.createVariable("mode", "i", ("mode",))
        mode[:] = np.arange(1, sizes["mode"] + 1, dtype=np.int32)
        mode.long_name = "mode α (1 = the largest singular value of Σ31)".encode()
    for name, value in values.items():
        field = field_of(name)
        if field.dtype == "str":
            continue
        kind = {"float64": "d", "int64": "i", "bool": "b"}[field.dtype]
        array = np.asarray(value, dtype={"d": np.float64, "i": np.int32, "b": np.int8}[kind])
        variable = out.createVariable(name, kind, _dims(field, name))
        variable.data[...] = array
        variable.description = field.description.encode()
        if field.kind == "record" and name != "step" and "step" in values:
            variable.coordinates = "step"
    out.flush()
    data = buf.getvalue()
    out.close()
    return data


NPZ_LAYOUT = """\
`Accept: application/x-npz` returns the trajectory as a NumPy `.npz` archive (uncompressed; read it with
`numpy.load(io.BytesIO(body))`, no pickle needed). T is the number of records (after `every`), k = min(n_in, n_out).
Every member of the JSON document is there under its name, the members of its objects as `<object>_<member>`, one
array per layer for per-layer lists:

| array | shape | dtype |
|---|---|---|
| `time` | (T,) | float64 |
| `step` | (T,) | int64 (GD only) |
| `loss` | (T,) | float64 (absent when Σ33 is unknown) |
| `excess_loss`, `balance_drift`, `gradient_norm`, `distance_to_optimum` | (T,) | float64 |
| `product` | (T, n_out, n_in) | float64 |
| `weights_0` … `weights_{D-1}` | (T, rows_l, cols_l), input→output | float64 (when record.weights) |
| `similarity` | (T, n_in, n_in) | float64 (when record.similarity) |
| `test_loss` | (T,) | float64 (with data.test) |
| `early_stopping_time`, `early_stopping_test_loss` | () | float64 (with data.test) |
| `early_stopping_step` | () | int64 (with data.test, GD only) |
| `loss_theory_loss`, `loss_theory_test_loss` | (T,) | float64 (where the loss theory applies) |
| `loss_theory_model`, `loss_theory_assumptions` | () | str |
| `loss_theory_exact` | () | bool |
| `kernel_input_grams_0` … `kernel_input_grams_{D-2}` | (T, n_in, n_in) per hidden layer | float64 (record.kernel) |
| `kernel_output_grams_0` … `_{D-2}` | (T, n_out, n_out) per hidden layer | float64 (record.kernel) |
| `kernel_distance` | (T,) | float64 (when record.kernel) |
| `sharpness` | (T, k) | float64 (when record.sharpness; k = record.sharpness_k) |
| `sharpness_threshold` | () | float64 (gd and sgd) |
| `linearized_loss`, `linearized_excess_loss` | (T,) | float64 (when record.linearized; the loss absent when Σ33 is unknown) |
| `loss_theory_random_matrix_loss`, `loss_theory_random_matrix_test_loss` | (T,) | float64 (the noisy_teacher preset) |
| `loss_theory_random_matrix_model`, `loss_theory_random_matrix_assumptions` | () | str |
| `loss_theory_random_matrix_exact` | () | bool |
| `task_loss`, `task_excess_loss` | (T, P) | float64 (a task sequence of P phases) |
| `task_loss_kind` | (P,) | str ("loss" or "excess_loss"; a task sequence) |
| `phase` | (T,) | int64 (a task sequence) |
| `phase_starts` | (P,) | float64 (a task sequence) |
| `final_weights_0` … `final_weights_{D-1}` | (rows_l, cols_l), input→output | float64 (the weights at the last record) |
| `modes_singular_values`, `modes_optimum_strength`, `modes_learning_time`, `modes_learning_time_theory` | (k,) | float64 |
| `modes_strength`, `modes_theory` | (T, k) | float64 |
| `modes_theory_model`, `modes_theory_assumptions` | () | str |
| `modes_theory_exact` | () | bool |
| `optimum_product` | (n_out, n_in) | float64 |
| `optimum_loss`, `optimum_loss_without_sigma33` | () | float64 |
| `optimum_rank` | () | int64 |
| `outcome`, `method`, `stability_hint` | () | str |
| `diverged_at_step` | () | int64 |

A JSON null inside an array (a non-finite value) is NaN; a member that is null as a whole is left out, and so
is every member not named by `fields`.
"""
