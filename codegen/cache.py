"""A disk cache of compiled code (LLVM objects, OpenCL binaries), safe for concurrent processes
without a lock.

An entry is `<key><suffix>` holding a header line (magic and SHA-256 of the payload) and the
payload. Writers write a private temporary file and `os.replace` it into place (atomic on POSIX),
so readers see a whole old entry, a whole new one, or none; a reader that finds a damaged entry
(checksum mismatch, truncation) treats it as a miss and the rebuilt payload replaces it.
Location: $GRAPHNET_CACHE_DIR, else ~/.cache/graphnet, one subfolder per namespace.
"""
from __future__ import annotations

import hashlib
import os
import tempfile

_MAGIC = b"graphnet-cache-1"


def cache_key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class DiskCache:
    def __init__(self, namespace: str, suffix: str):
        self.namespace, self.suffix = namespace, suffix

    def directory(self) -> str:
        root = os.environ.get("GRAPHNET_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "graphnet")
        return os.path.join(root, self.namespace)

    def entry_path(self, key: str) -> str:
        return os.path.join(self.directory(), key[:2], key + self.suffix)

    def load(self, key: str) -> bytes | None:
        """The cached payload for `key`, or None if absent or damaged."""
        try:
            with open(self.entry_path(key), "rb") as f:
                data = f.read()
        except OSError:
            return None
        header, _, payload = data.partition(b"\n")
        return payload if header == _header(payload) else None

    def store(self, key: str, payload: bytes) -> None:
        """Write an entry atomically; a failure to write (read-only disk, full disk) is not an error."""
        path = self.entry_path(key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(_header(payload) + b"\n" + payload)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError:
            pass


def _header(payload: bytes) -> bytes:
    return _MAGIC + b" " + hashlib.sha256(payload).hexdigest().encode()


LLVM_OBJECTS = DiskCache("llvm", ".o")
OPENCL_BINARIES = DiskCache("opencl", ".bin")
