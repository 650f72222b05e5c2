r"""Text a container controls, made inert for each output: the one place.

Process names (any process sets its comm with prctl(PR_SET_NAME)), file
names inside a container's upper dir, mountpoints, container, pod and
namespace names, labels and cgroup paths are chosen by whoever runs the
container.  ovltrace keeps them raw where raw is safe and lossless (the
model, JSON reports, recordings: bytes that are not UTF-8 travel as
surrogate escapes and come back as the same bytes), and escapes them at
the edge of every output that interprets text:

  visible()   terminals (audit table, top, batch frames, stderr lines):
              C0/C1 control characters, DEL, bidi overrides and undecodable
              bytes become visible \xNN / \uNNNN escapes, never emitted
  markdown()  Markdown reports: visible(), then `& < >` as HTML entities
              and `\ ` * _ [ ] | ~` backslash-escaped, so no cell, link,
              image, tag or code span appears
  html_text() HTML reports: visible(), then HTML-escaped
  label()     Prometheus label values: visible(), cut to LABEL_MAX with a
              visible marker (views/exposition.py escapes quotes,
              backslashes and newlines when it writes the text format)
"""
from __future__ import annotations

import html
import re

LABEL_MAX = 128
CUT = "~"          # marks a name cut to fit

# C0, DEL, C1, lone surrogates (undecodable bytes), bidi embeddings,
# overrides and isolates (they reorder what a terminal shows)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")
# what makes a cell, link, image, code span or emphasis: with `[` and `]`
# escaped, `(`, `!` and `#` inside a line are plain text
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    if 0xdc80 <= c <= 0xdcff:              # a byte surrogateescape could not decode
        return f"\\x{c - 0xdc00:02x}"
    return f"\\x{c:02x}" if c <= 0xff else f"\\u{c:04x}"


def visible(text) -> str:
    """Safe for a terminal; idempotent."""
    text = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(_escape, text)


def cut(text: str, width: int) -> str:
    """At most `width` characters, with a visible marker when cut."""
    return text if len(text) <= width else text[: max(0, width - 1)] + CUT


def markdown(text) -> str:
    """Safe inside Markdown prose or a table cell."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(visible(text), quote=False))


def html_text(text) -> str:
    return html.escape(visible(text))


def label(text, limit: int = LABEL_MAX) -> str:
    return cut(visible(text), limit)


def decode(raw: bytes) -> str:
    """Bytes from the kernel (comm, paths) as text that keeps every byte."""
    return raw.decode("utf-8", "surrogateescape")
