"""What every kerascope HDF5 file shares: provenance attributes and the format check.

Every HDF5 file kerascope writes carries root attributes::

    kerascope_format   "<kind>/<version>", for example "activations/2"
    kerascope_version  package version that wrote it
    tensorflow_version, keras_version
    config_yaml        the resolved configuration (YAML) that produced it

Readers call :func:`open_artifact`, which checks the kind and version and turns a
missing, truncated or foreign file into a one-line :class:`KerascopeError`.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import h5py

import pipeline
from pipeline.errors import KerascopeError

#: The root attributes of every file (beside each kind's own).
PROVENANCE = ("kerascope_format", "kerascope_version", "tensorflow_version", "keras_version")


def provenance_attrs(kind: str, version: int, config_yaml: str = "") -> dict[str, str]:
    """Root attributes that identify an artifact and what produced it.

    Versions come from the installed distributions, so writing them never imports
    TensorFlow (the data stage does not need it).
    """
    return {
        "kerascope_format": f"{kind}/{version}",
        "kerascope_version": pipeline.__version__,
        "tensorflow_version": _installed("tensorflow"),
        "keras_version": _installed("keras"),
        "config_yaml": config_yaml,
    }


def _installed(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def write_attrs(obj: h5py.HLObject, attrs: dict) -> None:
    """Write attributes, storing dicts and lists of strings as JSON text (None: skipped)."""
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, dict) or (
            isinstance(value, list | tuple)
            and (not value or any(isinstance(v, str | dict | list | tuple) for v in value))
        ):
            value = json.dumps(value)
        obj.attrs[key] = value


def read_json_attr(obj: h5py.HLObject, key: str, default=None):
    """Read an attribute written by :func:`write_attrs` as JSON text."""
    if key not in obj.attrs:
        return default
    value = obj.attrs[key]
    if isinstance(value, bytes):
        value = value.decode()
    return json.loads(value) if isinstance(value, str) else value


def text_attr(obj: h5py.HLObject, key: str, default: str = "") -> str:
    """A string attribute (h5py may return bytes)."""
    value = obj.attrs.get(key, default)
    return value.decode() if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def open_artifact(
    source: str | Path | BinaryIO, kind: str, version: int, stage: str = ""
) -> Iterator[h5py.File]:
    """Open an HDF5 artifact for reading after checking it is complete and current.

    Args:
        source: The file, or an open binary file object (for example from ``dvc.api``).
        kind: The expected kind.
        version: The layout version the reader understands.
        stage: The stage that writes it, for the hint in error messages.

    Yields:
        The open ``h5py.File``.

    Raises:
        KerascopeError: Missing, truncated/unreadable, wrong kind, or wrong version.
    """
    name = source if isinstance(source, str | Path) else getattr(source, "name", kind)
    hint = f"; run `dvc repro {stage}` to rebuild it" if stage else ""
    if isinstance(source, str | Path) and not Path(source).exists():
        raise KerascopeError(f"{kind} file '{name}' does not exist{hint}")
    try:
        handle = h5py.File(source, "r")
    except OSError:
        raise KerascopeError(
            f"{kind} file '{name}' is truncated or not an HDF5 file{hint}"
        ) from None
    with handle:
        found = text_attr(handle, "kerascope_format") or None
        expected = f"{kind}/{version}"
        if found != expected:
            raise KerascopeError(
                f"'{name}' has layout {found or 'unknown (not written by kerascope)'}, "
                f"expected {expected}{hint}"
            )
        try:
            yield handle
        except KeyError as err:
            detail = str(err).strip("'\"")
            raise KerascopeError(
                f"'{name}' does not have the expected layout ({detail}){hint or ''}"
            ) from None


def hdf5_name(path: str) -> str:
    """A layer path as an HDF5 object name: ``.`` and ``..`` components are escaped.

    HDF5 cannot name an object ``.`` or ``..`` (a layer may well be called that);
    ``%`` is escaped too, so the mapping is reversible (:func:`layer_path_of`).
    """
    parts = []
    for part in path.split("/"):
        part = part.replace("%", "%25")
        if part in (".", ".."):
            part = part.replace(".", "%2E")
        parts.append(part)
    return "/".join(parts)


def layer_path_of(name: str) -> str:
    """Invert :func:`hdf5_name`."""
    return "/".join(p.replace("%2E", ".").replace("%25", "%") for p in name.split("/"))


def layout(table: str) -> dict[str, str]:
    """Parse a layout table: one ``name   description`` per line (two or more spaces).

    Names are datasets (``methods/<method>/maps``) or attributes, written
    ``object@attribute`` (``@name`` on the root). The README's tables list the same.
    """
    rows = [line.strip() for line in table.strip().splitlines() if line.strip()]
    return dict(re.split(r"\s{2,}", row, maxsplit=1) for row in rows)


def common_attrs(f: h5py.File) -> dict[str, str]:
    """The provenance attributes every reader returns (``model_hash``, ``data_hash``, ...)."""
    keys = ("model_hash", "data_hash", "source", "config_yaml", *PROVENANCE)
    return {k: text_attr(f, k) for k in keys if k in f.attrs}
