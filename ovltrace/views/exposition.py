"""The Prometheus text format (version 0.0.4), written directly, and the
WSGI app that serves it.

prometheus_client's generate_latest validates and escapes every label
*name* on every sample line; at a thousand-odd samples of eight labels
that is three quarters of a scrape (bench/scrape).  ovltrace's label
names are fixed (views/metrics.py) and valid, so only label values are
escaped here: they are untrusted text (container and file names).  Same
output as generate_latest otherwise; gzip when the scraper asks for it."""
from __future__ import annotations

import gzip
import math

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SUFFIX = {"counter": "_total"}
_TYPE = {"unknown": "untyped", "info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram"}


def value_text(v: float) -> str:
    """A sample value as Go prints it (what Prometheus itself writes)."""
    d = float(v)
    if math.isinf(d):
        return "+Inf" if d > 0 else "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:                    # Go switches to exponents sooner
        return f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.") + f"e+{dot - 1:02d}"
    return s


def _escape(v: str) -> str:
    if "\\" in v or '"' in v or "\n" in v:
        v = v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return v


def render(registry) -> bytes:
    out: list[str] = []
    for fam in registry.collect():
        name = fam.name + _SUFFIX.get(fam.type, "")
        doc = fam.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {_TYPE.get(fam.type, fam.type)}\n")
        for s in fam.samples:
            if s.labels:
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(s.labels.items()))
                out.append(f"{s.name}{{{labels}}} {value_text(s.value)}\n")
            else:
                out.append(f"{s.name} {value_text(s.value)}\n")
    return "".join(out).encode("utf-8")


def metrics_app(registry):
    """WSGI: the registry's metrics (GET), gzip-compressed when accepted."""
    def app(environ, start_response):
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        body = render(registry)
        headers = [("Content-Type", CONTENT_TYPE)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]
    return app
