"""The audit report: build it from a snapshot (build.py), render it in a
format, gate on it (gates.py).  Findings are in findings.py."""
from __future__ import annotations

import json

FORMATS = ("table", "markdown", "json", "html")


def format_for(fmt: str | None, output: str | None) -> str:
    """--format, else from -o's extension, else table."""
    if fmt:
        return fmt
    ext = (output or "").rsplit(".", 1)[-1].lower()
    return {"html": "html", "htm": "html", "md": "markdown", "json": "json"}.get(ext, "table")


def render(rep: dict, fmt: str = "table") -> str:
    """A report dict (build.build_report) in one of FORMATS."""
    if fmt == "json":
        return json.dumps(rep, indent=2)
    if fmt == "markdown":
        from .markdown import render_markdown
        return render_markdown(rep)
    if fmt == "html":
        from .html import render_html
        return render_html(rep)
    from .table import render_table
    return render_table(rep)
