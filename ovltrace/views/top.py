"""`ovltrace top`: what the live view shows, as pure functions.

Model snapshots -> `topdata.collect()` (through analysis.py) -> TopData
(one interval's rates + a sliding window of flushes) -> `render()` ->
Screen (plain text lines + which lines to highlight).  The curses layer
(topui.py) only paints those lines and turns key presses into
`handle_key()` calls, so batch mode, the tests and the benchmark run
exactly the code the terminal shows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .. import analysis
from ..format import display_name, errno_name, human_bytes, human_seconds
from ..model import Flush
from ..untrusted import visible
from .topdata import ErrorLog, TopData, TopRow, _fit, _name

MIN_WIDTH, MIN_HEIGHT = 40, 8


# ---- columns and sorting -------------------------------------------------------

@dataclass(frozen=True)
class Column:
    key: str
    header: str
    width: int
    value: object          # TopRow -> sortable value
    text: object           # TopRow -> str
    help: str


def _rate_bytes(x: float) -> str:
    return "0" if x <= 0 else human_bytes(x)


def _rate(x: float) -> str:
    return "0" if x <= 0 else (f"{x:.1f}" if x < 100 else f"{x:.0f}")


def _stall(x: float | None) -> str:
    return "-" if x is None else human_seconds(x)


COLUMNS = [
    Column("name", "NAME", 0, lambda r: r.meta.label.lower(), None,
           "container name, else the distinctive part of the mountpoint"),
    Column("inodes", "INODES", 6, lambda r: r.dirty_inodes, lambda r: str(r.dirty_inodes),
           "dirty upper inodes now"),
    Column("dirty", "DIRTY/s", 7, lambda r: r.dirtied_rate, lambda r: _rate_bytes(r.dirtied_rate),
           "bytes dirtied per second"),
    Column("wback", "WBACK/s", 7, lambda r: r.written_rate, lambda r: _rate_bytes(r.written_rate),
           "bytes written back per second"),
    Column("copyups", "CPUP/s", 6, lambda r: r.copyup_rate, lambda r: _rate(r.copyup_rate),
           "copy-ups per second"),
    Column("syncfs", "SYNC/s", 6, lambda r: r.syncfs_rate, lambda r: _rate(r.syncfs_rate),
           "syncfs calls per second"),
    Column("stall", "STALL99", 8, lambda r: -1.0 if r.stall_p99 is None else r.stall_p99,
           lambda r: _stall(r.stall_p99), "p99 duration of its syncfs/umount flushes (window)"),
    Column("others", "OTHERS", 7, lambda r: r.flushed_others,
           lambda r: _rate_bytes(r.flushed_others), "others' data its flushes wrote back (window)"),
    Column("errors", "ERR", 4, lambda r: r.errors, lambda r: str(r.errors),
           "writeback errors + errors handed to it, since start"),
]
COLUMN_KEYS = [c.key for c in COLUMNS]
_BY_KEY = {c.key: c for c in COLUMNS}


def sort_key(name: str) -> str | None:
    """Accept a column key or its header, any case ('stall', 'STALL99')."""
    n = name.strip().lower()
    for c in COLUMNS:
        if n in (c.key, c.header.lower(), c.header.lower().removesuffix("/s")):
            return c.key
    return None


def visible_rows(data: TopData, state: "UIState") -> list[TopRow]:
    rows = data.rows
    if state.filter:
        f = state.filter.lower()
        rows = [r for r in rows if f in r.meta.label.lower() or f in r.meta.mountpoint.lower()
                or f in display_name(r.meta, 64).lower()
                or (r.meta.container is not None and f in r.meta.container.id.lower())]
    col = _BY_KEY[state.sort]
    desc = (col.key != "name") != state.reverse
    # ties: the busiest writer first, then by name (sorts are stable)
    rows = sorted(rows, key=lambda r: (-r.dirtied_rate, r.meta.label))
    return sorted(rows, key=col.value, reverse=desc)


# ---- UI state and keys ---------------------------------------------------------

SCREENS = {"main": "containers", "syncfs": "syncfs log", "matrix": "interference",
           "errors": "errors and leaks", "detail": "detail", "help": "help"}
SCREEN_KEYS = {"t": "main", "1": "main", "y": "syncfs", "2": "syncfs", "x": "matrix",
               "3": "matrix", "e": "errors", "4": "errors", "d": "detail", "5": "detail",
               "\n": "detail", "KEY_ENTER": "detail", "?": "help", "h": "help"}


@dataclass
class UIState:
    sort: str = "stall"
    reverse: bool = False
    filter: str = ""
    screen: str = "main"
    selected: int = 0              # index into the visible rows
    selected_key: str | None = None
    scroll: int = 0
    paused: bool = False
    editing: str | None = None     # filter text being typed
    quit: bool = False
    delay: float = 1.0
    page: int = 10                 # rows per page (set by render)
    follow: bool = False           # the user moved the cursor: keep it on that overlay


def handle_key(state: UIState, key: str, data: TopData | None = None) -> None:
    """Apply one key (a character, or a curses name like KEY_UP)."""
    if state.editing is not None:
        if key in ("\n", "KEY_ENTER"):
            state.filter, state.editing = state.editing.strip(), None
            state.selected = state.scroll = 0
        elif key == "\x1b":
            state.editing = None
        elif key in ("KEY_BACKSPACE", "\x7f", "\b"):
            state.editing = state.editing[:-1]
        elif len(key) == 1 and key.isprintable():
            state.editing += key
        return
    if key in ("q", "Q"):
        state.quit = True
    elif key in ("KEY_UP", "k", "KEY_DOWN", "j", "KEY_PPAGE", "\x02", "KEY_NPAGE", "\x06",
                 "KEY_HOME", "g", "KEY_END", "G"):
        state.follow = True
        _move(state, key)
    elif key in ("s", ">", "KEY_RIGHT"):
        state.sort = COLUMN_KEYS[(COLUMN_KEYS.index(state.sort) + 1) % len(COLUMN_KEYS)]
    elif key in ("<", "KEY_LEFT"):
        state.sort = COLUMN_KEYS[(COLUMN_KEYS.index(state.sort) - 1) % len(COLUMN_KEYS)]
    elif key in ("r", "R"):
        state.reverse = not state.reverse
    elif key == "/":
        state.editing = state.filter
    elif key == "\x1b" or key == "KEY_BACKSPACE":
        if state.screen != "main":
            state.screen = "main"
        elif state.filter:
            state.filter = ""
    elif key in (" ", "p", "P"):
        state.paused = not state.paused
    elif key in SCREEN_KEYS:
        target = SCREEN_KEYS[key]
        state.screen = "main" if state.screen == target and target != "main" else target
    if data is not None:
        rows = visible_rows(data, state)
        state.selected = max(0, min(state.selected, len(rows) - 1))
        state.selected_key = rows[state.selected].key if rows else None


def _move(state: UIState, key: str) -> None:
    if key in ("KEY_UP", "k"):
        state.selected -= 1
    elif key in ("KEY_DOWN", "j"):
        state.selected += 1
    elif key in ("KEY_PPAGE", "\x02"):
        state.selected -= state.page
    elif key in ("KEY_NPAGE", "\x06"):
        state.selected += state.page
    elif key in ("KEY_HOME", "g"):
        state.selected = 0
    else:
        state.selected = 1 << 30


def follow_selection(state: UIState, rows: list[TopRow]) -> None:
    """After a refresh or re-sort, keep the cursor on the same overlay once
    the user moved it there (before that it stays on the first row)."""
    if state.follow and state.selected_key is not None:
        for i, r in enumerate(rows):
            if r.key == state.selected_key:
                state.selected = i
                return
    state.selected = max(0, min(state.selected, len(rows) - 1))
    state.selected_key = rows[state.selected].key if rows else None


# ---- rendering -------------------------------------------------------------------

@dataclass
class Screen:
    lines: list[str]
    styles: dict[int, str] = field(default_factory=dict)   # line -> header|selected|alert|title


def _clock(data: TopData) -> str:
    return time.strftime("%H:%M:%S", time.localtime(data.wall)) if data.wall else f"t={data.t:.0f}s"


def title_line(data: TopData, state: UIState, width: int) -> str:
    parts = [f"ovltrace top - {_clock(data)}", f"{len(data.rows)} overlays",
             f"every {state.delay:g}s", f"sort {_BY_KEY[state.sort].header}"
             + (" asc" if state.reverse else "")]
    if state.filter:
        parts.append(f"filter '{state.filter}'")
    if data.note:
        parts.append(data.note)
    if state.paused:
        parts.append("PAUSED")
    return _fit("  ".join(parts), width)


def fs_lines(data: TopData, width: int, limit: int = 2) -> list[str]:
    out = []
    for s in sorted(data.fs, key=lambda s: -s.overlays)[:limit]:
        where = visible(s.mountpoint) or "?"
        head = f"{s.upper_dev} {s.fstype} ".replace("  ", " ")
        stats = (f" dirty {s.dirty_inodes} inodes"
                 f"  wb {_rate_bytes(s.wb_rate)}/s  syncfs {_rate(s.syncfs_rate)}/s  err {s.errors}")
        room = width - len(head) - len(stats) - 1
        if room < 8:
            where = ""
        elif len(where) > room:
            where = "~" + where[-(room - 1):]
        out.append(_fit(f"{head}{where}:{stats}", width))
    if len(data.fs) > limit:
        out.append(f"  +{len(data.fs) - limit} more upper filesystems")
    return out


def lifecycle_line(data: TopData, width: int) -> str | None:
    """Container starts and stops in the stall window, what they paid and
    for whom (analysis.lifecycle), or None when there were none."""
    lc = data.lifecycle
    if lc is None or not lc.events:
        return None
    counts: dict[str, int] = {}
    for e in lc.events:
        word = {"create": "start", "unpack": "unpack"}.get(e.step, e.step)
        counts[word] = counts.get(word, 0) + 1
    text = (f"starts/stops {data.window:.0f}s: "
            + ", ".join(f"{n} {w}{'s' if n > 1 else ''}" for w, n in sorted(counts.items()))
            + f" paid {human_seconds(lc.stall_seconds)}")
    if lc.neighbours and lc.others_seconds > 0:
        n = lc.neighbours[0]
        text += (f", {n.seconds / lc.others_seconds:.0%} of others' share for "
                 f"{_name(data.metas, n.key, 20)}")
    return _fit(text, width)


def hooks_line(data: TopData, width: int) -> str:
    on = [h for h in data.hooks if h.get("mechanism")]
    off = [h["name"] for h in data.hooks if not h.get("mechanism")]
    mechs = sorted({h["mechanism"] for h in on})
    text = f"hooks: {len(on)}/{len(data.hooks)} on via {'+'.join(mechs) or 'nothing'}"
    if off:
        text += f"; OFF: {' '.join(off)}"
    return _fit(text, width)


def _table_layout(width: int) -> tuple[int, list[Column]]:
    """Name width and the columns that fit (NAME grows with the terminal)."""
    cols = COLUMNS[1:]
    fixed = sum(c.width + 1 for c in cols)
    while cols and width - 2 - fixed < 8:
        fixed -= cols[-1].width + 1        # narrow terminal: drop columns from the right
        cols = cols[:-1]
    return max(8, min(32, width - 2 - fixed)), cols


def table_header(state: UIState, width: int, name_w: int | None = None) -> str:
    nw, cols = _table_layout(width)
    nw = name_w or nw
    mark = lambda c, w: (c.header + ("^" if state.reverse else "*") if c.key == state.sort else c.header)
    text = "  " + mark(COLUMNS[0], nw).ljust(nw) + "".join(" " + mark(c, c.width).rjust(c.width)
                                                        for c in cols)
    return text


def table_row(r: TopRow, width: int, selected: bool = False, name_w: int | None = None) -> str:
    nw, cols = _table_layout(width)
    nw = name_w or nw
    name = display_name(r.meta, nw - (0 if r.live else 1)) + ("" if r.live else "*")
    return ((">" if selected else " ") + " " + name.ljust(nw)
            + "".join(" " + _fit(c.text(r), c.width).rjust(c.width) for c in cols))


FOOTERS = {
    "main": "q:quit ?:help s<>:sort /:filter p:pause y:syncfs x:matrix e:errors Enter:detail",
    "syncfs": "t:table x:matrix e:errors ?:help p:pause q:quit  (syncfs log)",
    "matrix": "t:table y:syncfs e:errors ?:help p:pause q:quit  (interference)",
    "errors": "t:table y:syncfs x:matrix ?:help p:pause q:quit  (errors and leaks)",
    "detail": "t:table jk:prev/next y:syncfs x:matrix e:errors q:quit  (detail)",
    "help": "any screen key, Esc or t: back   q:quit",
}


def render(data: TopData, state: UIState, width: int = 80, height: int = 24) -> Screen:
    """The whole terminal as lines (at most `height`, each at most `width`)."""
    width, height = max(MIN_WIDTH, width), max(MIN_HEIGHT, height)
    head = [title_line(data, state, width)] + fs_lines(data, width, 1 if height < 20 else 2)
    head.append(hooks_line(data, width))
    life = lifecycle_line(data, width)
    if life and height >= 20:
        head.append(life)
    styles = {0: "title"}
    body_h = height - len(head) - 1
    if state.screen == "main" or (state.screen == "detail" and not data.rows):
        body, bstyles = _main(data, state, width, body_h)
    elif state.screen == "syncfs":
        body, bstyles = _syncfs(data, width, body_h)
    elif state.screen == "matrix":
        body, bstyles = _matrix(data, width, body_h)
    elif state.screen == "errors":
        body, bstyles = _errors(data, width, body_h)
    elif state.screen == "detail":
        body, bstyles = _detail(data, state, width, body_h)
    else:
        body, bstyles = _help(width), {}
    body = body[:body_h]
    for i, s in bstyles.items():
        if i < body_h:
            styles[len(head) + i] = s
    lines = head + body + [""] * (body_h - len(body))
    if state.editing is not None:
        footer = f"filter (Enter to apply, Esc to cancel): {state.editing}_"
    else:
        footer = FOOTERS.get(state.screen, "")
    lines.append(_fit(footer, width))
    styles[len(lines) - 1] = "header"
    # names were made terminal-safe where they are formatted; this pass
    # keeps anything missed from reaching the terminal raw
    return Screen([_fit(visible(l), width) for l in lines], styles)


def _main(data: TopData, state: UIState, width: int, height: int):
    rows = visible_rows(data, state)
    follow_selection(state, rows)
    lines = [table_header(state, width)]
    styles = {0: "header"}
    page = max(1, height - 1)
    state.page = page
    if state.selected < state.scroll:
        state.scroll = state.selected
    elif state.selected >= state.scroll + page:
        state.scroll = state.selected - page + 1
    state.scroll = max(0, min(state.scroll, max(0, len(rows) - page)))
    for i, r in enumerate(rows[state.scroll: state.scroll + page]):
        idx = state.scroll + i
        lines.append(table_row(r, width, idx == state.selected))
        if idx == state.selected:
            styles[len(lines) - 1] = "selected"
        elif r.errors:
            styles[len(lines) - 1] = "alert"
    if not rows:
        lines.append("  (no overlays" + (f" match '{state.filter}')" if state.filter else ")"))
    return lines, styles


def _victims(data: TopData, f: Flush, width: int) -> str:
    """Others whose data the flush wrote back, with their share of it (of
    its bytes, and so of its time: analysis.shares); bytes too when they fit."""
    shown = analysis.others_shares(f, data.interference.caller(f), data.metas)
    if not shown:
        return "-"
    total = sum(s.bytes for s in analysis.shares(f))
    for with_bytes in (True, False):
        parts = [f"{_name(data.metas, s.victim, 10)}"
                 + (f" {human_bytes(s.bytes)}" if with_bytes else "")
                 + f" {100 * s.bytes // total}%" for s in shown]
        if len(", ".join(parts)) <= width:
            return ", ".join(parts)
    out = parts[0]
    for i in range(1, len(parts)):
        more = f" +{len(parts) - i - 1}" if i < len(parts) - 1 else ""
        if len(out) + 2 + len(parts[i]) + len(more) > width:
            return out + f" +{len(parts) - i}"
        out += ", " + parts[i]
    return out


def flush_line(data: TopData, f: Flush, width: int) -> str:
    ago = data.t - f.end
    caller = _name(data.metas, data.interference.caller(f), 10, data.flushes)
    ret = "ok" if f.ret >= 0 else errno_name(-f.ret)
    head = (f"{-ago:6.1f}s {f.kind:<6} {caller:<10} {f'{f.pid}/{visible(f.comm)}'[:13]:<13} "
            f"{human_seconds(f.duration):>7} {ret:<3} ")
    return head + _victims(data, f, max(10, width - len(head)))


def _syncfs(data: TopData, width: int, height: int):
    lines = [f"Flushes in the last {data.window:.0f}s, newest first: caller, duration, and",
             "whose data each wrote back (its share of the bytes, and so of the time)",
             _fit("   WHEN KIND   CALLER     PID/COMM         TIME RET VICTIMS", width)]
    styles = {2: "header"}
    for f in data.flushes[: max(0, height - len(lines))]:
        lines.append(flush_line(data, f, width))
        if f.ret < 0:
            styles[len(lines) - 1] = "alert"
    if not data.flushes:
        lines.append("  (no syncfs, sync or umount flush in the window)")
    return lines, styles


def _matrix(data: TopData, width: int, height: int):
    pairs = {k: (p.bytes, p.flushes, p.stall_seconds) for k, p in data.interference.pairs.items()}
    lines = [f"Interference, last {data.window:.0f}s: bytes of VICTIM (column) written back",
             "by CALLER's (row) flushes"]
    styles: dict[int, str] = {}
    if not pairs:
        return lines + ["  (no flush wrote back another overlay's data)"], styles
    callers: dict[str, int] = {}
    victims: dict[str, int] = {}
    for (c, v), (b, _n, _s) in pairs.items():
        callers[c] = callers.get(c, 0) + b
        victims[v] = victims.get(v, 0) + b
    cw, vw = 12, 8
    vs = sorted(victims, key=lambda k: -victims[k])[: max(1, (width - cw) // vw)]
    cs = sorted(callers, key=lambda k: -callers[k])
    lines.append("CALLER".ljust(cw) + "".join(_name(data.metas, v, vw - 1).rjust(vw) for v in vs)
                 + (f" +{len(victims) - len(vs)}" if len(victims) > len(vs) else ""))
    styles[len(lines) - 1] = "header"
    rows_room = max(1, (height - len(lines)) // 2)
    for c in cs[:rows_room]:
        cells = "".join((human_bytes(pairs[(c, v)][0]) if (c, v) in pairs else ".").rjust(vw)
                        for v in vs)
        lines.append(_name(data.metas, c, cw - 1, data.flushes).ljust(cw) + cells)
    lines.append("")
    lines.append(_fit("CALLER -> VICTIM             BYTES  FLUSHES  STALL", width))
    styles[len(lines) - 1] = "header"
    for (c, v), (b, n, s) in sorted(pairs.items(), key=lambda kv: -kv[1][0]):
        if len(lines) >= height:
            break
        pair = f"{_name(data.metas, c, 12, data.flushes)} -> {_name(data.metas, v, 12)}"
        lines.append(f"{pair:<26} {human_bytes(b):>7} {n:>8}  {human_seconds(s)}")
    return lines, styles


def _errors(data: TopData, width: int, height: int):
    log = data.errlog or ErrorLog([], [], [])
    lines = ["Errors: leaks (an error handed to an overlay whose own data was fine)",
             "and silent losses, then the log, newest first (live: the last 2 minutes)"]
    styles: dict[int, str] = {}
    for text in log.leaks + log.losses:
        lines.append(_fit("  " + text, width))
        styles[len(lines) - 1] = "alert"
    if not (log.leaks or log.losses or log.events):
        lines.append("  (no writeback error, no error returned)")
    for t, text in log.events:
        if len(lines) >= height:
            break
        lines.append(_fit(f"{t - data.t:7.1f}s {text}", width))
    return lines, styles


def _detail(data: TopData, state: UIState, width: int, height: int):
    rows = visible_rows(data, state)
    follow_selection(state, rows)
    r = rows[state.selected] if rows else None
    if r is None:
        return ["  (no overlay selected)"], {}
    m = r.meta
    tot = r.total
    w = width - 14

    def kv(k, v):
        return _fit(f"{k:<13} {v}", width)

    lines = [kv("NAME", display_name(m, w) + ("" if r.live else "  (unmounted)")),
             kv("mountpoint", _fit(visible(m.mountpoint), w)),
             kv("container", visible(f"{m.container.runtime} {m.container.id[:12]} "
                                     f"{m.container.name}")
                if m.container else "- (no known container)"),
             kv("upperdir", _fit(visible(m.upperdir or "-"), w)),
             kv("upper fs", f"{m.upper_dev} {m.fstype or ''}"),
             kv("now", f"{r.dirty_inodes} dirty inodes; dirtied {_rate_bytes(r.dirtied_rate)}/s, "
                       f"written back {_rate_bytes(r.written_rate)}/s"),
             kv("since start", f"dirtied {human_bytes(tot.bytes_dirtied)} in {tot.inodes_dirtied} "
                               f"inodes, written back {human_bytes(tot.bytes_written_back)}"),
             kv("", f"copy-ups {tot.copy_ups} ({human_bytes(tot.copy_up_bytes)}), syncfs "
                    f"{tot.syncfs_calls}, fsync {tot.fsync_calls}"),
             kv("errors", f"{tot.writeback_errors} writeback errors, {tot.errors_returned} "
                          f"returned to it"),
             kv(f"last {data.window:.0f}s", f"{r.flushes} flushes called, p99 {_stall(r.stall_p99)}, "
                                            f"max {_stall(r.stall_max)}"),
             kv("", f"it flushed others' {human_bytes(r.flushed_others)}, waiting "
                    f"{human_seconds(r.waited)} on it"),
             kv("", f"others flushed its {human_bytes(r.flushed_by_others)}, waiting "
                    f"{human_seconds(r.made_wait)} on it")]
    styles = {0: "title"}
    if tot.writeback_errors or tot.errors_returned:
        styles[8] = "alert"
    mine = [f for f in data.flushes if f.target == r.key]
    hit = [f for f in data.flushes if f.target != r.key and any(v.key == r.key for v in f.victims)]
    if mine:
        lines.append("")
        lines.append("Its flushes:")
        styles[len(lines) - 1] = "header"
        room = max(1, (height - len(lines) - 2) // (2 if hit else 1))
        lines += [flush_line(data, f, width) for f in mine[:room]]
    if hit:
        lines.append("")
        lines.append("Flushes by others that wrote back its data:")
        styles[len(lines) - 1] = "header"
        lines += [flush_line(data, f, width) for f in hit[: max(0, height - len(lines))]]
    return lines, styles


HELP = """\
ovltrace top: per container, who dirties the shared upper filesystem and
whose flushes stall whom.  Rates are over the last refresh interval;
STALL99 and OTHERS over the last 60 s; ERR since the start.

  Up/Down j/k  move           PgUp/PgDn  page       g/G  first/last
  s  >  Right  next sort column   <  Left  previous    r  reverse order
  /  filter (name, mountpoint, container id; empty clears)  Esc  back/clear
  space p      pause / resume   q  quit              ?  this help
  t 1  table         y 2  syncfs log      x 3  interference matrix
  e 4  errors and leaks          Enter d 5  detail of the selected row

