"""Checkpoint files: .npz archives written atomically and read without pickle.

A save writes a temporary file in the target's directory, fsyncs it and renames it over the target
(`os.replace` is atomic on POSIX and Windows), so a crash mid-save leaves the previous checkpoint
whole. Reads use `allow_pickle=False`: a checkpoint can hold arrays and strings, never code.
"""
from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` to `path` (exactly that name) atomically."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
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
    """Read every array of an .npz checkpoint; ValueError if it is not one."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{os.fspath(path)} is not a readable .npz checkpoint: {e}") from None
