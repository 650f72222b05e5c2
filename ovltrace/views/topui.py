"""`ovltrace top`'s terminal side: frames from the model, and the thin
curses layer that paints top.py's lines and reads keys (the loops that
drive them are in commands/top.py)."""
from __future__ import annotations

import os
import sys
import time

from ..errors import OvltraceError
from ..model import Model
from .top import Screen, UIState, handle_key, render
from .topdata import STALL_WINDOW, ErrorTracker, TopData, collect


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
        self.scr = curses.initscr()
        curses.set_escdelay(25)                      # Esc without a one-second wait
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
