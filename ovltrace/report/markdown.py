"""The audit report as Markdown (GitHub tables), for tickets, pull
requests and READMEs: every name and text from the report is escaped
(untrusted.markdown), so a container cannot add a cell, link, image or tag."""
from __future__ import annotations

from ..untrusted import markdown


def render_markdown(rep: dict) -> str:
    from .table import sections
    fs = ", ".join(f"{markdown(u['upper_dev'])} {markdown(u.get('fstype') or '')}".strip()
                   for u in rep["upper_filesystems"]) or "none"
    out = ["# ovltrace audit", "",
           f"{rep['window_seconds']:.1f}s window, {len(rep['overlays'])} containers; "
           f"upper fs: {fs}" + _source(rep), ""]
    out.append("## Findings")
    out.append("")
    out += findings_markdown(rep["findings"])
    for title, body in sections(rep, fmt="github", width=40):
        head, _, rest = title.partition(" (")
        out += ["", f"## {head}", ""]
        if rest:
            out += [f"({rest}", ""]
        out.append(body)
    return "\n".join(out) + "\n"


def findings_markdown(findings: list[dict], where=lambda f: "") -> list[str]:
    """The findings as a list; where(f): words after the title (the fleet's nodes)."""
    out = [] if findings else ["No findings."]
    for f in findings:
        w = where(f)
        out.append(f"- **{f['severity'].upper()}: {markdown(f['title'])}**"
                   + (f" {markdown(w)}" if w else "") + "  ")
        out.append(f"  {markdown(f['detail'])}  ")
        out.append(f"  *Advice:* {markdown(f['advice'])}")
    return out


def _source(rep: dict) -> str:
    r = rep.get("report") or {}
    if r.get("source") == "recording":
        return (f" (recording from {markdown(r.get('host') or '?')}, kernel "
                f"{markdown(r.get('kernel') or '?')})")
    return ""
