"""The audit report as Markdown (GitHub tables), for tickets and READMEs."""
from __future__ import annotations


def render_markdown(rep: dict) -> str:
    from .table import sections
    fs = ", ".join(f"`{u['upper_dev']}` {u.get('fstype') or ''}".strip()
                   for u in rep["upper_filesystems"]) or "none"
    out = ["# ovltrace audit", "",
           f"{rep['window_seconds']:.1f}s window, {len(rep['overlays'])} containers; "
           f"upper fs: {fs}" + _source(rep), ""]
    out.append("## Findings")
    out.append("")
    if not rep["findings"]:
        out.append("No findings.")
    for f in rep["findings"]:
        out.append(f"- **{f['severity'].upper()}: {f['title']}**  ")
        out.append(f"  {f['detail']}  ")
        out.append(f"  *Advice:* {f['advice']}")
    for title, body in sections(rep, fmt="github", width=40):
        head, _, rest = title.partition(" (")
        out += ["", f"## {head}", ""]
        if rest:
            out += [f"({rest}", ""]
        out.append(body)
    return "\n".join(out) + "\n"


def _source(rep: dict) -> str:
    r = rep.get("report") or {}
    if r.get("source") == "recording":
        return f" (recording from {r.get('host') or '?'}, kernel {r.get('kernel') or '?'})"
    return ""
