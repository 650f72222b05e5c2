"""`ovltrace top`: the loops (live, replay; full screen or batch) and the
thin curses layer that paints top.py's lines and reads keys."""
from __future__ import annotations

import os
import sys
import time
from typing import Iterator

from ..errors import OvltraceError
from ..model import Model
from .top import (STALL_WINDOW, ErrorTracker, Screen, TopData, UIState, collect, handle_key,
                  render, render_batch)


class Frames:
    """Turns a model into one TopData per refresh: rates since the previous
    frame, the error log kept up to date."""

    def __init__(self, model: Model, window: float = STALL_WINDOW, started: float | None = None):
        self.model = model
        self.window = window
        self.started = started          # wall time of model t=0 (None: use the clock now)
        self.t_prev: float | None = None
        self.errors = ErrorTracker()

    def next(self, t: float | None = None) -> TopData:
        t = self.model.now if t is None else t
        wall = self.started + t if self.started is not None else time.time()
        data = collect(self.model, self.t_prev, t, self.window, wall=wall)
        data.errlog = self.errors.log(self.model, t)
        self.t_prev = t
        return data


# ---- curses --------------------------------------------------------------------

class Terminal:
    """Full-screen painting and key reading; nothing else."""

    def __init__(self):
        self.scr = None
        self.attrs: dict[str, int] = {}
        self.resized = False

    @staticmethod
    def check() -> None:
        """Fail with one line, before attaching anything, if curses cannot run."""
        import curses
        if not sys.stdout.isatty() or not sys.stdin.isatty():
            raise OvltraceError("top needs a terminal; use -b/--batch for plain text frames")
        try:
            curses.setupterm()
        except curses.error as e:
            raise OvltraceError(f"cannot use this terminal ({e}); try -b/--batch") from None

    def open(self) -> None:
        import curses
        os.environ.setdefault("ESCDELAY", "25")     # Esc without a one-second wait
        self.scr = curses.initscr()
        try:
            curses.noecho()
            curses.cbreak()
            self.scr.keypad(True)
            self.scr.nodelay(True)
            try:
                curses.curs_set(0)
            except curses.error:
                pass
            alert = curses.A_BOLD
            if curses.has_colors() and not os.environ.get("NO_COLOR"):
                curses.start_color()
                try:
                    curses.use_default_colors()
                    curses.init_pair(1, curses.COLOR_RED, -1)
                except curses.error:
                    curses.init_pair(1, curses.COLOR_RED, curses.COLOR_BLACK)
                alert |= curses.color_pair(1)
            self.attrs = {"title": curses.A_BOLD, "header": curses.A_REVERSE,
                          "selected": curses.A_REVERSE | curses.A_BOLD, "alert": alert}
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.scr is None:
            return
        import curses
        try:
            self.scr.keypad(False)
            curses.nocbreak()
            curses.echo()
            try:
                curses.curs_set(1)
            except curses.error:
                pass
        finally:
            curses.endwin()
            self.scr = None

    def size(self) -> tuple[int, int]:
        h, w = self.scr.getmaxyx()
        return w, h

    def keys(self, wait_ms: int = 0) -> list[str]:
        """Pending keys as names: a character, or 'KEY_UP' etc."""
        import curses
        out = []
        self.scr.timeout(wait_ms)
        while True:
            try:
                k = self.scr.get_wch()
            except curses.error:
                break
            self.scr.timeout(0)
            if isinstance(k, int):
                if k == curses.KEY_RESIZE:
                    curses.update_lines_cols()
                    self.resized = True
                    continue
                name = curses.keyname(k).decode(errors="replace")
                out.append(name)
            else:
                out.append(k)
        return out

    def paint(self, screen: Screen) -> None:
        import curses
        w, h = self.size()
        if self.resized:
            self.scr.clear()
            self.resized = False
        else:
            self.scr.erase()
        for i, line in enumerate(screen.lines[:h]):
            style = screen.styles.get(i)
            attr = self.attrs.get(style, 0) if style else 0
            if style in ("header", "selected"):
                line = line.ljust(w)
            try:
                self.scr.addnstr(i, 0, line, w, attr)
            except curses.error:
                pass        # the bottom-right cell: written, but curses complains
        self.scr.noutrefresh()
        curses.doupdate()


class Interactive:
    """Keys + repaint, shared by the live and the replay loops."""

    def __init__(self, state: UIState, term: Terminal, iterations: int | None = None):
        self.state = state
        self.term = term
        self.data: TopData | None = None
        self.frames_shown = 0
        self.iterations = iterations

    def show(self, data: TopData) -> None:
        self.data = data
        self.frames_shown += 1
        self.paint()

    def paint(self) -> None:
        if self.data is None:
            return
        w, h = self.term.size()
        self.term.paint(render(self.data, self.state, w, h))

    def keys(self, wait_ms: int = 0) -> None:
        keys = self.term.keys(wait_ms)
        for k in keys:
            handle_key(self.state, k, self.data)
        if keys or self.term.resized:
            self.paint()

    @property
    def done(self) -> bool:
        return self.state.quit or (self.iterations is not None and self.frames_shown > self.iterations)


# ---- live ----------------------------------------------------------------------

