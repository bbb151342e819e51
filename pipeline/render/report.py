"""One static, self-contained HTML report: no server, no CDN, no remote request.

Every string that comes from a model, a config or a file goes through :func:`esc`, so a
layer named ``<script>`` is shown as text and never runs. The only script is the small
inline table sorter below, written here.

Figures are drawn as deferred jobs (:class:`FigureWriter`): sections record what to draw,
then :meth:`FigureWriter.run` draws every figure in worker processes and reuses figures
whose inputs did not change since the last render (a content-addressed cache beside the
report).
"""

from __future__ import annotations

import hashlib
import html
import inspect
import os
import pickle
import re
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
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
main{margin-left:15em;padding:1em 2em;max-width:1200px;box-sizing:border-box}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:1em 1.5em;margin:1em 0;
        overflow-x:auto}
figure{margin:1em 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0;max-width:100%}
caption{caption-side:bottom;text-align:left;font-size:.85em;color:#555;padding:.3em 0;
        white-space:normal}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top;
      overflow-wrap:anywhere;word-break:break-word}
th{background:#f0f0f0}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th:after{content:" \\2195";color:#999}
pre{background:#f5f5f5;padding:.8em;overflow-x:auto;font-size:.8em}
.muted{color:#777}
details{border:1px solid #e0e0e0;border-radius:4px;margin:.4em 0;padding:.2em .8em}
details>summary{cursor:pointer;padding:.2em 0}
details[open]>summary{border-bottom:1px solid #eee;margin-bottom:.4em}
ul.findings{list-style:none;padding-left:0}
ul.findings li{margin:.45em 0;padding-left:1.6em;position:relative}
ul.findings li:before{position:absolute;left:0;font-weight:bold}
ul.findings li.ok:before{content:"\\2714";color:#2e7d32}
div.tokens{margin:.3em 0;line-height:1.9;font-family:ui-monospace,monospace;font-size:.9em}
span.tok{padding:1px 3px;border-radius:3px;white-space:pre}
span.tok-label{display:inline-block;min-width:12em;color:#555;font-family:system-ui,sans-serif}
ul.findings li.warn:before{content:"!";color:#ef6c00;left:.35em}
ul.findings li.bad:before{content:"\\2716";color:#c62828}
ul.findings li.info:before{content:"\\2022";color:#1565c0;left:.3em}
dl.terms dt{font-weight:bold;margin-top:.4em}
dl.terms dd{margin-left:1.2em;color:#444}
.flag{color:#c62828;font-weight:bold}
"""

# Sorts a table.sortable by the clicked column: numbers (data-v) numerically, the rest
# as text; a second click reverses. No library, no network.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var dir = th.dataset.dir === "asc" ? -1 : 1;
      th.dataset.dir = dir === 1 ? "asc" : "desc";
      function key(row) {
        var cell = row.cells[col], v = cell.getAttribute("data-v");
        return v === null ? cell.textContent : parseFloat(v);
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x === "number" && typeof y === "number") {
          if (isNaN(x)) return 1;
          if (isNaN(y)) return -1;
          return dir * (x - y);
        }
        return dir * String(x).localeCompare(String(y));
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
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


@dataclass(frozen=True)
class FigureJob:
    """One figure to draw: ``draw(*args, **kwargs)`` returns a matplotlib Figure."""

    stem: str
    draw: Callable
    args: tuple
    kwargs: dict


@dataclass(frozen=True)
class DrawStats:
    """What :meth:`FigureWriter.run` did."""

    drawn: int
    reused: int
    workers: int


#: Name of a figure cache entry: a SHA-256 and a format. Pruning touches nothing else.
_CACHE_ENTRY = re.compile(r"^[0-9a-f]{64}\.(png|svg)$")
#: Marker file of a figure cache directory kerascope created.
CACHE_MARKER = ".kerascope-figure-cache"


def _code_hash(draw: Callable) -> str:
    """Hash of the source file that defines ``draw`` and of matplotlib's version.

    A change to the drawing code, or a new matplotlib, invalidates the cached figures.
    """
    import matplotlib

    digest = hashlib.sha256(matplotlib.__version__.encode())
    source = inspect.getsourcefile(draw)
    if source:
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def _job_key(job: FigureJob, formats: list[str], dpi: int, code: str) -> str:
    # Protocol 4 pickles numpy arrays, lists and dicts byte-for-byte reproducibly.
    payload = pickle.dumps(
        (job.draw.__module__, job.draw.__qualname__, job.args, sorted(job.kwargs.items())),
        protocol=4,
    )
    digest = hashlib.sha256(payload)
    digest.update(f"{sorted(formats)}|{dpi}|{code}".encode())
    return digest.hexdigest()


def _draw(job: FigureJob, targets: list[Path], dpi: int) -> None:
    """Draw one job and save it to ``targets`` (one path per format), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = job.draw(*job.args, **job.kwargs)
    try:
        for target in targets:
            tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
            figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format=target.suffix[1:])
            os.replace(tmp, target)
    finally:
        plt.close(figure)


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class FigureWriter:
    """Collects figure jobs under ``figures/``; :meth:`run` draws them in parallel.

    Args:
        root: The report directory being written.
        formats: ``png`` and/or ``svg``.
        dpi: Resolution of PNG figures.
        cache: A directory for reusable figures (created with a marker file), or None.
    """

    def __init__(self, root: Path, formats: list[str], dpi: int, cache: Path | None = None):
        self.root = root
        self.formats = list(formats)
        self.dpi = dpi
        self.cache = cache
        self.jobs: dict[str, FigureJob] = {}
        (root / "figures").mkdir(parents=True, exist_ok=True)

    @property
    def count(self) -> int:
        """Number of figures recorded."""
        return len(self.jobs)

    def add(self, name: str, draw: Callable, *args, **kwargs) -> str:
        """Record ``draw(*args, **kwargs)`` as figure ``name``; return the path to show.

        ``draw`` must be a module-level function (it runs in a worker process).
        """
        stem = anchor(name)
        self.jobs[stem] = FigureJob(stem, draw, args, kwargs)
        first = "png" if "png" in self.formats else self.formats[0]
        return f"figures/{stem}.{first}"

    def _usable_cache(self) -> Path | None:
        cache = self.cache
        if cache is None:
            return None
        if cache.exists() and not (cache / CACHE_MARKER).is_file():
            # Not ours: never write into, nor prune, a directory kerascope did not create.
            print(f"note: {cache} exists but is not a kerascope figure cache; not used")
            return None
        cache.mkdir(parents=True, exist_ok=True)
        (cache / CACHE_MARKER).write_text("figures cached by kerascope's render stage\n")
        return cache

    def run(self, workers: int = 1, progress: Callable[[], None] | None = None) -> DrawStats:
        """Draw every recorded figure (reusing cached ones) and prune the cache.

        Args:
            workers: Worker processes (1: draw in this process).
            progress: Called once per finished figure.

        Returns:
            How many figures were drawn and how many were reused.
        """
        progress = progress or (lambda: None)
        cache = self._usable_cache()
        codes: dict[Callable, str] = {}
        pending: list[tuple[FigureJob, list[Path], list[Path]]] = []
        used: set[str] = set()
        reused = 0
        for job in self.jobs.values():
            finals = [self.root / "figures" / f"{job.stem}.{fmt}" for fmt in self.formats]
            if cache is None:
                pending.append((job, finals, finals))
                continue
            if job.draw not in codes:
                codes[job.draw] = _code_hash(job.draw)
            key = _job_key(job, self.formats, self.dpi, codes[job.draw])
            cached = [cache / f"{key}.{fmt}" for fmt in self.formats]
            used.update(p.name for p in cached)
            if all(p.is_file() for p in cached):
                for src, dst in zip(cached, finals, strict=True):
                    shutil.copyfile(src, dst)
                reused += 1
                progress()
            else:
                pending.append((job, cached, finals))
        workers = max(1, min(workers, len(pending)))
        if workers == 1:
            for job, targets, _ in pending:
                _draw(job, targets, self.dpi)
                progress()
        else:
            # fork shares the already-imported matplotlib and the arrays. A process that
            # has TensorFlow's thread pools running (a notebook, a test) forks unsafely, so
            # it starts clean workers instead (forkserver; spawn where there is none).
            import multiprocessing

            threaded = "tensorflow" in sys.modules
            if sys.platform.startswith("linux"):
                method = "forkserver" if threaded else "fork"
            else:
                method = "spawn"
            context = multiprocessing.get_context(method)
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                futures = [pool.submit(_draw, job, t, self.dpi) for job, t, _ in pending]
                for future in as_completed(futures):
                    future.result()
                    progress()
        for _, targets, finals in pending:
            if targets is not finals:
                for src, dst in zip(targets, finals, strict=True):
                    shutil.copyfile(src, dst)
        if cache is not None:
            for entry in cache.iterdir():
                if _CACHE_ENTRY.match(entry.name) and entry.name not in used:
                    entry.unlink()
        return DrawStats(len(pending), reused, workers)


@dataclass
class Block:
    """A piece of a section: heading, figure, table, text, list, terms, group or pre."""

    kind: str
    content: object
    caption: str = ""
    anchor: str = ""
    sortable: bool = False


class Blocks:
    """An ordered list of blocks, with one method per block kind."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []

    def heading(self, text: str, anchor_id: str) -> None:
        """Add a sub-heading (listed in the table of contents at section level)."""
        self.blocks.append(Block("heading", text, anchor=anchor_id))

    def figure(self, src: str, caption: str = "") -> None:
        """Add an image by relative path (lazy-loaded)."""
        self.blocks.append(Block("figure", src, caption))

    def table(
        self,
        header: list[str],
        rows: list[list[object]],
        caption: str = "",
        sortable: bool = False,
    ) -> None:
        """Add a table; ``sortable`` tables sort by a column when its header is clicked."""
        self.blocks.append(Block("table", (header, rows), caption, sortable=sortable))

    def text(self, text: str) -> None:
        """Add a paragraph (escaped)."""
        self.blocks.append(Block("text", text))

    def findings(self, items: list[tuple[str, str, str]]) -> None:
        """Add a list of findings: (level ok/warn/bad/info, text, link target or "")."""
        self.blocks.append(Block("findings", items))

    def terms(self, items: list[tuple[str, str]]) -> None:
        """Add definitions: (term, meaning)."""
        self.blocks.append(Block("terms", items))

    def tokens(self, rows: list[tuple[str, list[tuple[str, float, str]]]]) -> None:
        """Add rows of coloured tokens: (label, [(token, value, CSS colour), ...])."""
        self.blocks.append(Block("tokens", rows))

    def pre(self, text: str) -> None:
        """Add preformatted text (escaped)."""
        self.blocks.append(Block("pre", text))

    def group(self, summary: str, anchor_id: str = "", open_: bool = False) -> Blocks:
        """Add a collapsible ``<details>`` group and return it to fill."""
        inner = Blocks()
        self.blocks.append(Block("group", (inner, open_), summary, anchor=anchor_id))
        return inner


class Section(Blocks):
    """A top-level report section with its own entry in the table of contents."""

    def __init__(self, title: str, anchor: str) -> None:
        super().__init__()
        self.title = title
        self.anchor = anchor


def _cell(value) -> str:
    if isinstance(value, bool):
        return f"<td>{esc(value)}</td>"
    if isinstance(value, int | float):
        number = float(value)
        sort_key = "NaN" if number != number else repr(number)
        return f'<td data-v="{sort_key}">{esc(_fmt(value))}</td>'
    return f"<td>{esc(_fmt(value))}</td>"


def _block_html(block: Block) -> str:
    kind = block.kind
    if kind == "heading":
        return f'<h3 id="{esc(block.anchor)}">{esc(block.content)}</h3>'
    if kind == "figure":
        caption = f"<figcaption>{esc(block.caption)}</figcaption>" if block.caption else ""
        alt = esc(block.caption or block.content)
        return (
            f'<figure><img src="{esc(block.content)}" alt="{alt}" loading="lazy" '
            f'decoding="async">{caption}</figure>'
        )
    if kind == "table":
        header, rows = block.content
        head = "".join(f"<th>{esc(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
        caption = f"<caption>{esc(block.caption)}</caption>" if block.caption else ""
        cls = ' class="sortable"' if block.sortable else ""
        return f"<table{cls}>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if kind == "findings":
        items = []
        for level, text, href in block.content:
            link = f' <a href="{esc(href)}">evidence</a>' if href else ""
            items.append(f'<li class="{esc(level)}">{esc(text)}{link}</li>')
        return f'<ul class="findings">{"".join(items)}</ul>'
    if kind == "terms":
        pairs = "".join(f"<dt>{esc(t)}</dt><dd>{esc(m)}</dd>" for t, m in block.content)
        return f'<dl class="terms">{pairs}</dl>'
    if kind == "group":
        inner, open_ = block.content
        ident = f' id="{esc(block.anchor)}"' if block.anchor else ""
        body = "".join(_block_html(b) for b in inner.blocks)
        attr = " open" if open_ else ""
        return f"<details{ident}{attr}><summary>{esc(block.caption)}</summary>{body}</details>"
    if kind == "pre":
        return f"<pre>{esc(block.content)}</pre>"
    if kind == "tokens":
        rows = []
        for label, tokens in block.content:
            spans = " ".join(
                f'<span class="tok" style="background:{esc(colour)}" '
                f'title="{esc(text)}: {value:+.4g}">{esc(text)}</span>'
                for text, value, colour in tokens
            )
            head = f'<span class="tok-label">{esc(label)}</span>'
            rows.append(f'<div class="tokens">{head}{spans}</div>')
        return "".join(rows)
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
        f"<script>{SORT_SCRIPT}</script></body></html>\n"
    )
