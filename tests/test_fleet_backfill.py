"""The fleet report's arithmetic against a real Prometheus holding a
synthetic fleet (tests/fleet_synth.py, backfilled with promtool): window
deltas exact where increase() is not (a series born inside the window),
counter resets and scrape gaps named in the caveats, workloads gathered
across nodes."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from conftest import ROOT, free_port
from exporter_helpers import start_prometheus
from fleet_synth import MiB, generate, party

SCHEMA = json.loads((ROOT / "ovltrace/schema/fleet-v1.json").read_text())
STEP = 60
STEPS = 60
WINDOW_START = 10


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    end = (int(time.time()) // 3600 - 1) * 3600       # an hour ago, on the hour
    times = [end - (STEPS - 1 - i) * STEP for i in range(STEPS)]
    om = d / "fleet.om"
    with om.open("w") as f:
        truth = generate(f, nodes=4, containers=4, times=times, window_start=WINDOW_START,
                         leak_nodes={"node-0001"}, reset_nodes={"node-0002"},
                         gap_nodes={"node-0003"})
    data = d / "data"
    r = subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    cfg = d / "prometheus.yml"
    cfg.write_text("global: {scrape_interval: 1m}\n")
    prom, url = start_prometheus(cfg, str(data), free_port())
    try:
        yield {"url": url, "truth": truth, "end": times[-1], "data_dir": data,
               "range": times[-1] - times[WINDOW_START]}
    finally:
        prom.terminate()
        prom.wait(30)


def fleet_json(s: dict, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "ovltrace.cli", "audit", "--prometheus", s["url"],
                        "--end", str(s["end"]), "--range", f"{s['range']}s", "--format", "json",
                        *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout)


def test_window_deltas_are_exact(synth):
    rep = fleet_json(synth)
    jsonschema.Draft202012Validator(SCHEMA).validate(rep)
    truth = synth["truth"]
    got = {}
    for node, nr in rep["node_reports"].items():
        for p in nr["interference"]:
            got[(node, p["caller"], p["victim"])] = (p["bytes"], p["flushes"])
    exact = {k: (b, truth.pair_flushes[k]) for k, b in truth.pair_bytes.items()}
    # node-0002's exporter restarted: increase() there, not exact (checked below)
    assert {k: v for k, v in got.items() if k[0] != "node-0002"} == exact
    # the series born inside the window counts its first value
    born = ("node-0000", party(0, 0), party(0, 3))
    assert got[born] == (3 * MiB * exact[born][1], exact[born][1]) and exact[born][1] > 0
    calls = {n: next(s["syncfs_calls"] for s in nr["stall_by_container"]
                     if s["name"] == party(int(n[-4:]), 0))
             for n, nr in rep["node_reports"].items() if n != "node-0002"}
    assert calls == truth.syncfs_calls
    assert [(l["node"], l["victim"], l["source"], l["count"]) for l in rep["leaks"]] == \
        [(n, v, s, c) for (n, v, s), c in truth.leaks.items()]


def test_resets_and_gaps_are_caveats(synth):
    rep = fleet_json(synth)
    caveats = "\n".join(rep["caveats"])
    assert "Counters reset in the window on node-0002" in caveats
    assert [n["node"] for n in rep["nodes"] if n["restarted"]] == ["node-0002"]
    gap = [c for c in rep["caveats"] if c.startswith("Scraped for only part")]
    assert len(gap) == 1 and "node-0003" in gap[0] and "node-0000" not in gap[0], gap
    # the restarted node's pairs: increase() across the reset, near the truth
    nr = rep["node_reports"]["node-0002"]
    got = {p["victim"]: p["bytes"] for p in nr["interference"]}
    steps = STEPS - 1 - WINDOW_START
    for j in (1, 2, 3):
        assert got[party(2, j)] == pytest.approx(steps * j * MiB, rel=0.1)


def test_workloads_gather_across_nodes(synth):
    rep = fleet_json(synth)
    callers = {w["workload"]: w["nodes"] for w in rep["worst_callers"]}
    assert callers == {"prod/app-0/c0": ["node-0000", "node-0001", "node-0002", "node-0003"]}
    loop = [f for f in rep["findings"] if f["id"] == "syncfs-flushes-others"]
    assert [(f["workloads"], len(f["nodes"])) for f in loop] == [(["prod/app-0/c0"], 4)]
    leak = [f for f in rep["findings"] if f["id"] == "error-leak"]
    assert [(f["workloads"], f["nodes"]) for f in leak] == \
        [(["prod/app-0/c0", "prod/app-1/c1"], ["node-0001"])]
    # the plan: presence, 13 window deltas, resets (a stall gate adds one)
    assert rep["source"]["queries"] == 15


@pytest.mark.parametrize("pod,owner", [
    ("web-7d9f8c6b4-x2k4q", "web"),             # Deployment
    ("fluentd-b2xkq", "fluentd"),               # DaemonSet
    ("db-0", "db"), ("db-12", "db"),            # StatefulSet
    ("static-pod-node1", "static-pod-node1"),   # anything else: the pod
])
def test_workload_from_pod_name(pod, owner):
    from ovltrace.fleet import workload_name
    labels = {"pod": pod, "namespace": "prod", "container": "app"}
    assert workload_name(labels) == f"prod/{owner}/app"
    assert workload_name({"container": "redis"}) == "redis"
    assert workload_name({"container": "", "comm": "sync"}) == "sync"


# ---- auth: a Prometheus behind TLS, client certificates and basic auth ----------

PASSWORD = "s3cret fleet"


@pytest.fixture(scope="module")
def secure(synth, tmp_path_factory):
    import shutil
    import ssl
    import urllib.request

    import bcrypt

    from conftest import make_pki
    d = tmp_path_factory.mktemp("secure")
    pki = make_pki(str(d))
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    web = d / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki['server.crt']}\n"
                   f"  key_file: {pki['server.key']}\n  client_ca_file: {pki['ca.crt']}\n"
                   f"  client_auth_type: RequireAndVerifyClientCert\n"
                   f"basic_auth_users:\n  admin: {hashed}\n")
    (d / "pw").write_text(PASSWORD + "\n")
    (d / "bad").write_text("wrong\n")
    cfg = d / "prometheus.yml"
    cfg.write_text("global: {scrape_interval: 1m}\n")
    shutil.copytree(synth["data_dir"], d / "data")
    port = free_port()
    proc = subprocess.Popen(["/usr/bin/prometheus", f"--config.file={cfg}",
                             f"--storage.tsdb.path={d / 'data'}", f"--web.config.file={web}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"https://127.0.0.1:{port}"
    ctx = ssl.create_default_context(cafile=pki["ca.crt"])
    ctx.load_cert_chain(pki["client.crt"], pki["client.key"])
    import base64
    auth = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    try:
        from exporter_helpers import wait_for

        def ready():
            assert proc.poll() is None, proc.stderr.read()
            req = urllib.request.Request(f"{url}/-/ready", headers={"Authorization": f"Basic {auth}"})
            return urllib.request.urlopen(req, context=ctx, timeout=5).read()
        wait_for(ready, 60, "the TLS prometheus ready")
        yield {**synth, "url": url, "pki": pki, "dir": d}
    finally:
        proc.terminate()
        proc.wait(30)


def test_tls_client_certificates_and_basic_auth(secure):
    pki, d = secure["pki"], secure["dir"]
    tls = ["--ca-file", pki["ca.crt"], "--cert-file", pki["client.crt"], "--key-file", pki["client.key"]]
    good = ["--basic-auth-user", "admin", "--basic-auth-password-file", str(d / "pw")]
    rep = fleet_json(secure, *tls, *good)
    assert len(rep["nodes"]) == 4 and rep["leaks"]
    # insecure-skip-verify: the server's certificate is not checked, the rest still applies
    rep = fleet_json(secure, "--insecure-skip-verify", "--cert-file", pki["client.crt"],
                     "--key-file", pki["client.key"], *good)
    assert len(rep["nodes"]) == 4

    def one_line(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "ovltrace.cli", "audit", "--prometheus",
                            secure["url"], *args], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        return lines[0]
    assert "access refused (HTTP 401)" in one_line(
        *tls, "--basic-auth-user", "admin", "--basic-auth-password-file", str(d / "bad"))
    assert "access refused (HTTP 401)" in one_line(*tls)
    assert "CERTIFICATE_VERIFY_FAILED" in one_line(*good)           # no CA: the server is unknown
    msg = one_line("--ca-file", pki["ca.crt"], *good)              # no client certificate
    assert msg.startswith(f"ovltrace: error: cannot reach Prometheus at {secure['url']}"), msg
    assert "cannot load the TLS files" in one_line("--ca-file", str(d / "pw"), *good)
    assert "give --bearer-token-file or --basic-auth-user, not both" in one_line(
        "--bearer-token-file", str(d / "pw"), *good)


def test_a_bearer_token_is_sent(tmp_path):
    """Prometheus itself takes no bearer tokens (proxies in front of it and
    Mimir/Thanos gateways do): a stand-in server records what arrives."""
    import http.server
    import threading
    seen = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(self.headers.get("Authorization"))
            body = b'{"status":"success","data":{"resultType":"vector","result":[]}}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    tok = tmp_path / "token"
    tok.write_text("abc.def\n")
    try:
        r = subprocess.run([sys.executable, "-m", "ovltrace.cli", "audit", "--prometheus",
                            f"http://127.0.0.1:{srv.server_port}", "--bearer-token-file", str(tok)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        srv.shutdown()
    assert seen == ["Bearer abc.def"]
    # an empty Prometheus: one line, exit 1
    assert r.returncode == 1 and r.stderr.startswith("ovltrace: error: no ovltrace series in"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