def run_live(delay: float, batch: bool, iterations: int | None, overlays: list[str],
             btf: str | None, sort: str, out=None) -> None:
    from ..cli import Stopper, trace_for
    from ..session import Session
    out = out or sys.stdout
    state = UIState(sort=sort, delay=delay)
    if not batch:
        Terminal.check()
    term = None if batch else Terminal()
    with Stopper() as stopper, Session(btf=btf, only=overlays or None,
                                       refresh_interval=min(1.0, delay),
                                       retention=3600.0) as session:    # runs for hours
        frames = Frames(session.model)
        ui = Interactive(state, term, iterations) if term else None
        due = [0.0]
        printed = [0]

        def attached():
            frames.model = session.model        # start() made a fresh model
            frames.t_prev = session.model.now
            due[0] = time.monotonic() + delay
            if ui:
                term.open()
                with session.lock:
                    ui.show(frames.next())

        def step():
            now = time.monotonic()
            if ui:
                ui.keys()
                if ui.done:
                    stopper.stopped = True
                    return
                if state.paused or now < due[0]:
                    return
            elif now < due[0]:
                return
            due[0] += delay
            if due[0] < now:                 # fell behind (a slow step): skip, don't burst
                due[0] = now + delay
            with session.lock:
                data = frames.next()
            if ui:
                ui.show(data)
                if ui.done:
                    stopper.stopped = True
            else:
                out.write(("\n" if printed[0] else "") + render_batch(data, state))
                out.flush()
                printed[0] += 1
                if iterations is not None and printed[0] >= iterations:
                    stopper.stopped = True

        try:
            trace_for(session, None, stopper, on_attached=attached, step=step)
        finally:
            if term:
                term.close()


# ---- replay ------------------------------------------------------------------

def record_time(rec: dict) -> float | None:
    """When a record happened on the recording's clock (None: no time)."""
    kind = rec["type"]
    try:
        if kind in ("counters", "gone", "self", "end", "wb_error", "error_returned"):
            return float(rec["t"])
        if kind == "flush":
            return float(rec["start"]) + float(rec["duration"])
        if kind == "overlay":
            return float(rec["meta"].get("first_seen") or 0.0)
    except (KeyError, TypeError, ValueError):
        return None
    return None


class Feeder:
    """Applies a recording's records to a model up to a given time."""

    def __init__(self, model: Model, records: Iterator[dict], name: str):
        self.model = model
        self.records = records
        self.name = name
        self.pending: dict | None = None
        self.done = False
        self.first_t: float | None = None
        self._peek()

    def _peek(self) -> None:
        from ..recording import apply
        while self.pending is None and not self.done:
            rec = next(self.records, None)
            if rec is None:
                self.done = True
                return
            t = record_time(rec)
            if t is None:
                apply(self.model, rec, self.name)     # hooks etc.: no time, apply now
                continue
            if self.first_t is None and rec["type"] == "counters":
                self.first_t = t
            self.pending = rec

    def feed_until(self, t: float) -> None:
        from ..recording import apply
        while self.pending is not None and (record_time(self.pending) or 0.0) <= t:
            apply(self.model, self.pending, self.name)
            self.pending = None
            self._peek()
        self.model.tick(min(t, self.model.now) if self.done else t)

    def start_time(self) -> float:
        """Where to begin: the first counters sample (everything mounted by then)."""
        while self.first_t is None and not self.done:
            rec = self.pending
            from ..recording import apply
            apply(self.model, rec, self.name)
            self.pending = None
            self._peek()
        return self.first_t if self.first_t is not None else self.model.now


def run_replay(path: str, delay: float, batch: bool, iterations: int | None, sort: str,
               out=None) -> None:
    from ..cli import Stopper
    from ..recording import read_records
    out = out or sys.stdout
    header, records = read_records(path)
    model = Model(0.0)
    feeder = Feeder(model, records, os.path.basename(path))
    t = feeder.start_time()
    feeder.feed_until(t)
    started = header.get("started") if isinstance(header.get("started"), (int, float)) else None
    frames = Frames(model, started=started)
    frames.t_prev = t
    state = UIState(sort=sort, delay=delay)

    def advance() -> TopData | None:
        nonlocal t
        if feeder.done:
            return None
        t += delay
        feeder.feed_until(t)
        data = frames.next(min(t, model.now) if feeder.done else t)
        data.note = "replay ended" if feeder.done else f"replay t={data.t:.0f}s"
        return data

    if batch:
        # as fast as it reads: a script wants the frames, not the wait
        n = 0
        with Stopper() as stopper:
            while not stopper.stopped and (iterations is None or n < iterations):
                data = advance()
                if data is None:
                    break
                out.write(("\n" if n else "") + render_batch(data, state))
                n += 1
        out.flush()
        return

    Terminal.check()
    term = Terminal()
    with Stopper() as stopper:
        term.open()
        try:
            ui = Interactive(state, term, iterations)
            first = frames.next(t)
            first.note = f"replay t={t:.0f}s"
            ui.show(first)
            due = time.monotonic() + delay
            while not stopper.stopped and not ui.done:
                ui.keys(wait_ms=max(0, min(100, int((due - time.monotonic()) * 1000))))
                if state.paused or time.monotonic() < due:
                    continue
                due = max(due + delay, time.monotonic())
                data = advance()
                if data is not None:
                    ui.show(data)
        finally:
            term.close()


def run_top(delay: float, batch: bool, iterations: int | None, replay: str | None,
            overlays: list[str], btf: str | None, sort: str) -> None:
    if replay:
        run_replay(replay, delay, batch, iterations, sort)
    else:
        run_live(delay, batch, iterations, overlays, btf, sort)
