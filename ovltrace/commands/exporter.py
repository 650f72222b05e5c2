"""`ovltrace exporter`: a session, the collector of views/exporter.py,
and prometheus_client's own HTTP exposition (content negotiation, gzip,
`name[]` filtering) behind a small router for health and a landing page."""
from __future__ import annotations

import gc
import socket
import sys
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import ThreadingWSGIServer

from ..errors import OvltraceError
from ..probes import BPF_STATS
from ..views.exporter import ExporterConfig, OverlayCollector
from ..views.metrics import DEFAULT_PORT
from ..views.exposition import metrics_app
from .runtime import TraceOptions, say, trace, tracing
from .webconfig import BasicAuth, LiveConfig, load as load_web_config


class BpfStatsSwitch:
    """--bpf-stats: turn kernel.bpf_stats_enabled on while running, then
    put back what was there (a sysctl is the host's, not ours)."""

    def __init__(self, wanted: bool):
        self.wanted = wanted
        self.old = None

    def __enter__(self):
        if self.wanted:
            try:
                with open(BPF_STATS) as f:
                    self.old = f.read().strip()
                with open(BPF_STATS, "w") as f:
                    f.write("1")
            except OSError as e:
                raise OvltraceError(f"cannot enable {BPF_STATS}: {e.strerror}") from None
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            try:
                with open(BPF_STATS, "w") as f:
                    f.write(self.old)
            except OSError:
                pass


# ---- HTTP ------------------------------------------------------------------------

def parse_listen_address(text: str) -> tuple[str, int]:
    """'localhost:19435', ':19435' (all interfaces), '[::1]:19435' -> (host, port).
    ValueError with a one-line reason otherwise."""
    text = (text or "").strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not port:
        raise ValueError(f"{text!r} is not HOST:PORT (examples: localhost:{DEFAULT_PORT}, "
                         f":{DEFAULT_PORT}, [::1]:{DEFAULT_PORT})")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{port!r} in {text!r} is not a port number (0-65535)")
    return host, int(port)


class _QuietHandler(WSGIRequestHandler):
    timeout = 60    # a client that connects and says nothing does not keep a thread

    def log_message(self, *args):
        pass        # scrapes every few seconds: no access log on stderr


