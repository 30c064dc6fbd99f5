"""Core I/O: atomic writes, file hashes, the cache folder and the CPU's description. Imports nothing of fer_lib's
beyond the package constants, so every other module can use it."""
from __future__ import annotations

import hashlib
import os
import platform
import tempfile
from pathlib import Path

FILE_MODE = 0o644  # what atomic_write gives its files: mkstemp makes 0600 ones, unreadable to other users


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename, so a crash never leaves a half-written ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (the one hash helper: data files, weights, shipped models)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def default_cache_dir() -> Path:
    """Parsed arrays and duplicate tables live outside the repository: $FER_CACHE or ~/.cache/fer-report."""
    return Path(os.environ.get("FER_CACHE", Path.home() / ".cache" / "fer-report"))


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return ""


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bfloat16 instructions (AMX or AVX-512 BF16); elsewhere bf16 is emulated
    and about 13x slower than float32 (measured on an AVX2-only machine)."""
    return any(flag in _cpuinfo().split() for flag in ("amx_bf16", "avx512_bf16"))


def cpu_model() -> str:
    """The CPU's model name and whether it has native bf16: the context every timing needs."""
    name = platform.processor() or platform.machine()
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    return f"{name} ({'native bf16' if cpu_has_fast_bf16() else 'no native bf16'})"
