"""The exporter secured with --web.config.file (TLS, client certificates if
given, bcrypt basic auth), scraped by a real Prometheus: the right
credentials get the workload's exact bytes; a wrong password, no password,
plain HTTP and a client certificate from another CA get nothing."""
from __future__ import annotations

import base64
import json
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request

import bcrypt
import pytest

from conftest import OVLTRACE, Trace, free_port, make_pki, write_file
from exporter_helpers import get, query, start_prometheus, wait_for

pytestmark = pytest.mark.live

MiB = 1 << 20
PASSWORD = "correct horse"


def targets(prom: str) -> dict[str, dict]:
    body = json.loads(get(f"{prom}/api/v1/targets"))
    return {t["labels"]["job"]: t for t in body["data"]["activeTargets"]}


def test_tls_and_basic_auth_with_a_real_prometheus(sandbox, tmp_path):
    pki = make_pki(str(tmp_path))
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    web.write_text(f"""
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_ca_file: ca.crt
  client_auth_type: VerifyClientCertIfGiven
basic_auth_users:
  prometheus: '{hashed}'
http_server_config:
  headers: {{Strict-Transport-Security: max-age=31536000}}
""")
    a, b = sandbox.add_overlay("a"), sandbox.add_overlay("b")
    exp_port = free_port()
    trace = Trace(["exporter", "--web.listen-address", f"127.0.0.1:{exp_port}",
                   "--web.config.file", str(web), "--overlay", a.mountpoint,
                   "--overlay", b.mountpoint])
    try:
        _scrape_and_check(trace, pki, exp_port, a, b, tmp_path)
    finally:
        if trace.proc.poll() is None:       # a failed check: no exporter left behind
            trace.proc.kill()
            trace.proc.wait(30)


def _scrape_and_check(trace, pki, exp_port, a, b, tmp_path):
    prom_port = free_port()
    prom = None
    data = tempfile.TemporaryDirectory(prefix="ovltrace-prom-")
    try:
        trace.wait_attached(120)
        assert f"serving metrics on https://127.0.0.1:{exp_port}/metrics, basic auth" \
            in trace.stderr
        target = f'static_configs: [{{targets: ["127.0.0.1:{exp_port}"]}}]'
        tls = f"tls_config: {{ca_file: {pki['ca.crt']}}}"
        auth = f"basic_auth: {{username: prometheus, password: '{PASSWORD}'}}"
        jobs = {
            "good": f"scheme: https, {tls}, {auth}",
            "good_client_cert": (f"scheme: https, tls_config: {{ca_file: {pki['ca.crt']}, "
                                 f"cert_file: {pki['client.crt']}, key_file: {pki['client.key']}}}, "
                                 f"{auth}"),
            "wrong_password": f"scheme: https, {tls}, basic_auth: {{username: prometheus, "
                              f"password: wrong}}",
            "wrong_user": f"scheme: https, {tls}, basic_auth: {{username: admin, "
                          f"password: '{PASSWORD}'}}",
            "no_password": f"scheme: https, {tls}",
            "plain_http": f"scheme: http, {auth}",
            "foreign_client_cert": (f"scheme: https, tls_config: {{ca_file: {pki['ca.crt']}, "
                                    f"cert_file: {pki['rogue.crt']}, "
                                    f"key_file: {pki['rogue.key']}}}, {auth}"),
        }
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text("global: {scrape_interval: 1s}\nscrape_configs:\n" + "".join(
            f"  - {{job_name: {job}, {settings}, {target}}}\n" for job, settings in jobs.items()))
        prom, url = start_prometheus(cfg, data.name, prom_port)
        write_file(f"{a.mountpoint}/big", 4 * MiB)
        for i in range(10):
            write_file(f"{b.mountpoint}/small{i}", 4096)

        def dirtied():
            return {(r["metric"]["job"], r["metric"]["mountpoint"]): float(r["value"][1])
                    for r in query(url, "ovltrace_overlay_dirtied_bytes_total")}
        want = {(j, mp): v for j in ("good", "good_client_cert")
                for mp, v in ((a.mountpoint, 4 * MiB), (b.mountpoint, 40960))}
        # exactly what the workload wrote, through the authorised jobs ...
        wait_for(lambda: {k: v for k, v in dirtied().items() if k in want} == want, 60,
                 "the workload's bytes through the authorised jobs")

        def all_scraped():
            t = targets(url)
            return t if all(t[j]["lastScrape"] != "0001-01-01T00:00:00Z" for j in jobs) else None
        t = wait_for(all_scraped, 30, "a scrape of every job")
        # ... and through no other
        assert dirtied() == want
        health = {j: (t[j]["health"], t[j]["lastError"]) for j in jobs}
        assert {j: h for j, (h, _) in health.items()} == {
            "good": "up", "good_client_cert": "up", "wrong_password": "down", "wrong_user": "down",
            "no_password": "down", "plain_http": "down", "foreign_client_cert": "down"}, health
        for j in ("wrong_password", "wrong_user", "no_password"):
            assert "401 Unauthorized" in health[j][1], health
        # Go's client reads the TLS server's alert as a malformed HTTP answer
        assert "malformed HTTP response" in health["plain_http"][1] \
            or "EOF" in health["plain_http"][1], health
        # refused in the TLS handshake, before HTTP: Go reports the alert, or
        # (TLS 1.3 checks the client's certificate after the client's
        # Finished) the write that found the connection closed
        rogue = health["foreign_client_cert"][1]
        assert rogue and "401" not in rogue, health
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(30)
        data.cleanup()

    # the same from Python's side: the response headers, health without
    # credentials (a kubelet probe has none), a 401 that asks for Basic
    ctx = ssl.create_default_context(cafile=pki["ca.crt"])
    base = f"https://127.0.0.1:{exp_port}"
    with urllib.request.urlopen(f"{base}/-/healthy", context=ctx, timeout=10) as r:
        assert r.read() == b"OK\n"
        assert r.headers["Strict-Transport-Security"] == "max-age=31536000"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{base}/metrics", context=ctx, timeout=10)
    assert e.value.code == 401 and e.value.headers["WWW-Authenticate"].startswith("Basic")
    req = urllib.request.Request(f"{base}/metrics", headers={
        "Authorization": "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        assert b"ovltrace_overlay_dirtied_bytes_total{" in r.read()

    trace.signal()
    rc, _ = trace.finish(60)
    assert rc == 0, trace.stderr
    # refused clients are theirs to log, not ours: no traceback, no noise
    assert "Traceback" not in trace.stderr and "Error" not in trace.stderr, trace.stderr


def test_a_bad_web_config_fails_before_tracing(tmp_path):
    bad = tmp_path / "web.yml"
    bad.write_text("basic_auth_users: {admin: hunter2}\n")
    r = subprocess.run([*OVLTRACE, "exporter", "--web.config.file", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"ovltrace: error: --web.config.file {bad}: basic_auth_users.admin: not a bcrypt hash "
        "(make one with: htpasswd -nbBC 10 \"\" PASSWORD | tr -d ':')"], r.stderr
