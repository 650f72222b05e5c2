"""Shared by the exporter tests: the expressions of the dashboards and
rules, and a real Prometheus to scrape with."""
from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "dashboards"
RULES = DASHBOARD_DIR / "alerts.rules.yml"

# Grafana's variables, as a real dashboard would expand them for "All"
GRAFANA_VARS = {"$__rate_interval": "30s", "$__range": "5m", "$__interval": "15s",
                "$node": ".*", "$container": ".*"}


def expand(expr: str) -> str:
    for k in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(k, GRAFANA_VARS[k])
    return expr


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expanded expression) for every target of every dashboard,
    plus the template variables' label_values() metric selectors."""
    out = []
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        dash = json.loads(path.read_text())
        for p in dash["panels"]:
            for t in p.get("targets", []):
                out.append((f"{path.name}: {p['title']}", expand(t["expr"])))
    return out


def template_selectors() -> list[str]:
    out = []
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        for v in json.loads(path.read_text())["templating"]["list"]:
            if v["type"] == "query":
                m = re.match(r"label_values\((.*),\s*\w+\)$", v["query"]["query"])
                assert m, v["query"]
                out.append(expand(m.group(1)))
    return out


def rule_exprs() -> list[tuple[str, str]]:
    import yaml
    doc = yaml.safe_load(RULES.read_text())
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in doc["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bovltrace_[a-z0-9_]+", expr))


def get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def query(prom: str, expr: str) -> list:
    body = json.loads(get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def wait_for(pred, timeout: float, what: str):
    end, last = time.monotonic() + timeout, None
    while time.monotonic() < end:
        try:
            last = pred()
            if last:
                return last
        except (OSError, ValueError) as e:
            last = e
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {last}")


def start_prometheus(config: Path, storage: str, port: int) -> tuple[subprocess.Popen, str]:
    """Debian's Prometheus on 127.0.0.1:port, ready: (process, its URL).
    The caller terminates it."""
    proc = subprocess.Popen(
        ["/usr/bin/prometheus", f"--config.file={config}", f"--storage.tsdb.path={storage}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited {proc.returncode}: {proc.stderr.read()}")
        return get(f"{url}/-/ready")
    try:
        wait_for(ready, 60, "prometheus ready")
    except BaseException:
        proc.terminate()
        proc.wait(30)
        raise
    return proc, url
