"""Plain-language findings, each backed by the report's numbers.

Input is the audit report dict (report/build.py build_report), so findings
work the same live and on a recording.  Each finding:
  {"id", "severity" (critical|warning|info), "containers", "title",
   "detail" (the numbers, in words), "advice", "evidence" {numbers}}
"""
from __future__ import annotations

from ..format import errno_name, human_bytes, human_seconds

MIN_LOOP_CALLS = 3             # syncfs calls before "in a loop"
OTHERS_SHARE = 0.5             # "mostly others' data"
STALL_NOTICE = 0.05            # seconds of others' waiting worth a finding
BIG_COPY_UP = 8 << 20          # average copy-up size worth a finding
LIFECYCLE_BYTES = 1 << 20      # a neighbour's bytes that starts/stops wrote back, worth a finding
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def _f(fid, severity, containers, title, detail, advice, **evidence) -> dict:
    return {"id": fid, "severity": severity, "containers": containers, "title": title,
            "detail": detail, "advice": advice, "evidence": evidence}


# How each runtime stops its container starts and stops from syncing the
# upper fs, and what that trades (docs/lifecycle.md).
VOLATILE_TRADE = ("the trade: after a host crash (not a clean stop) the containers' "
                  "writable layers may be corrupt and must be thrown away, which "
                  "throw-away containers can afford")
RUNTIME_ADVICE = {
    "docker": "Docker's overlay2 driver has no stable switch to mount volatile yet "
              "(moby/moby PR 50151 proposes one); until then the fix is the neighbour's",
    "containerd": "containerd: in config.toml, [plugins.\"io.containerd.snapshotter.v1.overlayfs\"] "
                  "mount_options = [\"volatile\"]; " + VOLATILE_TRADE,
    "podman": "Podman: in /etc/containers/storage.conf, [storage.options.overlay] "
              "mountopt = \"volatile\" (containers run with --rm already get it); " + VOLATILE_TRADE,
    "cri-o": "CRI-O: in /etc/containers/storage.conf, [storage.options.overlay] "
             "mountopt = \"volatile\"; " + VOLATILE_TRADE,
}
STEP_WORDS = {"create": "start", "unpack": "image unpack", "stop": "stop"}


def _lifecycle_findings(lc: dict) -> list[dict]:
    """One finding per neighbour whose dirty data container starts and
    stops paid for (not one per flush), with each runtime's own switch;
    and why volatile starts and stops paid nothing.  Reads only each
    neighbour's totals, which the fleet report gets from Prometheus too."""
    out = []
    events = lc.get("events", [])
    for n in lc.get("neighbours", []):
        if (n["seconds"] < STALL_NOTICE and n["bytes"] < LIFECYCLE_BYTES) or not n["events"]:
            continue
        steps = sorted({STEP_WORDS.get(s, s) for s in n["steps"]})
        runtimes, who = n["runtimes"], n["paid_by"]
        total = n["paid_by_others_seconds"]
        share = min(1.0, n["seconds"] / total) if total else 1.0
        advice = [RUNTIME_ADVICE[r] for r in runtimes if r in RUNTIME_ADVICE]
        advice.append(f"{n['name']} should write its data back steadily (fsync, or a lower "
                      "dirty limit through its memory limit) or write it to a volume, so "
                      "container starts and stops don't pay for it")
        out.append(_f(
            "lifecycle-paid-for-neighbour", "warning" if n["seconds"] >= 1 else "info",
            who + [n["name"]],
            f"{n['events']} container {'/'.join(steps)}{'s' if n['events'] > 1 else ''} paid "
            f"{human_seconds(n['seconds'])} writing back {n['name']}'s data",
            f"{', '.join(who[:5])}{' and others' if len(who) > 5 else ''} "
            f"({', '.join(runtimes)}) unmounted an overlay while starting or stopping, which "
            f"synced the whole upper fs: {human_bytes(n['bytes'])} of {n['name']}'s dirty data, "
            f"{human_seconds(n['seconds'])} of their wait ({share:.0%} of what they paid for "
            f"others' data).",
            "; ".join(advice) + ".",
            neighbour=n["name"], events=n["events"], bytes=n["bytes"], seconds=n["seconds"],
            runtimes=runtimes, steps=n["steps"]))
    volatile = [e for e in events if e["volatile"]]
    if volatile:
        names = sorted({e["container"] for e in volatile})
        out.append(_f(
            "lifecycle-volatile", "info", names,
            f"{len(volatile)} container start/stop unmount{'s' if len(volatile) > 1 else ''} "
            "synced nothing: their overlays are volatile",
            f"{', '.join(names[:5])}{' and others' if len(names) > 5 else ''} "
            "are mounted with 'volatile' (Podman does this for --rm containers), so their "
            "unmount skips the sync of the upper fs and pays for no neighbour's data.",
            "Nothing to do; note that a volatile container's writable layer is lost if the host "
            "crashes while it runs.",
            events=len(volatile)))
    return out


