"""Untrusted text (names a container chooses) made inert per output, on
hostile and random input."""
from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from ovltrace.untrusted import LABEL_MAX, decode, html_text, label, markdown, visible

HOSTILE = [
    "\x1b[31mEVIL\x1b[0m", "\x1b[2J|x](y)\x07", "a|b|c", "[x](http://e.vil)", "![i](http://e/p.png)",
    "<script>alert(1)</script>", "`code`", "\u202eevil", decode(b"bad\xff\xfeutf8"),
    "tab\there\nnewline\rcr", "\x9bC1", "back\\slash",
]
# names a container can choose: any text, any bytes (comm and file names
# are bytes in the kernel), and the hostile examples
NAMES = st.one_of(st.text(max_size=40), st.binary(max_size=40).map(decode),
                  st.sampled_from(HOSTILE))
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")


@given(NAMES)
def test_visible_leaves_no_control_character_and_is_idempotent(text):
    v = visible(text)
    assert not CONTROL.search(v)
    assert visible(v) == v
    v.encode("utf-8")                    # printable: no lone surrogate left


def test_visible_shows_what_was_there():
    assert visible("\x1b[31mEVIL") == "\\x1b[31mEVIL"
    assert visible(decode(b"a\xffb")) == "a\\xffb"
    assert visible("\u202eevil") == "\\u202eevil"
    assert visible("plain name-1.2") == "plain name-1.2"


@given(NAMES)
def test_markdown_has_no_live_markup(text):
    md = markdown(text)
    assert not CONTROL.search(md)
    assert "<" not in md and ">" not in md
    # every Markdown special character is escaped (preceded by a backslash)
    for m in re.finditer(r"[|\[\]`*_~]", md):
        i, n = m.start(), 0
        while i > 0 and md[i - 1] == "\\":
            n, i = n + 1, i - 1
        assert n % 2 == 1, (text, md)


@given(NAMES)
def test_html_and_labels(text):
    h = html_text(text)
    assert "<" not in h and not CONTROL.search(h)
    lv = label(text)
    assert len(lv) <= LABEL_MAX and not CONTROL.search(lv)


@given(st.binary(max_size=64))
def test_bytes_survive_json_round_trip(raw):
    # JSON reports and recordings keep the exact bytes of comm and paths
    text = decode(raw)
    assert json.loads(json.dumps(text)).encode("utf-8", "surrogateescape") == raw


def test_long_label_is_cut_visibly():
    assert label("x" * 500) == "x" * (LABEL_MAX - 1) + "~"


@given(NAMES, NAMES, NAMES)
def test_every_report_format_and_top_stay_inert(name, comm, path):
    from ovltrace.counters import Counters
    from ovltrace.model import Container, Flush, Model, OverlayMeta, Victim, WbError
    from ovltrace.report import render
    from ovltrace.report.build import build_report
    from ovltrace.views.exporter import OverlayCollector
    from ovltrace.views.top import UIState, render as render_top, render_batch
    from ovltrace.views.topdata import collect
    from prometheus_client import CollectorRegistry, generate_latest

    m = Model()
    m.add(OverlayMeta("a", "overlay", f"/srv/{path}/merged", "7:0",
                      container=Container("docker", "id", name)))
    m.add(OverlayMeta("b", "overlay", "/srv/b/merged", "7:0"))
    m.counters(1.0, {"a": Counters(bytes_dirtied=4096), "b": Counters(bytes_dirtied=8192)})
    m.flush(Flush("sync", 1, 1, comm, 1.0, 0.1, 0, None, "7:0", [Victim("a", 4096)]))
    m.wb_error(WbError(1.5, "a", 12, 5))
    rep = build_report(m.snapshot(), {"inode_paths": {"a": {12: f"/up/{path}"}}})
    for fmt in ("table", "markdown", "html"):
        out = render(rep, fmt)
        assert not CONTROL.search(out.replace("\n", "").replace("\t", "")), fmt
    md = render(rep, "markdown")
    for block in md.split("\n\n"):
        rows = [len(re.findall(r"(?<!\\)\|", line)) for line in block.splitlines()
                if line.startswith("|")]
        assert len(set(rows)) <= 1, block
    assert "<script" not in render(rep, "html").split('<script type="application/json"')[0]
    data = collect(m, 0.0, 2.0)
    for text in ["\n".join(render_top(data, UIState(screen=s), 80, 24).lines)
                 for s in ("main", "syncfs", "matrix", "errors", "detail")] + \
            [render_batch(data, UIState())]:
        assert not CONTROL.search(text.replace("\n", ""))
    reg = CollectorRegistry(auto_describe=False)
    reg.register(OverlayCollector(lambda: m))
    generate_latest(reg).decode("utf-8")          # encodes: no lone surrogate in a label
