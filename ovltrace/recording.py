"""Recordings: the model's input records as versioned JSON lines.

`ovltrace record` writes every record the live session feeds the model;
replaying them into a fresh Model gives the same snapshots, so `audit
--from` and `top --replay` work on another host, without root or BPF.

File: optional gzip; line 1 is a header, then one record per line:
  {"format": "ovltrace-recording", "version": 1, "host": ..., "kernel": ...,
   "started": <unix time of session t=0>}
  {"type": "overlay", "meta": {...}}
  {"type": "gone", "key": k, "t": s}
  {"type": "counters", "t": s, "values": {key: [counters.COUNTER_FIELDS...]},
   "dirty_now": {key: n}}        (positional, append-only: older files have fewer)
  {"type": "flush", ...Flush}  {"type": "wb_error", ...}  {"type": "error_returned", ...}
  {"type": "self", "t": s, "stats": {...}}  {"type": "hooks", "hooks": [...]}
  {"type": "cgroup_accounting", ...}  {"type": "inode_paths", ...}   (ovltrace/annotate.py)
  {"type": "end", "t": s}
Times are seconds since the session started.  Readers skip record types
they do not know, so minor additions need no new version.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import platform
import time
from typing import IO, Iterator

from .errors import OvltraceError
from .counters import Counters
from .model import (Container, ErrorReturned, Flush, Model, Victim, WbError, meta_from_dict,
                    meta_to_dict)

FORMAT = "ovltrace-recording"
VERSION = 1


class RecordingWriter:
    def __init__(self, path: str, compress: bool | None = None):
        self.path = path
        if compress is None:
            compress = path.endswith(".gz")
        try:
            self._f: IO[str] = gzip.open(path, "wt") if compress else open(path, "w")
        except OSError as e:
            raise OvltraceError(f"cannot write {path}: {e.strerror}") from None
        self._write({"format": FORMAT, "version": VERSION, "host": platform.node(),
                     "kernel": platform.release(), "started": time.time()})
        self.last_t = 0.0

    def _write(self, obj: dict) -> None:
        self._f.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def write_record(self, obj: dict) -> None:
        """Add a record of another kind (it needs a "type")."""
        self._write(obj)

    def __call__(self, kind: str, payload) -> None:
        """The model's sink."""
        if kind == "overlay":
            self._write({"type": "overlay", "meta": meta_to_dict(payload)})
        elif kind == "gone":
            key, t = payload
            self._write({"type": "gone", "key": key, "t": t})
        elif kind == "counters":
            t, values, dirty = payload
            self.last_t = t
            self._write({"type": "counters", "t": round(t, 6),
                         "values": {k: c.values() for k, c in values.items()},
                         "dirty_now": dirty})
        elif kind in ("flush", "wb_error", "error_returned"):
            self._write({"type": kind, **dataclasses.asdict(payload)})
        elif kind == "self":
            t, stats = payload
            self._write({"type": "self", "t": t, "stats": stats})
        elif kind == "hooks":
            self._write({"type": "hooks", "hooks": payload})

    def close(self, t: float | None = None) -> None:
        if self._f is not None:
            self._write({"type": "end", "t": self.last_t if t is None else t})
            self._f.close()
            self._f = None


def _open(path: str) -> IO[str]:
    try:
        with open(path, "rb") as raw:
            magic = raw.read(2)
    except OSError as e:
        raise OvltraceError(f"cannot read {path}: {e.strerror}") from None
    return gzip.open(path, "rt") if magic == b"\x1f\x8b" else open(path, "r")


def read_records(path: str) -> tuple[dict, Iterator[dict]]:
    """The header and an iterator over the records; errors name the line."""
    f = _open(path)
    name = os.path.basename(path)
    try:
        first = f.readline()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise OvltraceError(f"{name}: not an ovltrace recording ({e})") from None
    try:
        header = json.loads(first)
    except ValueError:
        raise OvltraceError(f"{name}: not an ovltrace recording (line 1 is not JSON)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise OvltraceError(f"{name}: not an ovltrace recording (no header)")
    version = header.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise OvltraceError(f"{name}: recording version {version} is newer than this ovltrace "
                            f"reads ({VERSION}); upgrade ovltrace")

    def records() -> Iterator[dict]:
        lineno = 1
        try:
            for line in f:
                lineno += 1
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    raise OvltraceError(f"{name}: line {lineno}: corrupt record (truncated file?)") from None
                if not isinstance(rec, dict) or "type" not in rec:
                    raise OvltraceError(f"{name}: line {lineno}: not a record")
                rec["_line"] = lineno
                yield rec
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise OvltraceError(f"{name}: line {lineno}: unreadable ({e})") from None
        finally:
            f.close()

    return header, records()


def apply(model: Model, rec: dict, name: str = "recording") -> None:
    """Feed one record into a model."""
    kind = rec["type"]
    try:
        if kind == "overlay":
            model.add(meta_from_dict(rec["meta"]))
        elif kind == "gone":
            model.gone(rec["key"], float(rec["t"]))
        elif kind == "counters":
            values = {k: Counters.from_values(v) for k, v in rec["values"].items()}
            model.counters(float(rec["t"]), values, rec.get("dirty_now"))
        elif kind == "flush":
            d = {k: v for k, v in rec.items() if not k.startswith("_") and k != "type"}
            d["victims"] = [Victim(**v) for v in d.get("victims", [])]
            c = d.get("caller_container")
            d["caller_container"] = Container(**c) if c else None
            model.flush(Flush(**d))
        elif kind == "wb_error":
            model.wb_error(WbError(**{k: v for k, v in rec.items() if k in ("t", "key", "ino", "errno")}))
        elif kind == "error_returned":
            keys = ("t", "key", "call", "errno", "pid", "comm")
            model.error_returned(ErrorReturned(**{k: rec[k] for k in keys}))
        elif kind == "self":
            model.set_self_stats(float(rec["t"]), rec["stats"])
        elif kind == "hooks":
            model.set_hooks(rec["hooks"])
        elif kind == "end":
            model.tick(float(rec["t"]))
        # unknown record types from newer minor versions are skipped
    except (KeyError, TypeError, ValueError) as e:
        raise OvltraceError(f"{name}: line {rec.get('_line', '?')}: bad {kind} record ({e})") from None
