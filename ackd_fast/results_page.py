"""The results page: `index.html` with one row per image and its pictures side by side (input, output, and the target
where there is one), as pix2pix's test.py writes it. `ackd-fast translate --index` and `ackd-fast evaluate
--save-images` both write it, with this one function; images are linked by paths relative to the page."""

from __future__ import annotations

import html
import os
from pathlib import Path

from ackd_fast.checkpoint import write_atomic

INDEX = "index.html"
THUMBNAIL_PX = 256  # the width each picture is shown at


def _link(page_dir: Path, picture: Path) -> str:
    """`picture` as a URL relative to the page (percent-encoded, forward slashes)."""
    from urllib.parse import quote

    return quote(Path(os.path.relpath(Path(picture).resolve(), page_dir.resolve())).as_posix())


def write_index(folder: str | os.PathLike, title: str, rows: list[dict], columns: list[str],
                notes: list[str] | None = None) -> Path:  # fmt: skip
    """Writes `folder`/index.html (atomically) and returns its path. `rows`: {"name": the row's label, column
    title: the picture's path} per image, in order; `columns`: the column titles, in order (a row without one
    leaves its cell empty); `notes`: lines shown under the title."""
    folder = Path(folder)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["name", *columns])
    body = []
    for row in rows:
        cells = [f"<td class=name>{html.escape(str(row['name']))}</td>"]
        for column in columns:
            picture = row.get(column)
            if picture is None:
                cells.append("<td></td>")
                continue
            url = _link(folder, picture)
            cells.append(f'<td><a href="{url}"><img src="{url}" width={THUMBNAIL_PX} alt="{html.escape(column)}">'
                         "</a></td>")  # fmt: skip
        body.append("<tr>" + "".join(cells) + "</tr>")
    lines = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:16px} td,th{padding:4px;text-align:center;vertical-align:top}"
        " td.name{font-size:12px;max-width:160px;word-break:break-all} img{image-rendering:pixelated}</style>",
        "</head><body>",
        f"<h2>{html.escape(title)}</h2>",
        *(f"<p>{html.escape(n)}</p>" for n in notes or []),
        f"<table><tr>{head}</tr>",
        *body,
        "</table></body></html>",
        "",
    ]
    page = folder / INDEX
    write_atomic(page, lambda f: f.write("\n".join(lines).encode()))
    return page


__all__ = ["INDEX", "write_index"]
