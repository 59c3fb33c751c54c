"""A disk cache of compiled code (LLVM objects, OpenCL binaries), safe for concurrent processes
without a lock.

An entry is `<key><suffix>` holding a header line (magic, the entry's full key and the SHA-256 of
the payload) and the payload. `load` returns a payload only if the header names the requested key
and the checksum matches: an entry copied over another key's file, a truncated or a damaged one is a
miss, and the rebuilt payload replaces it. Keys are SHA-256 digests of all the key material
(`cache_key`), so the header binds the entry to everything it was compiled from.
Writers write a private temporary file and `os.replace` it into place (atomic on POSIX), so readers
see a whole old entry, a whole new one, or none.

Loading native code from a directory is executing it, so the cache must be private to the user:
graphnet creates its directories (and any missing parents) with mode 0700, and if the cache root,
the namespace folder or an entry's folder is writable by group or others or owned by another user,
the cache is bypassed (code is compiled in memory, nothing is read or written) with one
`UnsafeCacheWarning` naming the directory and the reason, as pip and ccache do. An entry file that
is writable by others or owned by another user is a miss.
Location: $GRAPHNET_CACHE_DIR, else $XDG_CACHE_HOME/graphnet, else ~/.cache/graphnet, one subfolder
per namespace. Size: at most $GRAPHNET_CACHE_MAX_BYTES (default 512 MiB) over all namespaces; a hit
refreshes its entry's modification time, and a store that takes the cache over the limit evicts the
least recently used entries down to three quarters of it. `graphnet cache info|clear` reports and
empties it (`info`, `clear`).
"""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import warnings

_MAGIC = b"graphnet-cache-2"
DEFAULT_MAX_BYTES = 512 << 20
_warned: set[str] = set()  # directories already warned about (one warning each per process)


class UnsafeCacheWarning(UserWarning):
    """The compile cache directory is not private to the user, so it is not used."""


def cache_key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class DiskCache:
    def __init__(self, namespace: str, suffix: str):
        self.namespace, self.suffix = namespace, suffix

    def root(self) -> str:
        return cache_root()

    def directory(self) -> str:
        return os.path.join(self.root(), self.namespace)

    def entry_path(self, key: str) -> str:
        return os.path.join(self.directory(), key[:2], key + self.suffix)

    def load(self, key: str) -> bytes | None:
        """The cached payload for `key`, or None if absent, damaged, another key's, or the cache is unsafe."""
        path = self.entry_path(key)
        if not self._private(os.path.dirname(path)):
            return None
        try:
            with open(path, "rb") as f:
                if _unsafe(os.fstat(f.fileno())):
                    return None
                data = f.read()
        except OSError:
            return None
        header, _, payload = data.partition(b"\n")
        if header != _header(key, payload):
            return None
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
        return payload

    def store(self, key: str, payload: bytes) -> None:
        """Write an entry atomically; a failure to write (read-only disk, full disk) or an unsafe cache is
        not an error."""
        path = self.entry_path(key)
        folder = os.path.dirname(path)
        if not self._private(folder):  # before creating anything under an unsafe root
            return
        try:
            _makedirs_private(folder)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")  # mode 0600
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(_header(key, payload) + b"\n" + payload)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
            evict(max_bytes())
        except OSError:
            pass

    def private_directory(self) -> str | None:
        """The namespace's folder where it exists and it and the root are private to this user, else None."""
        folder = self.directory()
        return folder if os.path.isdir(folder) and self._private(folder) else None

    def _private(self, folder: str) -> bool:
        """Whether the root, namespace and entry folders that exist are all private to this user
        (warns once per unsafe directory); a missing folder holds no entries and is safe."""
        for d in (self.root(), self.directory(), folder):
            try:
                st = os.stat(d)
            except OSError:
                continue
            reason = _unsafe(st)
            if reason:
                _warn_once(d, reason)
                return False
        return True


