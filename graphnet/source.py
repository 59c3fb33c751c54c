"""Find the user's source line that created a node (skipping graphnet's own frames)."""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager

_PACKAGE_DIRS = tuple(
    os.path.dirname(os.path.abspath(p)) + os.sep
    for p in (os.path.join(os.path.dirname(__file__), "x"),
              os.path.join(os.path.dirname(os.path.dirname(__file__)), "codegen", "x"))
)


_override = threading.local()


@contextmanager
def source_of(location: str):
    """Attribute nodes created inside the block to `location` (passes keep the user's lines)."""
    previous = getattr(_override, "location", None)
    _override.location = location
    try:
        yield
    finally:
        _override.location = previous


def user_location() -> str:
    """Return "file:line" of the innermost frame outside graphnet and codegen."""
    location = getattr(_override, "location", None)
    if location is not None:
        return location
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(_PACKAGE_DIRS) and not frame.f_code.co_filename.startswith("<frozen"):
            return f"{_short(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


def _short(filename: str) -> str:
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel
