"""--fail-on: turn a report into an exit status for CI and cron."""
from __future__ import annotations

import re

from ..format import human_seconds, parse_duration


class GateError(ValueError):
    """A --fail-on value that is not a list of gates."""


GATE_CODES = {"leak": 4, "silent-loss": 8, "stall": 16}
_STALL_RE = re.compile(r"^stall>(.+)$")


def parse_fail_on(text: str | None) -> dict:
    """'leak,silent-loss,stall>2s' -> {"leak": True, "silent-loss": True, "stall": 2.0}."""
    gates: dict = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        m = _STALL_RE.match(part)
        if m:
            try:
                gates["stall"] = parse_duration(m.group(1))
            except ValueError as e:
                raise GateError(f"{part!r}: {e}") from None
        elif part in ("leak", "silent-loss"):
            gates[part] = True
        else:
            raise GateError(f"unknown gate {part!r} (leak, silent-loss, stall>DURATION)")
    return gates


def check_gates(report: dict, gates: dict) -> tuple[int, list[str]]:
    """Exit code (sum of the tripped gates' codes) and one line per gate."""
    code, why = 0, []
    if gates.get("leak") and report["leaks"]:
        code |= GATE_CODES["leak"]
        why.append(f"leak: {len(report['leaks'])} error(s) handed to a container that did not cause them")
    if gates.get("silent-loss") and report["silent_losses"]:
        code |= GATE_CODES["silent-loss"]
        names = [l["name"] for l in report["silent_losses"]]
        why.append(f"silent-loss: {', '.join(names)} lost data and was never told")
    if "stall" in gates:
        bad = [f for f in report["worst_flushes"]
               if f["others_bytes"] > 0 and f["duration_seconds"] > gates["stall"]]
        if bad:
            code |= GATE_CODES["stall"]
            why.append(f"stall: {len(bad)} flush(es) over {human_seconds(gates['stall'])} that "
                       f"wrote back other containers' data (worst {bad[0]['caller']} "
                       f"{human_seconds(bad[0]['duration_seconds'])})")
    return code, why


