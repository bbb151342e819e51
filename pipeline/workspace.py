"""The workspace a stage writes into: safe paths, ownership, locks and atomic outputs.

kerascope deletes and overwrites only what it created itself, and only inside the
repository it runs in:

* every ``paths.*`` setting must resolve (symlinks included) to a path inside the
  workspace that is neither the workspace itself, nor inside ``.git`` or ``.dvc``, nor a
  parent of or the same as another configured path (:func:`check_paths`);
* an existing file or directory at an output path is replaced only if it is recognisably
  a kerascope output of that kind: an HDF5 file carrying the kind in its
  ``kerascope_format`` attribute, a ``.keras`` archive carrying kerascope's marker entry,
  a JSON metrics file, or a directory carrying the marker file :data:`MARKER`
  (:func:`is_own_output`); anything else is refused with one line, before any work;
* each output is written to a temporary name beside it and renamed into place only when
  complete (``os.replace`` is atomic within one file system), so a stage killed halfway
  leaves the old output or none, never a partial one;
* while a stage writes an output it holds an exclusive ``fcntl`` lock on it; a second
  process that wants the same output is refused with one line, and temporaries are
  cleared only by the holder of the lock, so nobody deletes a live process's temporary.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import KerascopeError

#: Every configured path, and the kind of output that lives there.
PATH_KINDS = {
    "dataset": "dataset",
    "model": "model",
    "evaluation": "evaluation",
    "live": "live",
    "activations": "activations",
    "attributions": "attributions",
    "maximization": "maximization",
    "concepts": "concepts",
    "metrics": "metrics",
    "report": "report",
}
#: What each stage writes: configured outputs, and files inside ``paths.metrics``.
STAGE_OUTPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "data": (("dataset",), ()),
    "train": (("model", "evaluation", "live"), ("train.json",)),
    "extract": (("activations",), ("extract.json", "layer_health.json")),
    "attribute": (("attributions",), ("attribute.json",)),
    "maximize": (("maximization",), ("maximize.json",)),
    "concepts": (("concepts",), ("concepts.json",)),
    "render": (("report",), ()),
}
#: Kinds written as HDF5 files whose ``kerascope_format`` attribute names the kind.
HDF5_KINDS = ("dataset", "evaluation", "activations", "attributions", "maximization", "concepts")
#: Kinds written as whole directories carrying :data:`MARKER`.
DIRECTORY_KINDS = ("live", "report", "compare")
#: Marker file inside every directory kerascope creates as an output.
MARKER = ".kerascope-output"
#: Entry added to every ``.keras`` archive kerascope saves, so it knows the file is its own.
MODEL_MARKER = "kerascope.json"
#: Prefix of temporaries and of lock files (both git-ignored, never DVC outputs).
TMP_PREFIX = ".tmp-"
LOCK_PREFIX = ".kerascope-lock-"
#: Directories inside the workspace that no output may touch.
PROTECTED = (".git", ".dvc")


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def _resolve(root: Path, value: str) -> Path:
    """Absolute path of ``value`` relative to ``root``, with every symlink resolved.

    A symlink into DVC's cache (``cache.type symlink``) is left as it is: it is DVC's
    link to a cached output, and replacing it removes no data.
    """
    joined = root / value
    parent = joined.parent.resolve()
    candidate = parent / joined.name
    if candidate.is_symlink():
        target = candidate.resolve()
        cache = root.resolve() / ".dvc" / "cache"
        return candidate if target.is_relative_to(cache) else target
    return candidate.resolve()


def inside_workspace(value: str, root: str | os.PathLike, name: str) -> Path:
    """Resolve an output path given on a command line, refusing anything outside ``root``.

    Raises:
        KerascopeError: The path is outside the workspace, the workspace itself, or in
            ``.git``/``.dvc``.
    """
    root = Path(root).resolve()
    path = _resolve(root, value)
    if path == root or not path.is_relative_to(root):
        raise KerascopeError(
            f"{name} '{value}' resolves to '{path}', which is not inside the workspace "
            f"'{root}'; kerascope writes only below it"
        )
    for protected in PROTECTED:
        if path.is_relative_to(root / protected):
            raise KerascopeError(f"{name} '{value}' is inside '{protected}'")
    return path


def check_paths(paths, root: str | os.PathLike) -> dict[str, Path]:
    """Validate the ``paths`` config section against the workspace.

    Args:
        paths: The ``paths`` section as loaded from ``params.yaml``.
        root: The workspace (the repository root, where ``params.yaml`` lives).

    Returns:
        Each key of :data:`PATH_KINDS` mapped to its absolute, resolved path.

    Raises:
        KerascopeError: A missing or extra key, a non-string value, or a path outside
            the workspace, at its root, inside ``.git``/``.dvc``, equal to another
            configured path or containing one; one line, before any work.
    """
    root = Path(root).resolve()
    if not isinstance(paths, dict):
        raise KerascopeError(
            f"config section 'paths' must be a mapping of {', '.join(PATH_KINDS)}, got "
            f"{paths!r}; run `python -m pipeline.config` to recompose params.yaml from conf/"
        )
    missing = [k for k in PATH_KINDS if k not in paths]
    if missing:
        raise KerascopeError(
            f"config section 'paths' has no key '{missing[0]}'; it needs {', '.join(PATH_KINDS)}"
            " (run `python -m pipeline.config` to recompose params.yaml from conf/)"
        )
    extra = [k for k in paths if k not in PATH_KINDS]
    if extra:
        raise KerascopeError(
            f"unknown config key 'paths.{extra[0]}'; valid: "
            + ", ".join(f"paths.{k}" for k in PATH_KINDS)
        )
    resolved: dict[str, Path] = {}
    for key in PATH_KINDS:
        value = paths[key]
        if not isinstance(value, str) or not value.strip():
            raise KerascopeError(
                f"invalid value {value!r} for 'paths.{key}'; expected a relative path such "
                f"as 'outputs/{key}'"
            )
        path = _resolve(root, value)
        where = f"'paths.{key}' = '{value}'"
        if path == root:
            raise KerascopeError(
                f"{where} is the workspace itself; outputs go below it, e.g. 'outputs/{key}'"
            )
        if not path.is_relative_to(root):
            raise KerascopeError(
                f"{where} resolves to '{path}', outside the workspace '{root}'; kerascope "
                f"writes only inside the repository (e.g. 'outputs/{key}')"
            )
        for protected in PROTECTED:
            if path.is_relative_to(root / protected) and not (
                protected == ".dvc" and path.is_symlink()
            ):
                raise KerascopeError(
                    f"{where} is inside '{protected}', which kerascope never writes to"
                )
        resolved[key] = path
    keys = list(resolved)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            pa, pb = resolved[a], resolved[b]
            if pa == pb:
                raise KerascopeError(
                    f"'paths.{a}' and 'paths.{b}' are the same path "
                    f"'{_display(pa, root)}'; every output needs its own path"
                )
            for outer, inner in ((a, b), (b, a)):
                if resolved[inner].is_relative_to(resolved[outer]):
                    raise KerascopeError(
                        f"'paths.{outer}' ('{_display(resolved[outer], root)}') contains "
                        f"'paths.{inner}' ('{_display(resolved[inner], root)}'); outputs "
                        "must not nest"
                    )
    return resolved


def _hdf5_kind(path: Path) -> str | None:
    try:
        import h5py

        with h5py.File(path, "r") as handle:
            found = handle.attrs.get("kerascope_format")
    except (OSError, ValueError):
        return None
    if isinstance(found, bytes):
        found = found.decode()
    return str(found).split("/")[0] if found is not None else None


def is_own_output(path: str | os.PathLike, kind: str) -> bool:
    """Whether ``path`` is absent or recognisably a kerascope output of ``kind``.

    Args:
        path: The output path.
        kind: A value of :data:`PATH_KINDS` (or ``json``, ``compare``).

    Returns:
        True if kerascope may delete or replace what is there.
    """
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return True  # removing a link removes no data
    if kind in DIRECTORY_KINDS:
        return path.is_dir() and ((path / MARKER).is_file() or not any(path.iterdir()))
    if not path.is_file():
        return False
    if kind in HDF5_KINDS:
        return _hdf5_kind(path) == kind
    if kind == "model":
        try:
            with zipfile.ZipFile(path) as archive:
                return MODEL_MARKER in archive.namelist()
        except (OSError, zipfile.BadZipFile):
            return False
    if kind == "json":
        try:
            return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
        except (OSError, ValueError):
            return False
    raise ValueError(f"unknown output kind {kind!r}")


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)


def disk_full(exc: BaseException) -> bool:
    """Whether an exception (or one it was raised from) means the disk or quota is full."""
    seen = 0
    while exc is not None and seen < 10:
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        text = str(exc).lower()
        if "no space left" in text or "file too large" in text or "disk quota" in text:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


@dataclass
class Output:
    """One output a stage writes: its path, kind and name for messages."""

    name: str
    path: Path
    kind: str


@dataclass
class StageOutputs:
    """Claim a stage's outputs: lock them, check they are ours, then write atomically.

    Use it as a context manager around the whole stage::

        with StageOutputs(root, {"activations": (path, "activations")}) as outputs:
            with outputs.write("activations") as tmp:
                ...  # write tmp; it is renamed to the output only if this succeeds

    On entering, each output is locked (a second process is refused with one line), an
    existing output that is not recognisably kerascope's is refused with one line, and
    the old output and any temporaries that killed runs left beside it are removed, so a
    failed run can never leave an old result that passes for the new one.

    Args:
        root: The workspace, for messages.
        outputs: Name -> (path, kind) of every output.
        remove_stale: Delete the old outputs on entering (default).
    """

    root: Path
    outputs: dict[str, tuple[Path, str]]
    remove_stale: bool = True
    _claimed: dict[str, Output] = field(default_factory=dict)
    _locks: list[int] = field(default_factory=list)

    def __enter__(self) -> StageOutputs:
        try:
            for name, (path, kind) in self.outputs.items():
                output = Output(name, Path(path), kind)
                self._lock(output)
                self._claimed[name] = output
            check_owned(self.root, {n: (o.path, o.kind) for n, o in self._claimed.items()})
            for output in self._claimed.values():
                self._clear_temporaries(output)
                if self.remove_stale:
                    _remove(output.path)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        for fd in self._locks:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._locks.clear()

    def _lock(self, output: Output) -> None:
        parent = output.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        lock_path = parent / f"{LOCK_PREFIX}{output.path.name}"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise KerascopeError(
                f"another kerascope process (pid {holder}) is writing "
                f"'{_display(output.path, self.root)}'; wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._locks.append(fd)

    @staticmethod
    def _clear_temporaries(output: Output) -> None:
        # We hold the output's lock, and only the lock's holder makes temporaries of it:
        # every temporary found now was left by a killed run.
        for leftover in output.path.parent.glob(f"{TMP_PREFIX}{output.path.name}-*"):
            _remove(leftover)

    def path(self, name: str) -> Path:
        """The final path of output ``name``."""
        return self._claimed[name].path

    @contextlib.contextmanager
    def write(self, name: str) -> Iterator[Path]:
        """Yield a temporary path that becomes output ``name`` only if the block succeeds.

        Directory outputs get the marker file; a full disk is reported as one line.
        """
        output = self._claimed[name]
        with atomic_path(output.path, kind=output.kind, owned=True) as tmp:
            yield tmp


def check_owned(root: Path, outputs: dict[str, tuple[Path, str]]) -> None:
    """Refuse, with one line, if any output path holds something kerascope did not create.

    Raises:
        KerascopeError: Naming the path and the output.
    """
    for name, (path, kind) in outputs.items():
        if not is_own_output(path, kind):
            what = "a directory" if path.is_dir() else "a file"
            raise KerascopeError(
                f"'{_display(path, root)}' ({name}) is {what} that is not a kerascope {kind} "
                "output; it is never deleted or overwritten: move it away or choose another path"
            )


def _outputs(
    paths: dict[str, Path], names: Sequence[str], metrics: Sequence[str]
) -> dict[str, tuple[Path, str]]:
    outputs = {name: (paths[name], PATH_KINDS[name]) for name in names}
    outputs.update({f"metrics/{m}": (paths["metrics"] / m, "json") for m in metrics})
    return outputs


def _root() -> Path:
    return Path(os.environ.get("KERASCOPE_ROOT", os.getcwd())).resolve()


def preflight(paths: dict[str, Path], *names: str, metrics: Sequence[str] = ()) -> None:
    """Check, without touching anything, that a stage may replace its outputs.

    Stages call it while they validate their config, so a path holding a user's file is
    refused before any work.
    """
    check_owned(_root(), _outputs(paths, names, metrics))


def claim(paths: dict[str, Path], *names: str, metrics: Sequence[str] = ()) -> StageOutputs:
    """The :class:`StageOutputs` of a stage: configured outputs plus metrics files.

    Args:
        paths: Checked paths (:func:`check_paths`).
        *names: Keys of ``paths`` the stage writes.
        metrics: File names the stage writes inside ``paths["metrics"]``.
    """
    return StageOutputs(_root(), _outputs(paths, names, metrics))


@contextlib.contextmanager
def atomic_path(
    final: str | os.PathLike, *, kind: str = "json", owned: bool = False
) -> Iterator[Path]:
    """Yield a temporary path that is renamed to ``final`` only if the block succeeds.

    A process killed inside the block leaves only the temporary (``.tmp-<name>-*``,
    git-ignored and never a DVC output). For directory kinds (:data:`DIRECTORY_KINDS`)
    the temporary is a directory and gets the :data:`MARKER` file. An existing ``final``
    is replaced only if :func:`is_own_output` says it is kerascope's.

    Args:
        final: The path the caller wants to produce.
        kind: The output kind (decides file or directory, and what may be replaced).
        owned: The caller already checked ownership and holds the output's lock.

    Yields:
        A temporary path in the same directory as ``final`` (same file system).

    Raises:
        KerascopeError: ``final`` exists and is not kerascope's, or the disk is full.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if not owned and not is_own_output(final, kind):
        raise KerascopeError(
            f"'{final}' exists and kerascope did not create it; it is never deleted or "
            "overwritten: move it away or choose another path"
        )
    directory = kind in DIRECTORY_KINDS
    # The ".tmp-" prefix keeps partial files out of globs such as "*.h5".
    prefix = f"{TMP_PREFIX}{final.name}-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
        (tmp / MARKER).write_text(json.dumps({"kind": kind}) + "\n")
    else:
        handle, name = tempfile.mkstemp(prefix=prefix, suffix=final.suffix, dir=final.parent)
        os.close(handle)
        tmp = Path(name)
        tmp.unlink()  # writers create the file themselves (h5py refuses some existing files)
    try:
        yield tmp
        _remove(final)
        os.replace(tmp, final)
    except BaseException as exc:
        _remove(tmp)
        if disk_full(exc) and not isinstance(exc, KerascopeError):
            raise KerascopeError(out_of_space(final)) from None
        raise


