"""Checkpoint files: .npz archives written atomically and read without pickle.

A save writes a temporary file in the target's directory, fsyncs it and renames it over the target
(`os.replace` is atomic on POSIX and Windows), so a crash mid-save leaves the previous checkpoint
whole. The file gets the permissions an ordinary `open(path, "w")` would give it: those of the file it
replaces, else 0666 less the process umask (not mkstemp's private 0600). Reads use `allow_pickle=False`:
a checkpoint can hold arrays and strings, never code.
Reads check every array's header against its stored size and bound the total element count
(MAX_ELEMENTS, 8 GiB of float32) before numpy allocates anything, so a crafted file cannot make a
load allocate more than it holds.
"""
from __future__ import annotations

import math
import os
import tempfile
import zipfile
import zlib

import numpy as np

MAX_ELEMENTS = 2 ** 31  # the most array elements a checkpoint, or a model loaded from one, may hold
_UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, ValueError)  # what a damaged archive raises
_Header = tuple  # (member info, array key, shape, dtype, header bytes)


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` to `path` (exactly that name) atomically."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _mode_for(path: str) -> int:
    """The mode a plain open() leaves: the replaced file's, else 0o666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it (/proc), else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable where the platform allows opening a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an .npz checkpoint; ValueError naming the file if it is not one, or if
    its arrays claim more data than they hold or more than MAX_ELEMENTS elements in all (checked
    from the array headers, before anything is allocated)."""
    name = os.fspath(path)
    with open(name, "rb") as f:
        head = f.read(len(np.lib.format.MAGIC_PREFIX))
    if head == np.lib.format.MAGIC_PREFIX:
        raise ValueError(f"{name} is a .npy array file, not an .npz checkpoint (save_weights and save write .npz)")
    if head.startswith(b"\x89HDF"):
        raise ValueError(f"{name} is an HDF5 file (Keras's .h5 format): graphnet reads only the .npz archives its "
                         f"save and save_weights write")
    try:
        with zipfile.ZipFile(name) as archive:
            _refuse_keras_archive(archive, name)
            headers = [_array_header(archive, info) for info in archive.infolist()]
    except _UNREADABLE as e:
        raise ValueError(f"{name} is not a readable .npz checkpoint: {e}") from None
    _check_sizes(headers, name, os.path.getsize(name))
    try:
        with np.load(name, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except _UNREADABLE as e:
        raise ValueError(f"{name} is not a readable .npz checkpoint: {e}") from None


def _refuse_keras_archive(archive: zipfile.ZipFile, name: str) -> None:
    """A Keras 3 .keras file is a zip archive too (config.json, model.weights.h5): say so."""
    members = set(archive.namelist())
    if "config.json" in members or "model.weights.h5" in members:
        raise ValueError(f"{name} is a Keras .keras archive: graphnet reads only the .npz archives its save and "
                         f"save_weights write (whatever their suffix)")


def _array_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Header:
    """One .npy member's shape, dtype and header size, read without reading its data."""
    key = info.filename.removesuffix(".npy")
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"member '{info.filename}' has unsupported .npy format version {version}")
        if dtype.hasobject:
            raise ValueError(f"array '{key}' holds Python objects; checkpoints hold numbers and strings only")
        return info, key, shape, dtype, f.tell()


def _check_sizes(headers: list[_Header], name: str, archive_size: int) -> None:
    """Each array's header agrees with its stored size, and the total is at most MAX_ELEMENTS."""
    total = 0
    for info, key, shape, dtype, header_size in headers:
        count = math.prod(shape)
        data_size = info.file_size - header_size
        if info.compress_type == zipfile.ZIP_STORED and info.file_size > archive_size:
            raise ValueError(f"{name}: array '{key}' claims {info.file_size:,} bytes, more than the whole file "
                             f"({archive_size:,} bytes)")
        if count * dtype.itemsize > data_size:
            raise ValueError(f"{name}: array '{key}' claims shape {shape} ({count:,} elements of {dtype}, "
                             f"{count * dtype.itemsize:,} bytes) but holds only {max(data_size, 0):,} bytes")
        total += count
        if total > MAX_ELEMENTS:
            raise ValueError(f"{name}: the arrays hold {total:,} elements or more (array '{key}' has {count:,}), "
                             f"more than the limit of {MAX_ELEMENTS:,} elements a checkpoint may hold")

