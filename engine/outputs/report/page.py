"""HTML for report.html and a batch's index.html: static markup made here, interactivity in assets/report.js.

Everything is in the one file except the run's own media, which are linked by relative, URL-escaped paths, so
the page works from a file:// URL with no server and no network.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from urllib.parse import quote

ASSETS = resources.files("emoengine.engine.outputs.report") / "assets"
# expression colours (by class index) and valence/arousal: the legend here and the canvas in report.js share them
PALETTE = ("#8c8c8c", "#e8b730", "#3f7fd9", "#e07b39", "#9b59b6", "#4caf50", "#d64541", "#16a3a3")
VA_COLOURS = {"valence": "#1f6fd1", "arousal": "#d1471f"}


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def href(path: str) -> str:
    """A run-relative path as an attribute value: URL-escaped (spaces, #, ?, non-ASCII), then HTML-escaped."""
    return esc(quote(path, safe="/"))


def asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def render_page(title: str, body: str, data: dict | None = None) -> str:
    """The page template with our CSS and, when `data` is given, the JSON report.js reads and report.js."""
    script = ""
    if data is not None:
        payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
        script = (f'<script type="application/json" id="report-data">{payload}</script>\n'
                  f"<script>{asset('report.js')}</script>")
    parts = {"title": esc(title), "css": asset("report.css"), "body": body, "script": script}
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m[1]], asset("report.html"))


def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A table from already-escaped cell markup."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def num(value, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def clock(seconds: float) -> str:
    m, s = divmod(max(0.0, float(seconds)), 60)
    return f"{int(m)}:{s:05.2f}"


def legend(classes) -> str:
    items = [f'<span class="key"><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{esc(c)}</span>'
             for i, c in enumerate(classes)]
    items += [f'<span class="key"><i style="background:{c}"></i>{k}</span>' for k, c in VA_COLOURS.items()]
    return f'<div class="legend">{"".join(items)}</div>'


def figure(media: str, caption: str, cls: str = "tile") -> str:
    return f'<figure class="{cls}">{media}<figcaption>{caption}</figcaption></figure>'


def image_link(path: str, alt: str, lazy: bool = False) -> str:
    loading = ' loading="lazy"' if lazy else ""
    return f'<a href="{href(path)}"><img src="{href(path)}" alt="{esc(alt)}"{loading}></a>'
