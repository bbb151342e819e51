"""One static, self-contained HTML report: no server, no CDN, no JavaScript.

Every string that comes from a model, a config or a file goes through :func:`esc`, so a
layer named ``<script>`` is shown as text and never runs.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;
     background:#fafafa}
header{background:#263238;color:#fff;padding:1em 2em}
header h1{margin:0;font-size:1.5em}
nav{position:fixed;top:0;left:0;width:15em;height:100%;overflow-y:auto;background:#eceff1;
    padding:1em;box-sizing:border-box;font-size:.9em;overflow-wrap:anywhere}
nav a{color:#1a237e;text-decoration:none}
nav ol{padding-left:1.2em}
main{margin-left:15em;padding:1em 2em;max-width:1200px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:1em 1.5em;margin:1em 0}
figure{margin:1em 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
th{background:#f0f0f0}
pre{background:#f5f5f5;padding:.8em;overflow-x:auto;font-size:.8em}
.muted{color:#777}
"""


def esc(value) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape(str(value), quote=True)


def anchor(*parts: str) -> str:
    """A safe, unique id (and file stem) for ``parts``: letters, digits, '-' and '_' only.

    The ``/`` of nested layer paths becomes ``-`` (``base/dense`` -> ``base-dense``).
    Where other characters are replaced (``a.b`` and ``a-b`` would both become ``a-b``),
    a short hash of the original text is appended, so two layers never share a figure
    file or a table-of-contents target.
    """
    lossy = False
    safe_parts = []
    for part in (str(p) for p in parts):
        lossy = lossy or bool(re.search(r"[^A-Za-z0-9_/]", part))
        safe_parts.append(re.sub(r"[^A-Za-z0-9_]+", "-", part).strip("-"))
    safe = "-".join(p for p in safe_parts if p) or "section"
    if lossy:
        safe += "-" + hashlib.sha1("\0".join(map(str, parts)).encode()).hexdigest()[:8]
    return safe


class FigureWriter:
    """Saves figures under ``figures/`` in the configured formats; returns the path to show."""

    def __init__(self, root: Path, formats: list[str], dpi: int) -> None:
        self.root = root
        self.formats = formats
        self.dpi = dpi
        (root / "figures").mkdir(parents=True, exist_ok=True)
        self.count = 0

    def save(self, figure, name: str) -> str:
        """Write ``figure`` in every format and return its relative path (PNG first)."""
        import matplotlib.pyplot as plt

        stem = anchor(name)
        for fmt in self.formats:
            figure.savefig(
                self.root / "figures" / f"{stem}.{fmt}", dpi=self.dpi, bbox_inches="tight"
            )
        plt.close(figure)
        self.count += 1
        first = "png" if "png" in self.formats else self.formats[0]
        return f"figures/{stem}.{first}"


@dataclass
class Block:
    """A piece of a section: a heading, a figure, a table, text or preformatted text."""

    kind: str
    content: object
    caption: str = ""
    anchor: str = ""


@dataclass
class Section:
    """A top-level report section with its own entry in the table of contents."""

    title: str
    anchor: str
    blocks: list[Block] = field(default_factory=list)

    def heading(self, text: str, anchor_id: str) -> None:
        """Add a sub-heading (listed in the table of contents)."""
        self.blocks.append(Block("heading", text, anchor=anchor_id))

    def figure(self, src: str, caption: str = "") -> None:
        """Add an image by relative path."""
        self.blocks.append(Block("figure", src, caption))

    def table(self, header: list[str], rows: list[list[object]], caption: str = "") -> None:
        """Add a table."""
        self.blocks.append(Block("table", (header, rows), caption))

    def text(self, text: str) -> None:
        """Add a paragraph (escaped)."""
        self.blocks.append(Block("text", text))

    def pre(self, text: str) -> None:
        """Add preformatted text (escaped)."""
        self.blocks.append(Block("pre", text))


def _block_html(block: Block) -> str:
    if block.kind == "heading":
        return f'<h3 id="{esc(block.anchor)}">{esc(block.content)}</h3>'
    if block.kind == "figure":
        caption = f"<figcaption>{esc(block.caption)}</figcaption>" if block.caption else ""
        alt = esc(block.caption or block.content)
        return f'<figure><img src="{esc(block.content)}" alt="{alt}">{caption}</figure>'
    if block.kind == "table":
        header, rows = block.content
        head = "".join(f"<th>{esc(h)}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
        )
        caption = f"<caption>{esc(block.caption)}</caption>" if block.caption else ""
        return f"<table>{caption}<tr>{head}</tr>{body}</table>"
    if block.kind == "pre":
        return f"<pre>{esc(block.content)}</pre>"
    return f'<p class="muted">{esc(block.content)}</p>'


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def build_html(title: str, subtitle: str, sections: list[Section]) -> str:
    """Render the sections into one HTML page with a table of contents."""
    toc = []
    for sec in sections:
        subs = "".join(
            f'<li><a href="#{esc(b.anchor)}">{esc(b.content)}</a></li>'
            for b in sec.blocks
            if b.kind == "heading"
        )
        toc.append(
            f'<li><a href="#{esc(sec.anchor)}">{esc(sec.title)}</a>'
            + (f"<ol>{subs}</ol>" if subs else "")
            + "</li>"
        )
    body = "".join(
        f'<section id="{esc(sec.anchor)}"><h2>{esc(sec.title)}</h2>'
        + "".join(_block_html(b) for b in sec.blocks)
        + "</section>"
        for sec in sections
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<nav><strong>Contents</strong><ol>{''.join(toc)}</ol></nav>"
        f"<main><header><h1>{esc(title)}</h1><div>{esc(subtitle)}</div></header>{body}</main>"
        "</body></html>\n"
    )