def cache_root() -> str:
    """$GRAPHNET_CACHE_DIR, else $XDG_CACHE_HOME/graphnet, else ~/.cache/graphnet."""
    explicit = os.environ.get("GRAPHNET_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "graphnet")


def max_bytes() -> int:
    """The size limit: $GRAPHNET_CACHE_MAX_BYTES, else 512 MiB."""
    text = os.environ.get("GRAPHNET_CACHE_MAX_BYTES", "")
    try:
        return int(text) if text else DEFAULT_MAX_BYTES
    except ValueError:
        raise ValueError(f"GRAPHNET_CACHE_MAX_BYTES must be a number of bytes, got {text!r}") from None


def entries(root: str | None = None) -> list[tuple[str, os.stat_result]]:
    """Every entry file under the cache root (any namespace) with its status, oldest use first."""
    root = root or cache_root()
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.startswith(".tmp-"):
                continue
            path = os.path.join(folder, name)
            try:
                found.append((path, os.stat(path)))
            except OSError:
                pass  # removed meanwhile by another process
    return sorted(found, key=lambda e: e[1].st_mtime)


def evict(limit: int) -> int:
    """Delete the least recently used entries while the cache holds more than `limit` bytes, down to
    three quarters of it (so a full cache does not evict on every store); returns the bytes freed."""
    found = entries()
    total = sum(st.st_size for _, st in found)
    if total <= limit:
        return 0
    freed = 0
    for path, st in found:
        if total - freed <= limit * 3 // 4:
            break
        try:
            os.unlink(path)
            freed += st.st_size
        except OSError:
            pass
    return freed


def info() -> dict:
    """Location, entries and bytes (in all and per namespace) and the size limit."""
    root = cache_root()
    found = entries(root)
    spaces: dict[str, list[int]] = {}
    for path, st in found:
        space = os.path.relpath(path, root).split(os.sep)[0]
        spaces.setdefault(space, [0, 0])
        spaces[space][0] += 1
        spaces[space][1] += st.st_size
    return {"location": root, "entries": len(found), "bytes": sum(st.st_size for _, st in found),
            "limit": max_bytes(), "namespaces": {k: {"entries": n, "bytes": b} for k, (n, b) in sorted(spaces.items())}}


def clear() -> tuple[int, int]:
    """Delete every entry (and stale temporary file); returns (entries, bytes) removed."""
    removed, freed = 0, 0
    for folder, _, files in os.walk(cache_root()):
        for name in files:
            path = os.path.join(folder, name)
            try:
                size = os.stat(path).st_size
                os.unlink(path)
            except OSError:
                continue
            if not name.startswith(".tmp-"):
                removed, freed = removed + 1, freed + size
    return removed, freed


def _unsafe(st: os.stat_result) -> str | None:
    """Why a file or directory with this status must not be trusted, or None."""
    uid = os.getuid()
    if st.st_uid != uid:
        return f"it is owned by uid {st.st_uid}, not by the current user (uid {uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _warn_once(directory: str, reason: str) -> None:
    if directory in _warned:
        return
    _warned.add(directory)
    warnings.warn(f"graphnet: not using the compile cache in {directory}: {reason}; compiled code is "
                  f"loaded from it, so it must be private to you (owned by you, mode 0700)",
                  UnsafeCacheWarning, stacklevel=3)


def _makedirs_private(path: str) -> None:
    """`os.makedirs` creating every missing level with mode 0700 (makedirs gives parents the umask's mode)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs_private(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass  # another process made it


def _header(key: str, payload: bytes) -> bytes:
    return b" ".join((_MAGIC, key.encode(), hashlib.sha256(payload).hexdigest().encode()))


LLVM_OBJECTS = DiskCache("llvm", ".o")
GEMM_OBJECTS = DiskCache("gemm", ".o")  # the GEMM library's routines (codegen/llvm/gemm_library.py)
OPENCL_BINARIES = DiskCache("opencl", ".bin")
LLVM_SHARED = DiskCache("llvm", ".so")  # a step's objects and GEMM routines as one shared object (llvm/jit.py)
HOSTS = DiskCache("host", ".json")  # the host CPU's name and features as LLVM reads them, per CPU (llvm/jit.py)
SOURCES = DiskCache("host", ".digest")  # graphnet's source digest by its files' stamps (graphnet/step_cache.py)
STEPS = DiskCache("steps", ".step")  # compiled functions keyed on the written graph (graphnet/step_cache.py)