def make_server(host: str, port: int, web: LiveConfig | None = None) -> WSGIServer:
    """Bind now (so a busy port fails before the slow BPF compile); the
    app is set later with server.set_app(). With a TLS web config, each
    connection is wrapped with the context current then, and its
    handshake runs in the connection's own thread."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OvltraceError(f"cannot listen on {host or '*'}:{port}: {e.strerror}") from None
    family = infos[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family
        allow_reuse_address = True

        def get_request(self):
            sock, addr = super().get_request()
            tls = web.current().tls if web is not None else None
            if tls is not None:
                sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            return sock, addr

        def handle_error(self, request, client_address):
            # plain HTTP at a TLS port, a failed handshake, a client gone:
            # the client's problem, not a traceback on our stderr
            if not isinstance(sys.exc_info()[1], (OSError, ValueError)):
                super().handle_error(request, client_address)

    try:
        return Server((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port),
                      _QuietHandler)
    except OSError as e:
        raise OvltraceError(f"cannot listen on {host or '*'}:{port}: {e.strerror}") from None


def web_app(registry, telemetry_path: str, healthy, web: LiveConfig | None = None):
    """Metrics at telemetry_path (views/exposition.py), health, a landing
    page; with a web config, its basic auth on all but health (a kubelet
    probe carries no credentials, and "OK" tells nothing) and its headers
    on every answer."""
    metrics = metrics_app(registry)
    auth = BasicAuth()
    landing = (f"<html><head><title>ovltrace exporter</title></head><body>"
               f"<h1>ovltrace exporter</h1><p><a href=\"{telemetry_path}\">Metrics</a></p>"
               f"<p><a href=\"/-/healthy\">Health</a></p></body></html>").encode()

    def app(environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        cfg = web.current() if web is not None else None
        if cfg is not None and cfg.headers:
            plain_start = start_response

            def start_response(status, headers, exc_info=None):
                return plain_start(status, list(headers) + cfg.headers, exc_info)

        def send(status: str, ctype: str, body: bytes, extra=()):
            start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body))),
                                    *extra])
            return [body]

        is_health = path in ("/-/healthy", "/health", "/healthz")
        if cfg is not None and not is_health \
                and not auth.allowed(cfg.users, environ.get("HTTP_AUTHORIZATION")):
            return send("401 Unauthorized", "text/plain", b"Unauthorized\n",
                        [("WWW-Authenticate", 'Basic realm="ovltrace"')])
        if path == telemetry_path:
            try:
                return metrics(environ, start_response)
            except Exception as e:     # a scrape must answer, never hang up
                return send("500 Internal Server Error", "text/plain",
                            f"collect failed: {e}\n".encode())
        if is_health:
            ok, why = healthy()
            return send("200 OK" if ok else "503 Service Unavailable", "text/plain",
                        (why + "\n").encode())
        if path == "/":
            return send("200 OK", "text/html", landing)
        return send("404 Not Found", "text/plain", b"not found\n")

    return app


def run_exporter(opts: TraceOptions, listen: str, telemetry_path: str, config: ExporterConfig,
                 bpf_stats: bool, duration: float | None = None,
                 web_config_file: str | None = None) -> int:
    web = LiveConfig(load_web_config(web_config_file), time.monotonic) \
        if web_config_file else None
    try:
        host, port = parse_listen_address(listen)
    except ValueError as e:
        raise OvltraceError(f"bad --web.listen-address: {e}") from None
    if not telemetry_path.startswith("/") or telemetry_path in ("/", "/-/healthy", "/health"):
        raise OvltraceError(f"bad --web.telemetry-path {telemetry_path!r}: must start with / "
                            "and not be / or a health path")

    state = {"attached": False, "last_step": 0.0}

    def healthy():
        if not state["attached"]:
            return False, "starting: probes not attached yet"
        age = time.monotonic() - state["last_step"]
        if age > 10:
            return False, f"tracing loop stalled for {age:.0f}s"
        return True, "OK"

    # The tracing loop and a scrape share one interpreter: let the scrape
    # thread take the GIL after 1 ms, not 5, when the loop is busy (mount
    # churn), so a scrape never queues behind a burst of session work.
    sys.setswitchinterval(0.001)
    registry = CollectorRegistry(auto_describe=False)
    server = make_server(host, port, web)
    thread = None
    try:
        # the model forgets what ended well after the series expired, and
        # keeps no counter history: a scrape reads the newest sample only
        with BpfStatsSwitch(bpf_stats), \
                tracing(opts, retention=config.gone_ttl + 60, history=0.0) as (session, stopper):
            # nothing is served before the probes attach (start() replaces the model)
            collector = OverlayCollector(lambda: session.model if session.attached else None,
                                         session.lock, config,
                                         bpf_programs=session.program_stats, sole_reader=True)
            registry.register(collector)
            server.set_app(web_app(registry, telemetry_path, healthy, web))
            thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
            thread.start()

            def attached():
                # What start-up allocated (bcc, the compile, discovery) lives
                # as long as the process: keep the cyclic collector off it,
                # and let it run less often, so no scrape waits on a full
                # collection of a big heap (the model's records are acyclic
                # and go by reference counting).
                gc.freeze()
                gc.set_threshold(10000, 20, 20)
                state["attached"] = True
                state["last_step"] = time.monotonic()
                shown = f"[{host}]" if ":" in host else (host or "*")
                scheme = "https" if web is not None and web.cfg.tls else "http"
                auth = ", basic auth" if web is not None and web.cfg.users else ""
                say(f"serving metrics on {scheme}://{shown}:{server.server_address[1]}{telemetry_path}{auth}")

            def stepped():
                state["last_step"] = time.monotonic()

            trace(session, stopper, duration, on_attached=attached, step=stepped)
    finally:
        if thread is not None:
            server.shutdown()
        server.server_close()
    return 0