def findings(report: dict) -> list[dict]:
    out: list[dict] = []
    stalls = {s["name"]: s for s in report.get("stall_by_container", [])}
    overlays = {o["name"]: o for o in report.get("overlays", [])}

    # A syncfs loop whose calls mostly flush other containers' data.
    for s in stalls.values():
        calls, others, own = s["syncfs_calls"], s["others_bytes_flushed"], s["own_bytes_flushed"]
        total = others + own
        if calls >= MIN_LOOP_CALLS and total and others / total >= OTHERS_SHARE:
            share = others / total
            out.append(_f(
                "syncfs-flushes-others", "warning", [s["name"]],
                f"{s['name']} calls syncfs in a loop; its calls mostly flush other containers' data",
                f"{calls} syncfs calls wrote back {human_bytes(total)}, {share:.0%} of it "
                f"({human_bytes(others)}) other containers' data; they waited "
                f"{human_seconds(s['waited_on_others_seconds'])} on it.",
                "fsync() its own files instead of syncfs(); or, where durability is not "
                "needed, mount its overlay with 'volatile'.",
                syncfs_calls=calls, others_bytes=others, own_bytes=own, others_share=round(share, 3),
                waited_on_others_seconds=s["waited_on_others_seconds"]))

    # Dirty data that made others' flushes wait.
    for s in stalls.values():
        if s["made_others_wait_seconds"] >= STALL_NOTICE:
            out.append(_f(
                "dirty-data-stalls-others", "warning" if s["made_others_wait_seconds"] >= 1 else "info",
                [s["name"]],
                f"{s['name']}'s unflushed writes made other containers' flushes wait",
                f"{human_bytes(s['bytes_flushed_by_others'])} of its data was written back by others' "
                f"syncfs/sync/umount, which waited {human_seconds(s['made_others_wait_seconds'])} "
                f"on it.",
                "Write back its own data steadily (fsync, or a lower dirty limit via its memory "
                "limit) so neighbours' syncfs and container stops don't pay for it; or give it "
                "its own upper filesystem (a volume).",
                bytes_flushed_by_others=s["bytes_flushed_by_others"],
                made_others_wait_seconds=s["made_others_wait_seconds"]))

    out += _lifecycle_findings(report.get("lifecycle") or {})

    # Other unmounts that flushed everyone (no runtime owns the overlay).
    lc_names = {e["container"] for e in (report.get("lifecycle") or {}).get("events", [])}
    other = [f for f in report.get("worst_flushes", [])
             if f["kind"] == "umount" and f["others_bytes"] > 0 and f["caller"] not in lc_names]
    if other:
        callers = sorted({f["caller"] for f in other})
        secs = sum(f["duration_seconds"] for f in other)
        nbytes = sum(f["others_bytes"] for f in other)
        n = sum(f.get("flushes", 1) for f in other)     # the fleet's rows are per caller
        out.append(_f(
            "umount-flushed-others", "info", callers,
            f"{n} unmount{'s' if n > 1 else ''} flushed other containers' data",
            f"unmounting {', '.join(callers[:5])}{' and others' if len(callers) > 5 else ''} "
            f"took {human_seconds(secs)} and wrote back {human_bytes(nbytes)} of other "
            "containers' data.",
            "Unmounting an overlay syncs the whole upper fs; a volatile overlay skips that when "
            "its data is disposable.",
            unmounts=n, duration_seconds=round(secs, 6), others_bytes=nbytes))

    # Errors handed to the wrong container.
    for leak in report.get("leaks", []):
        out.append(_f(
            "error-leak", "critical", [leak["victim"], leak["source"]],
            f"{leak['victim']} was handed {errno_name(leak['errno'])} caused by {leak['source']}",
            f"{leak['call']}() in {leak['victim']} returned {errno_name(leak['errno'])}, but the "
            f"failed writeback was on {leak['source']}'s inodes; {leak['victim']}'s own writes "
            f"had no error.",
            f"Don't treat {leak['victim']}'s error as its own data loss; check {leak['source']}, "
            f"whose data was lost. Containers whose errors must not mix need separate upper "
            f"filesystems.",
            victim=leak["victim"], source=leak["source"], errno=leak["errno"],
            count=leak.get("count", 1)))

    for e in report.get("errors_by_container", []):
        if e["silent_loss"]:
            paths = [i["path"] for i in e["inodes"] if i.get("path")]
            # (the fleet report knows counts, not inodes)
            where = f" on {len(e['inodes'])} inode(s)" if e["inodes"] else ""
            out.append(_f(
                "silent-data-loss", "critical", [e["name"]],
                f"{e['name']} lost data and was never told",
                f"{e['writeback_errors']} writeback errors{where}"
                + (f" (e.g. {paths[0]})" if paths else "") + "; no syncfs/fsync of it returned "
                "an error.",
                f"{e['name']} must fsync() files it cares about and check the result; the "
                + ("files listed are" if e["inodes"] else "files it wrote since its last good "
                   "fsync may be") + " corrupt or incomplete on disk.",
                writeback_errors=e["writeback_errors"], inodes=len(e["inodes"]), paths=paths[:10]))

    # Neighbours of an error-prone container.
    bad = {e["name"]: e for e in report.get("errors_by_container", []) if e["writeback_errors"]}
    for name, e in bad.items():
        dev = overlays.get(name, {}).get("upper_dev")
        neighbours = sorted(n for n, o in overlays.items() if n != name and o.get("upper_dev") == dev)
        if neighbours and dev:
            out.append(_f(
                "shares-upper-with-errors", "warning", neighbours,
                f"sharing upper fs {dev} with error-prone {name}: {', '.join(neighbours)}",
                f"{name} had {e['writeback_errors']} writeback errors on {dev}; the syncfs of "
                f"any container on the same upper fs ({', '.join(neighbours)}) can return them.",
                "Move the error-prone container (or the others) to another upper filesystem, "
                "and fix the storage under it.",
                error_prone=name, upper_dev=dev, neighbours=neighbours,
                writeback_errors=e["writeback_errors"]))

    for o in report.get("overlays", []):
        n_err = max(o.get("writeback_errors", 0), bad.get(o["name"], {}).get("writeback_errors", 0))
        if "volatile" in o.get("options", []) and n_err:
            out.append(_f(
                "volatile-errors", "warning", [o["name"]],
                f"volatile overlay {o['name']} had writeback errors",
                f"{n_err} writeback errors on a volatile overlay; volatile skips sync, so "
                "nobody in it is told.",
                "Only keep volatile where the data is disposable; the overlay must be recreated "
                "after errors (overlayfs refuses to remount it).",
                writeback_errors=n_err))

    for h in report.get("copy_up_hotspots", []):
        if h["copy_ups"] and h["copy_up_bytes"] / h["copy_ups"] >= BIG_COPY_UP:
            out.append(_f(
                "big-copy-up", "info", [h["name"]],
                f"{h['name']} copied up big lower files",
                f"{h['copy_ups']} copy-up{'s' if h['copy_ups'] != 1 else ''}, "
                f"{human_bytes(h['copy_up_bytes'])} "
                f"({human_bytes(h['copy_up_bytes'] / h['copy_ups'])} each on average).",
                "Writing to a big image file copies all of it to the upper fs first: keep such "
                "files on a volume; metacopy=on avoids it for chmod/chown-only changes.",
                copy_ups=h["copy_ups"], copy_up_bytes=h["copy_up_bytes"]))

    gaps = [c for c in report.get("cgroup_accounting", {}).get("containers", []) if c.get("gap")]
    if gaps:
        by_reason: dict[str, list[dict]] = {}
        for c in gaps:
            by_reason.setdefault(c["gap"], []).append(c)
        detail = " ".join(
            f"{', '.join(c['name'] for c in cs)}: ovltrace saw "
            f"{human_bytes(sum(c['ovltrace_bytes_dirtied'] for c in cs))} dirtied and "
            f"{human_bytes(sum(c['ovltrace_bytes_written_back'] for c in cs))} written back, but "
            f"{reason}." for reason, cs in by_reason.items())
        out.append(_f(
            "cgroup-accounting-gap", "info", [c["name"] for c in gaps],
            f"cgroup accounting misses the overlay writeback of {len(gaps)} container(s)",
            detail,
            "Don't size or bill these containers' I/O from cgroup stats alone; use "
            "per-container numbers like these (see google/cadvisor#2378).",
            per_container=[{"name": c["name"], "ovltrace_bytes_dirtied": c["ovltrace_bytes_dirtied"],
                            "ovltrace_bytes_written_back": c["ovltrace_bytes_written_back"],
                            "reason": c["gap"]} for c in gaps]))

    out.sort(key=lambda f: SEVERITY_ORDER[f["severity"]])
    return out
