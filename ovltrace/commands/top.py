"""`ovltrace top`: the loops (live, replay; full screen or batch) around
the view in views/top.py (frames) and views/topui.py (curses)."""
from __future__ import annotations

import os
import sys
import time
from typing import Iterator

from ..model import Model
from ..recording import apply, read_records
from ..views.top import TopData, UIState, render_batch
from ..views.topui import Frames, Interactive, Terminal
from .runtime import Stopper, TraceOptions, trace, tracing


def run_live(opts: TraceOptions, delay: float, batch: bool, iterations: int | None,
             sort: str, out=None) -> None:
    out = out or sys.stdout
    state = UIState(sort=sort, delay=delay)
    if not batch:
        Terminal.check()
    term = None if batch else Terminal()
    with tracing(opts, hangup_stops=not batch, refresh_interval=min(1.0, delay),
                 retention=3600.0) as (session, stopper):    # runs for hours
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
            trace(session, stopper, None, on_attached=attached, step=step)
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
        while self.pending is not None and (record_time(self.pending) or 0.0) <= t:
            apply(self.model, self.pending, self.name)
            self.pending = None
            self._peek()
        self.model.tick(min(t, self.model.now) if self.done else t)

    def start_time(self) -> float:
        """Where to begin: the first counters sample (everything mounted by then)."""
        while self.first_t is None and not self.done:
            rec = self.pending
            apply(self.model, rec, self.name)
            self.pending = None
            self._peek()
        return self.first_t if self.first_t is not None else self.model.now


def run_replay(path: str, delay: float, batch: bool, iterations: int | None, sort: str,
               out=None) -> None:
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
    with Stopper(hangup_stops=True) as stopper:      # the terminal hung up: quit
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


def run_top(opts: TraceOptions, delay: float, batch: bool, iterations: int | None,
            replay: str | None, sort: str) -> None:
    if replay:
        run_replay(replay, delay, batch, iterations, sort)
    else:
        run_live(opts, delay, batch, iterations, sort)