Columns: INODES dirty inodes now; DIRTY/s WBACK/s bytes dirtied / written
back; CPUP/s copy-ups; SYNC/s syncfs calls; STALL99 p99 duration of the
flushes it called; OTHERS others' data its flushes wrote back; ERR
writeback errors + errors handed to it.  A trailing * marks an overlay
unmounted during the interval."""


def _help(width: int) -> list[str]:
    return [_fit(l, width) for l in HELP.splitlines()]


# ---- batch ---------------------------------------------------------------------

def render_batch(data: TopData, state: UIState, width: int = 80) -> str:
    """One plain-text frame (like `top -b`): title, upper fs, hooks, every
    row (names not cut when they fit 40 columns), then this interval's
    flushes and the leaks, if any."""
    nw = max([14] + [len(display_name(r.meta, 40)) for r in data.rows])
    width = max(width, 80)
    _, cols = _table_layout(width)
    full = 2 + nw + sum(c.width + 1 for c in cols)
    out = [title_line(data, state, max(width, 120))] + fs_lines(data, max(width, 120), 8)
    out.append(hooks_line(data, 200))
    life = lifecycle_line(data, 200)
    if life:
        out.append(life)
    out.append("")
    out.append(table_header(state, full, nw).rstrip())
    for r in visible_rows(data, state):
        out.append(table_row(r, full, False, nw).rstrip())
    recent = [f for f in data.flushes if f.start + f.duration >= data.t - data.interval]
    if recent:
        out.append("")
        out.append(f"flushes in the last {data.interval:.1f}s:")
        out += [flush_line(data, f, 200) for f in recent]
    pairs = sorted(data.interference.pairs.values(), key=lambda p: -p.bytes)
    if pairs:
        # exact figures: scripts compare them with the audit and /metrics
        out.append("")
        out.append(f"interference in the last {data.window:.0f}s "
                   "(caller -> victim: bytes, flushes, stall seconds):")
        out += [f"  {_name(data.metas, p.caller, 40, data.flushes)} -> "
                f"{_name(data.metas, p.victim, 40)}: {p.bytes} {p.flushes} {p.stall_seconds:.6f}"
                for p in pairs]
    if data.lifecycle and data.lifecycle.events:
        out.append("")
        out.append(f"container starts and stops in the last {data.window:.0f}s "
                   "(container step: seconds, others' bytes, others' seconds):")
        out += [f"  {_name(data.metas, e.key, 40)} {e.step}: {e.flush.duration:.6f} "
                f"{e.others_bytes} {e.others_seconds:.6f}" for e in data.lifecycle.events]
    if data.errlog and (data.errlog.leaks or data.errlog.losses):
        out.append("")
        out += data.errlog.leaks + data.errlog.losses
    return "\n".join(visible(line) for line in out) + "\n"

