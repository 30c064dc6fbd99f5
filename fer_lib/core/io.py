"""Core I/O: atomic writes and folder replacement, hashes, locks, the cache folder and the CPU's description."""
from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fer_lib import ConfigError

# image files read from folders: FER2013 layouts of one image per face, and photos to classify (Pillow reads all)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".gif", ".webp", ".tif", ".tiff")


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename, so a crash never leaves a half-written ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files, unreadable to other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_savez(path: Path, **arrays) -> None:
    """``np.savez`` through atomic_write (into a file object: np.savez would append ".npz" to a bare name)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (the one hash helper: data files, weights, shipped models)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def array_sha256(*arrays) -> str:
    """Hex sha256 of arrays' bytes, one after the other (C order): the fingerprint of faces held in memory."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """Parsed arrays and duplicate tables live outside the repository: $FER_CACHE or ~/.cache/fer-report."""
    return Path(os.environ.get("FER_CACHE", Path.home() / ".cache" / "fer-report"))


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bfloat16 instructions (AMX or AVX-512 BF16); elsewhere bf16 is emulated
    and about 13x slower than float32 (measured on an AVX2-only machine)."""
    return bool({"amx_bf16", "avx512_bf16"} & set(_cpuinfo().split()))


def cpu_model() -> str:
    """The CPU's model name and whether it has native bf16: the context every timing needs."""
    names = [line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")]
    name = names[0] if names else platform.processor() or platform.machine()
    return f"{name} ({'native bf16' if cpu_has_fast_bf16() else 'no native bf16'})"


def _cpuinfo() -> str:
    path = Path("/proc/cpuinfo")  # Linux only
    return path.read_text() if path.exists() else ""


@contextmanager
def exclusive_lock(lock_path: Path, what: str, wait: bool = True):
    """Hold an exclusive ``fcntl.flock`` on ``lock_path`` while the block runs; where another process holds it, say
    whom we wait for (the holder writes its pid, command and start time into the file), or raise ConfigError when
    ``wait`` is False. The kernel drops the lock when its holder exits, however it exits: no stale lock."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process (it did not say what it is doing)"
            if not wait:
                raise ConfigError(f"{lock_path}: held by {holder}; try again when it is done "
                                  "(or leave out --no-wait to wait for it)") from None
            print(f"waiting for {holder} ({lock_path})", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} ({' '.join(sys.argv)[:200]}, since {time.strftime('%H:%M:%S')}), {what}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def replace_directory(new: Path, final: Path) -> None:
    """Put the folder ``new`` in place of ``final`` by two renames through ``.<final>.previous`` beside it. Killed
    between them, ``final`` is missing but the previous folder is whole under that name, and the next call (or
    :func:`restore_directory`, which this one calls first) puts it back before anything else happens."""
    previous = restore_directory(Path(final))
    if os.path.exists(final):
        shutil.rmtree(previous, ignore_errors=True)
        os.rename(final, previous)
    os.rename(new, final)
    shutil.rmtree(previous, ignore_errors=True)


def restore_directory(final: Path) -> Path:
    """The previous folder back at ``final`` after a replacement killed between its renames; returns its place."""
    final = Path(final)
    previous = final.with_name(f".{final.name}.previous")
    if not final.exists() and previous.is_dir():
        os.rename(previous, final)
    return previous