@contextlib.contextmanager
def hdf5_file(path: str | os.PathLike) -> Iterator:
    """Create an HDF5 file for writing that fails cleanly when the disk fills up.

    HDF5 keeps metadata in memory and writes it when the file closes; on a full disk
    that flush fails again and again (and has crashed the interpreter at exit). When a
    write fails for lack of space, the file is truncated first, which frees its blocks,
    so closing it succeeds and the caller can delete it.
    """
    import h5py

    # No chunk cache: kerascope writes whole chunks, and without a cache a failing write
    # fails at once instead of when a cached chunk is evicted (possibly at exit).
    handle = h5py.File(path, "w", rdcc_nbytes=0)

    def close_after_failure(exc: BaseException) -> None:
        if disk_full(exc):
            with contextlib.suppress(OSError):
                os.truncate(path, 0)
        with contextlib.suppress(Exception):
            handle.close()

    try:
        yield handle
    except BaseException as exc:
        close_after_failure(exc)
        raise
    try:
        handle.close()
    except Exception as exc:
        close_after_failure(exc)
        raise


def out_of_space(path: Path, needed: int | None = None) -> str:
    """The one-line message for a full disk while writing ``path``."""
    free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    need = f"; it needs about {needed / 1e6:,.0f} MB" if needed else ""
    return (
        f"no space left on the device while writing '{path}' ({free / 1e6:,.0f} MB free{need});"
        " nothing was kept: free some space and run the stage again"
    )


def check_free_space(path: str | os.PathLike, needed: int, margin: float = 1.1) -> None:
    """Refuse before any work if the file system of ``path`` has less than ``needed`` bytes.

    Raises:
        KerascopeError: Not enough free space, naming the file and the amount needed.
    """
    path = Path(path)
    free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    if needed * margin > free:
        raise KerascopeError(
            f"'{path}' needs about {needed * margin / 1e6:,.0f} MB but only {free / 1e6:,.0f} MB "
            "are free on its device; free some space, choose fewer inputs or layers, or set "
            "a compression"
        )


def mark_model(path: str | os.PathLike, info: dict | None = None) -> None:
    """Add kerascope's marker entry to a ``.keras`` archive it has just saved.

    Keras ignores entries it does not know, so the file loads as before; the marker tells
    a later run that the file is kerascope's own output and may be replaced.
    """
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(MODEL_MARKER, json.dumps({"kerascope_format": "model/1", **(info or {})}))


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
