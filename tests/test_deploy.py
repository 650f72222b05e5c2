"""The deployment files agree with each other and with the capabilities
ovltrace says it needs (ovltrace/privileges.py): one list, three places."""
from __future__ import annotations

import configparser

import yaml

from conftest import ROOT
from ovltrace.privileges import Host, needs


def unit_caps(key: str) -> set[str]:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read(ROOT / "deploy" / "ovltrace-exporter.service")
    return set(cp["Service"][key].split())


def daemonset() -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "daemonset.yaml").read_text()))
    pod = next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_one_capability_list():
    wanted = {c for n in needs(Host((6, 1))) for c in n.caps}
    assert wanted == {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}
    assert unit_caps("CapabilityBoundingSet") == unit_caps("AmbientCapabilities") == wanted
    _, c = daemonset()
    caps = c["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"] and {f"CAP_{x}" for x in caps["add"]} == wanted


def test_what_the_host_adds():
    assert needs(Host((5, 4)))[0].caps == ("CAP_SYS_ADMIN",)
    # Debian's and Ubuntu's perf_event_paranoid 3: perf events ask SYS_ADMIN
    assert [n.caps for n in needs(Host((6, 1), paranoid=3))][:2] == \
        [("CAP_BPF", "CAP_PERFMON"), ("CAP_SYS_ADMIN",)]
    # before 5.11, BPF maps count against RLIMIT_MEMLOCK
    assert ("CAP_SYS_RESOURCE",) in [n.caps for n in needs(Host((5, 10), 2, False))]
    assert ("CAP_SYS_RESOURCE",) not in [n.caps for n in needs(Host((5, 10), 2, True))]
    assert ("CAP_SYS_RESOURCE",) not in [n.caps for n in needs(Host((5, 11), 2, False))]


def test_the_pod_is_not_privileged_and_mounts_the_host_read_only():
    pod, c = daemonset()
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True and pod["hostPID"] is True
    assert "hostNetwork" not in pod
    vols = {v["name"]: v for v in pod["volumes"]}
    for m in c["volumeMounts"]:
        if "hostPath" in vols[m["name"]]:
            assert m.get("readOnly") is True, m


def _render_module():
    import importlib.machinery
    import importlib.util
    path = str(ROOT / "deploy" / "kustomize" / "render")
    loader = importlib.machinery.SourceFileLoader("ovltrace_render", path)
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(mod)
    return mod


def test_generated_files_are_current():
    """deploy/daemonset.yaml is `kubectl kustomize` of the base, the
    PrometheusRule is dashboards/alerts.rules.yml (run deploy/kustomize/render)."""
    render = _render_module()
    assert (ROOT / "deploy" / "daemonset.yaml").read_text() == render.daemonset()
    rule_file = ROOT / "deploy" / "kustomize" / "components" / "prometheusrule" / "prometheusrule.yaml"
    assert rule_file.read_text() == render.rule()
    rules = yaml.safe_load((ROOT / "dashboards" / "alerts.rules.yml").read_text())
    assert yaml.safe_load(rule_file.read_text())["spec"]["groups"] == rules["groups"]


def test_the_example_overlay_uses_every_component():
    import subprocess
    r = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy" / "kustomize" / "example")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(r.stdout)}
    assert set(docs) == {"Namespace", "DaemonSet", "PodMonitor", "PrometheusRule"}
    pod = docs["DaemonSet"]["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["image"] == "registry.example.com/ovltrace:0.1.0"
    assert c["args"].count("--web.config.file=/etc/ovltrace/web.yml") == 1
    assert "--top-n=50" in c["args"] and "--series-limit=10000" in c["args"]
    assert {"name": "web-config", "mountPath": "/etc/ovltrace", "readOnly": True} in c["volumeMounts"]
    assert {"name": "web-config", "secret": {"secretName": "ovltrace-web-config",
                                             "defaultMode": 0o400}} in pod["spec"]["volumes"]
    assert c["readinessProbe"]["httpGet"]["scheme"] == c["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert pod["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
    # the least privilege survives the overlay
    assert c["securityContext"]["capabilities"] == daemonset()[1]["securityContext"]["capabilities"]


def test_the_dashboard_imports_as_is():
    import json
    dash = json.loads((ROOT / "dashboards" / "ovltrace.json").read_text())
    assert dash["uid"] == "ovltrace-overview"
    assert [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert {json.dumps(p["datasource"]) for p in dash["panels"]} == \
        {'{"type": "prometheus", "uid": "${datasource}"}'}


def test_refusals_name_the_capability_and_the_fix():
    from ovltrace.privileges import tracing_refusal
    assert tracing_refusal(Host((6, 1)), {"CAP_BPF"}) == (
        "tracing needs CAP_PERFMON (missing; run as root, or grant CAP_BPF, CAP_PERFMON: "
        "see docs/deploy.md, Privileges)")
    assert tracing_refusal(Host((6, 1)), {"CAP_SYS_ADMIN"}) is None
    assert tracing_refusal(Host((6, 1), paranoid=3), {"CAP_BPF", "CAP_PERFMON"}) == (
        "tracing needs CAP_SYS_ADMIN here to open perf events (syscall tracepoints, kprobes) "
        "(missing; grant it, or sysctl kernel.perf_event_paranoid=2: see docs/deploy.md, Privileges)")
    assert tracing_refusal(Host((5, 10), 2, False), {"CAP_BPF", "CAP_PERFMON"}).startswith(
        "tracing needs CAP_SYS_RESOURCE here to raise RLIMIT_MEMLOCK for BPF maps (charged "
        "against it before 5.11) (missing;")
    # what only loses a feature does not stop tracing
    assert tracing_refusal(Host((6, 1)), {"CAP_BPF", "CAP_PERFMON"}) is None


def test_the_unit_passes_systemd_analyze(tmp_path):
    """No systemd runs as PID 1 on these machines: systemd's own parser is
    the check (an unknown key or a bad capability name would be warned
    about, and silently ignored by a real systemd)."""
    import subprocess
    unit = tmp_path / "ovltrace-exporter.service"
    unit.write_text((ROOT / "deploy" / "ovltrace-exporter.service").read_text()
                    .replace("/usr/local/bin/ovltrace", "/bin/true"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stderr == "" and r.stdout == "", r.stderr
    bad = tmp_path / "bad.service"
    bad.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    r = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert "Unknown key 'NoNewPrivilege'" in r.stderr
