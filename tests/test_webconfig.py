"""--web.config.file (exporter-toolkit's format), without a kernel: what is
accepted, what is refused in one line, basic auth, reloading. The live
test with a real Prometheus over TLS is tests/test_exporter_secure_live.py."""
from __future__ import annotations

import base64
import os
import ssl

import bcrypt
import pytest

from conftest import make_pki
from ovltrace.commands.webconfig import BasicAuth, LiveConfig, load
from ovltrace.errors import OvltraceError

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(str(tmp_path_factory.mktemp("pki")))


def write(tmp_path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return str(path)


def refused(path: str) -> str:
    with pytest.raises(OvltraceError) as e:
        load(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"--web.config.file {path}: "), msg
    return msg


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_tls_and_users_with_paths_relative_to_the_file(tmp_path, pki):
    for name in ("server.crt", "server.key", "ca.crt"):
        os.link(pki[name], tmp_path / name)
    cfg = load(write(tmp_path, f"""
tls_server_config: {{cert_file: server.crt, key_file: server.key, client_ca_file: ca.crt}}
basic_auth_users: {{prometheus: '{HASH}'}}
http_server_config: {{headers: {{x-frame-options: deny}}}}
"""))
    # a client CA alone means: client certificates required (exporter-toolkit's default)
    assert cfg.tls.verify_mode == ssl.CERT_REQUIRED
    assert cfg.tls.minimum_version == ssl.TLSVersion.TLSv1_2
    assert cfg.users == {"prometheus": HASH.encode()}
    assert cfg.headers == [("X-Frame-Options", "deny")]
    assert set(cfg.watched) == {str(tmp_path / n) for n in ("web.yml", "server.crt",
                                                            "server.key", "ca.crt")}


def test_optional_client_certs_and_versions(tmp_path, pki):
    cfg = load(write(tmp_path, f"""
tls_server_config:
  cert_file: {pki['server.crt']}
  key_file: {pki['server.key']}
  client_ca_file: {pki['ca.crt']}
  client_auth_type: VerifyClientCertIfGiven
  min_version: TLS13
"""))
    assert cfg.tls.verify_mode == ssl.CERT_OPTIONAL
    assert cfg.tls.minimum_version == ssl.TLSVersion.TLSv1_3
    assert cfg.users == {}


def test_an_empty_file_is_plain_http(tmp_path):
    cfg = load(write(tmp_path, ""))
    assert cfg.tls is None and cfg.users == {} and cfg.headers == []


@pytest.mark.parametrize("text, why", [
    ("tls_server_config: {cert_file: a.crt}", "needs both cert_file and key_file"),
    ("tls_server_config: {cert_file: nope.crt, key_file: nope.key}", "cannot load the TLS files"),
    ("tls_server_config: {cert_file: S, key_file: K, client_auth_type: RequireAnyClientCert}",
     "taken unverified) is not supported"),
    ("tls_server_config: {cert_file: S, key_file: K, client_auth_type: VerifyClientCertIfGiven}",
     "needs client_ca_file"),
    ("tls_server_config: {cert_file: S, key_file: K, min_version: SSL3}", "is not one of TLS10"),
    ("tls_server_config: {cert_file: S, key_file: K, cipher_suites: [TLS_AES_128_GCM_SHA256]}",
     "cipher_suites is not supported"),
    ("tls_server_config: {cert_file: S, key_file: K, certfile: x}", "unknown key 'certfile'"),
    ("basic_auth_users: {admin: hunter2}", "not a bcrypt hash"),
    ("basic_auth_users: [admin]", "must map user names"),
    ("http_server_config: {headers: {Server: ovltrace}}", "'Server' is not one of"),
    ("tls_config: {}", "unknown key 'tls_config' in the top level"),
    ("[1, 2", "not YAML (line"),
    ("- a list", "the file must be a mapping"),
])
def test_refused_in_one_line(tmp_path, pki, text, why):
    text = text.replace("cert_file: S", f"cert_file: {pki['server.crt']}") \
               .replace("key_file: K", f"key_file: {pki['server.key']}")
    assert why in refused(write(tmp_path, text))


def test_a_missing_file(tmp_path):
    assert refused(str(tmp_path / "absent.yml")).endswith("No such file or directory")


def test_basic_auth():
    auth, users = BasicAuth(), {"prometheus": HASH.encode()}
    assert auth.allowed(users, basic("prometheus", "s3cret"))
    assert auth.allowed(users, basic("prometheus", "s3cret"))       # remembered
    for header in (None, "", basic("prometheus", "wrong"), basic("nobody", "s3cret"),
                   basic("prometheus", ""), "Bearer abc", "Basic !!!notbase64",
                   "Basic " + base64.b64encode(b"no-colon").decode()):
        assert not auth.allowed(users, header), header
    # no users configured: no auth asked
    assert auth.allowed({}, None)


def test_a_remembered_password_is_forgotten_when_the_hash_changes():
    auth = BasicAuth()
    assert auth.allowed({"p": HASH.encode()}, basic("p", "s3cret"))
    other = bcrypt.hashpw(b"new", bcrypt.gensalt(4))
    assert not auth.allowed({"p": other}, basic("p", "s3cret"))
    assert auth.allowed({"p": other}, basic("p", "new"))


def test_reload_on_change_keeps_the_last_good(tmp_path, pki, capsys):
    now = [0.0]
    path = write(tmp_path, f"basic_auth_users: {{a: '{HASH}'}}\n")
    live = LiveConfig(load(path), lambda: now[0])
    other = bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode()
    with open(path, "w") as f:
        f.write(f"basic_auth_users: {{b: '{other}'}}\n")
    assert set(live.current().users) == {"a"}          # checked at most once a second
    now[0] = 2.0
    assert set(live.current().users) == {"b"}
    with open(path, "w") as f:
        f.write("basic_auth_users: {b: broken}\n")
    now[0] = 4.0
    assert set(live.current().users) == {"b"}
    err = capsys.readouterr().err
    assert err.count("keeping the last good web config") == 1 and "not a bcrypt hash" in err
    # a plain-HTTP server does not turn into a TLS one (nor back) on reload
    with open(path, "w") as f:
        f.write(f"tls_server_config: {{cert_file: {pki['server.crt']}, key_file: {pki['server.key']}}}\n")
    now[0] = 6.0
    assert live.current().tls is None
    assert "TLS cannot be turned on or off" in capsys.readouterr().err
