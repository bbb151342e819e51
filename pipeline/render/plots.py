"""Offline ``dvc plots show``: the vega libraries from a registry package, not a CDN.

DVC's plot page loads vega, vega-lite and vega-embed from jsdelivr, so the training
curves are blank without a network. ``.dvc/plots-template.html`` (the ``[plots]
html_template`` of ``.dvc/config``) leaves DVC's CDN scripts out and loads
``outputs/report/vega.js`` instead, which the render stage writes from the bundle the
``vl-convert-python`` wheel carries.
"""

from __future__ import annotations

from pathlib import Path

#: The bundle's name inside the report directory (the template's script points here).
BUNDLE_NAME = "vega.js"


def vega_bundle() -> str:
    """vega, vega-lite and vega-embed as one script defining ``window.vegaEmbed``."""
    import vl_convert

    # DVC's plot specs are Vega-Lite 5: the newest 5.x the wheel carries.
    return vl_convert.javascript_bundle(vl_version="5.21")


def write_vega_bundle(target: Path, cache: Path | None = None) -> None:
    """Write the bundle to ``target``, reusing a copy in ``cache`` (keyed by version).

    Args:
        target: The file to write.
        cache: A kerascope cache directory, or None.
    """
    import vl_convert

    version = getattr(vl_convert, "__version__", "unknown")
    from pipeline.render.report import CACHE_MARKER

    # Only a cache kerascope created (it carries the marker) is written into.
    ours = cache is not None and (cache / CACHE_MARKER).is_file()
    cached = cache / f"vega-{version}.js" if ours else None
    if cached is not None and cached.is_file():
        target.write_bytes(cached.read_bytes())
        return
    text = vega_bundle()
    target.write_text(text, encoding="utf-8")
    if cached is not None:
        tmp = cached.with_name(f".tmp-{cached.name}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(cached)
