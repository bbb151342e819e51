"""Atomic file output: a stage killed halfway leaves nothing that looks complete.

Every stage writes to a temporary name beside the final path and renames it on
success. ``os.replace`` is atomic on POSIX within one file system, so DVC and the next
stage see either the old file, no file, or the complete new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path that is renamed to ``final`` only if the block succeeds.

    A process killed inside the block leaves only the temporary (``.tmp-<name>-*``,
    git-ignored and never a DVC output); the next write of the same path deletes it.

    Args:
        final: The path the caller wants to produce.
        directory: Produce a directory instead of a file.

    Yields:
        A temporary path in the same directory as ``final`` (same file system).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Temporaries of killed runs can be as large as the output: clear them. One workspace
    # runs one stage at a time (DVC locks it; queued experiments run in copies), so none
    # of them belongs to a live run.
    for leftover in final.parent.glob(f".tmp-{final.name}-*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    # The ".tmp-" prefix keeps partial files out of globs such as "*.h5".
    tmp = Path(
        tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent)
        if directory
        else tempfile.mktemp(prefix=f".tmp-{final.name}-", suffix=final.suffix, dir=final.parent)
    )
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def remove_stale(path: str | os.PathLike) -> None:
    """Delete an output left by an earlier run, so a failed run cannot leave it behind.

    Args:
        path: File or directory to remove if present.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def file_hash(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hash a file or a directory tree (files in sorted order), for provenance records.

    Args:
        path: A file or a directory (for example a SavedModel).
        algorithm: Any ``hashlib`` algorithm name.

    Returns:
        ``"<algorithm>:<hex digest>"``.
    """
    path = Path(path)
    digest = hashlib.new(algorithm)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return f"{algorithm}:{digest.hexdigest()}"
