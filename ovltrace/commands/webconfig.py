"""--web.config.file: exporter-toolkit's web configuration, so ovltrace's
exporter is secured the way every Prometheus exporter is: TLS (with client
certificates if wanted), bcrypt basic auth, extra response headers.

    tls_server_config:
      cert_file: server.crt        # relative to this file's directory
      key_file: server.key
      client_ca_file: ca.crt       # optional: then client certs are required
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12
    basic_auth_users:
      prometheus: $2y$10$...       # htpasswd -nbBC 10 "" PASSWORD | tr -d ':'
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}

As exporter-toolkit does, the file is read again when it or a file it
names changes (cert rotation needs no restart); a change that does not
parse keeps the last good configuration and says so once."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import ssl
import sys
import threading
from dataclasses import dataclass, field

from ..errors import OvltraceError

_CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE,
                "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
# Go's other two types accept a certificate without verifying it: Python's
# ssl cannot, and an unverified certificate proves nothing.
_CLIENT_AUTH_UNVERIFIED = ("RequestClientCert", "RequireAnyClientCert")
_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
             "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# exporter-toolkit accepts these response headers and no others
_HEADERS = ("Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options",
            "X-XSS-Protection", "Content-Security-Policy")
_KEYS = {None: ("tls_server_config", "http_server_config", "basic_auth_users"),
         "tls_server_config": ("cert_file", "key_file", "client_ca_file", "client_auth_type",
                               "min_version", "max_version", "cipher_suites",
                               "curve_preferences", "prefer_server_cipher_suites",
                               "client_allowed_sans"),
         "http_server_config": ("http2", "headers")}
# Go cipher names and curve lists do not map onto OpenSSL's one for one:
# refuse them rather than serve weaker or different settings than asked.
_UNSUPPORTED = {"cipher_suites": "Go cipher names (OpenSSL's defaults apply)",
                "curve_preferences": "Go curve names (OpenSSL's defaults apply)",
                "client_allowed_sans": "not implemented"}
# checked for an unknown user too, so a wrong name costs what a wrong
# password does (no user enumeration by timing)
_DUMMY_HASH = b"$2b$10$" + b"a" * 53


@dataclass
class WebConfig:
    path: str
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: list[tuple[str, str]] = field(default_factory=list)
    watched: tuple[str, ...] = ()       # files whose change means: read again


def _fail(path: str, why: str):
    raise OvltraceError(f"--web.config.file {path}: {why}")


def _mapping(path: str, value, where: str | None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(path, f"{where or 'the file'} must be a mapping")
    unknown = sorted(set(value) - set(_KEYS.get(where, value)))
    if unknown:
        _fail(path, f"unknown key {unknown[0]!r} in {where or 'the top level'} "
                    f"(known: {', '.join(_KEYS[where])})")
    return value


def _tls_context(path: str, tls: dict, base: str) -> tuple[ssl.SSLContext, list[str]]:
    for key in _UNSUPPORTED:
        if tls.get(key):
            _fail(path, f"tls_server_config.{key} is not supported: {_UNSUPPORTED[key]}")
    files = {}
    for key in ("cert_file", "key_file", "client_ca_file"):
        if tls.get(key) is not None:
            if not isinstance(tls[key], str) or not tls[key]:
                _fail(path, f"tls_server_config.{key} must be a file name")
            files[key] = os.path.join(base, tls[key])
    if "cert_file" not in files or "key_file" not in files:
        _fail(path, "tls_server_config needs both cert_file and key_file")
    auth = tls.get("client_auth_type") or ("RequireAndVerifyClientCert"
                                           if "client_ca_file" in files else "NoClientCert")
    if auth in _CLIENT_AUTH_UNVERIFIED:
        _fail(path, f"client_auth_type {auth} (a client certificate taken unverified) is not "
                    "supported: use VerifyClientCertIfGiven or RequireAndVerifyClientCert")
    if auth not in _CLIENT_AUTH:
        _fail(path, f"client_auth_type {auth!r} is not one of {', '.join(_CLIENT_AUTH)}")
    if auth != "NoClientCert" and "client_ca_file" not in files:
        _fail(path, f"client_auth_type {auth} needs client_ca_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for key, default in (("min_version", "TLS12"), ("max_version", None)):
        name = tls.get(key) or default
        if name is None:
            continue
        if name not in _VERSIONS:
            _fail(path, f"tls_server_config.{key} {name!r} is not one of {', '.join(_VERSIONS)}")
        setattr(ctx, "minimum_version" if key == "min_version" else "maximum_version",
                _VERSIONS[name])
    try:
        ctx.load_cert_chain(files["cert_file"], files["key_file"])
        if "client_ca_file" in files:
            ctx.load_verify_locations(files["client_ca_file"])
    except (OSError, ssl.SSLError) as e:
        _fail(path, f"cannot load the TLS files: {getattr(e, 'strerror', None) or e}")
    ctx.verify_mode = _CLIENT_AUTH[auth]
    return ctx, list(files.values())


def _users(path: str, users) -> dict[str, bytes]:
    if users is None:
        return {}
    if not isinstance(users, dict):
        _fail(path, "basic_auth_users must map user names to bcrypt hashes")
    out = {}
    for user, hashed in users.items():
        hashed = str(hashed or "")
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")) or len(hashed) != 60:
            _fail(path, f"basic_auth_users.{user}: not a bcrypt hash "
                        "(make one with: htpasswd -nbBC 10 \"\" PASSWORD | tr -d ':')")
        out[str(user)] = hashed.encode()
    if out:
        try:
            import bcrypt  # noqa: F401  (only needed when users are configured)
        except ImportError:
            _fail(path, "basic_auth_users needs the bcrypt module (Debian: python3-bcrypt)")
    return out


def load(path: str) -> WebConfig:
    """The configuration in `path`; OvltraceError with one line otherwise."""
    import yaml
    try:
        with open(path, "rb") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        _fail(path, e.strerror)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        _fail(path, "not YAML" + (f" (line {mark.line + 1})" if mark else ""))
    top = _mapping(path, doc, None)
    base = os.path.dirname(os.path.abspath(path))
    cfg = WebConfig(path=path, watched=(path,))
    tls = _mapping(path, top.get("tls_server_config"), "tls_server_config")
    if tls:
        cfg.tls, files = _tls_context(path, tls, base)
        cfg.watched += tuple(files)
    cfg.users = _users(path, top.get("basic_auth_users"))
    http = _mapping(path, top.get("http_server_config"), "http_server_config")
    for name, value in (http.get("headers") or {}).items():
        canon = next((h for h in _HEADERS if h.lower() == str(name).lower()), None)
        if canon is None:
            _fail(path, f"http_server_config.headers: {name!r} is not one of {', '.join(_HEADERS)}")
        cfg.headers.append((canon, str(value)))
    return cfg


def _stamp(files: tuple[str, ...]) -> tuple:
    out = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


class LiveConfig:
    """The current configuration, read again when a file it names changed
    (checked at most once a second, at a connection)."""

    def __init__(self, cfg: WebConfig, clock):
        self.cfg = cfg
        self._clock = clock
        self._stamp = _stamp(cfg.watched)
        self._checked = clock()
        self._lock = threading.Lock()
        self._complained = None

    def current(self) -> WebConfig:
        now = self._clock()
        if now - self._checked < 1.0:
            return self.cfg
        with self._lock:
            self._checked = now
            stamp = _stamp(self.cfg.watched)
            if stamp != self._stamp:
                try:
                    fresh = load(self.cfg.path)
                except OvltraceError as e:
                    if str(e) != self._complained:
                        print(f"ovltrace: keeping the last good web config: {e}", file=sys.stderr)
                        self._complained = str(e)
                else:
                    # a TLS server stays TLS: a file that lost its tls_server_config
                    # must not silently turn the exporter into plain HTTP
                    if (fresh.tls is None) != (self.cfg.tls is None):
                        print("ovltrace: keeping the last good web config: TLS cannot be "
                              "turned on or off without a restart", file=sys.stderr)
                    else:
                        self.cfg, self._complained = fresh, None
                        stamp = _stamp(fresh.watched)
                self._stamp = stamp
        return self.cfg


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes; a password that
    passed is remembered (by a keyed digest, never in clear) so a scrape
    every few seconds does not pay bcrypt's cost each time."""

    def __init__(self):
        self._ok: set[bytes] = set()
        self._key = os.urandom(32)

    def allowed(self, users: dict[str, bytes], header: str | None) -> bool:
        if not users:
            return True
        if not header or not header[:6].lower() == "basic ":
            return False
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True) \
                .decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if not sep:
            return False
        hashed = users.get(user)
        memo = hmac.new(self._key, b"\0".join([user.encode(), password.encode(),
                                                hashed or b""]), hashlib.sha256).digest()
        if hashed is not None and memo in self._ok:
            return True
        import bcrypt
        try:
            ok = bcrypt.checkpw(password.encode(), hashed or _DUMMY_HASH) and hashed is not None
        except ValueError:
            return False
        if ok:
            if len(self._ok) > 1000:
                self._ok.clear()
            self._ok.add(memo)
        return ok
