"""Reading series back from a Prometheus-compatible HTTP API (Prometheus,
Thanos, Mimir, Cortex, VictoriaMetrics all serve /api/v1/query).

Instant queries only (each one evaluates a window function such as
last_over_time(x[24h]) at the report's end), so a report's cost is a fixed
number of queries whatever the range.  Every failure becomes one
OvltraceError line: unreachable, refused credentials, TLS, a query the
server rejects, an answer that is not Prometheus's.
"""
from __future__ import annotations

import base64
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from .errors import OvltraceError


@dataclass
class Auth:
    """The client options of Prometheus's own http_config, by the names
    promtool and the exporters use."""
    bearer_token_file: str | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False

    def headers(self) -> dict[str, str]:
        if self.bearer_token_file and self.basic_auth_user:
            raise OvltraceError("give --bearer-token-file or --basic-auth-user, not both")
        if self.bearer_token_file:
            return {"Authorization": f"Bearer {_read_secret(self.bearer_token_file)}"}
        if self.basic_auth_user:
            pw = (_read_secret(self.basic_auth_password_file)
                  if self.basic_auth_password_file else "")
            token = base64.b64encode(f"{self.basic_auth_user}:{pw}".encode()).decode()
            return {"Authorization": f"Basic {token}"}
        return {}

    def tls(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as e:
            raise OvltraceError(f"cannot load the TLS files: {_reason(e)}") from None
        if self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def _read_secret(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise OvltraceError(f"cannot read {path}: {e.strerror}") from None


def _reason(e: BaseException) -> str:
    r = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
    return str(getattr(r, "strerror", None) or r)


class Prometheus:
    """One server; counts the queries and series a report costs."""

    def __init__(self, url: str, auth: Auth | None = None, timeout: float = 120.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise OvltraceError(f"--prometheus {url!r}: give an http:// or https:// URL")
        self.url = url.rstrip("/")
        self.auth = auth or Auth()
        self.timeout = timeout
        self._headers = {"Content-Type": "application/x-www-form-urlencoded",
                         "Accept": "application/json", **self.auth.headers()}
        self._tls = self.auth.tls() if u.scheme == "https" else None
        self.queries = 0
        self.series = 0

    def query(self, expr: str, at: float) -> list[dict]:
        """An instant vector: [{"metric": {labels}, "value": float}, ...]."""
        data = self._post("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})
        if data.get("resultType") != "vector":
            raise OvltraceError(f"{self.url}: expected a vector, got {data.get('resultType')!r}")
        out = []
        for r in data.get("result", []):
            try:
                out.append({"metric": r["metric"], "value": float(r["value"][1])})
            except (KeyError, IndexError, TypeError, ValueError):
                raise OvltraceError(f"{self.url}: a malformed sample in the answer") from None
        self.queries += 1
        self.series += len(out)
        return out

    def _post(self, path: str, form: dict) -> dict:
        req = urllib.request.Request(self.url + path, urllib.parse.urlencode(form).encode(),
                                     headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._tls) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            body = _json(e.read())
            if e.code in (401, 403):
                raise OvltraceError(f"{self.url}: access refused (HTTP {e.code}): check "
                                    "--bearer-token-file / --basic-auth-user") from None
            why = (body or {}).get("error") or e.reason
            raise OvltraceError(f"{self.url}: HTTP {e.code}: {why}") from None
        except (urllib.error.URLError, OSError, socket.timeout, ssl.SSLError) as e:
            raise OvltraceError(f"cannot reach Prometheus at {self.url}: {_reason(e)}") from None
        body = _json(raw)
        if body is None or "status" not in body:
            raise OvltraceError(f"{self.url} did not answer as a Prometheus API "
                                "(is the URL the server's base, e.g. http://host:9090?)")
        if body["status"] != "success":
            raise OvltraceError(f"{self.url}: {body.get('errorType', 'error')}: "
                                f"{body.get('error', '?')}")
        return body.get("data") or {}


def _json(raw: bytes):
    try:
        v = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return v if isinstance(v, dict) else None
