"""What every tracing command shares: options, signals, the banner, the
loop that runs a session until its duration or a signal ends it."""
from __future__ import annotations

import contextlib
import signal
import sys
import time
from dataclasses import dataclass

from ..untrusted import visible


def say(msg: str) -> None:
    """A status line on stderr (stdout carries the command's output); it
    may quote a path or a recording's content: shown terminal-safe."""
    print(f"ovltrace: {visible(msg)}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TraceOptions:
    """The options every tracing command takes."""
    btf: str | None = None
    hooks: str = "auto"                 # probes.HOOK_MODES
    overlays: tuple[str, ...] = ()      # trace only these mountpoints


class Stopper:
    """SIGINT/SIGTERM end a trace cleanly: the loop notices, prints its
    result and detaches.  A second signal exits at once (the kernel drops
    our programs with the process).  SIGHUP asks for a reload: mounts,
    container state and cgroups are read again, tracing goes on; for a
    full-screen view (hangup_stops) it means the terminal is gone: stop."""

    def __init__(self, hangup_stops: bool = False):
        self.stopped = False
        self.signum = None
        self.reload = False
        self.hangup_stops = hangup_stops

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        self._old[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._hangup)
        return self

    def _handle(self, signum, _frame):
        if self.stopped:
            raise SystemExit(128 + signum)
        self.stopped = True
        self.signum = signum

    def _hangup(self, signum, frame):
        if self.hangup_stops:
            self._handle(signum, frame)
        else:
            self.reload = True

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def tracing(opts: TraceOptions, hangup_stops: bool = False, **session_args):
    """(session, stopper): signals handled, the session closed (every BPF
    program detached) however the block ends."""
    from ..session import Session
    with Stopper(hangup_stops) as stopper, Session(btf=opts.btf, only=list(opts.overlays) or None,
                                       hook_mode=opts.hooks, **session_args) as session:
        yield session, stopper


def trace(session, stopper: Stopper, duration: float | None = None, on_attached=None,
          step=None) -> None:
    """Attach, print the banner, run until the duration has passed or a
    signal arrived (or step() set stopper.stopped)."""
    session.start()
    hooks = session.probes.enabled_hooks()
    n = sum(1 for w in session.watched.values() if w.ov is not None)
    say(f"tracing {len(hooks)} hooks on {n} overlays"
        + (f" for {duration:g}s" if duration else "") + "... Ctrl-C to end.")
    if on_attached:
        on_attached()
    end = time.monotonic() + duration if duration else None
    while not stopper.stopped and (end is None or time.monotonic() < end):
        timeout = 0.1 if end is None else max(0.0, min(0.1, end - time.monotonic()))
        session.step(timeout)
        if stopper.reload:
            stopper.reload = False
            session.reload()
            say("SIGHUP: reloaded mounts, container state and cgroups")
        if step:
            step()
