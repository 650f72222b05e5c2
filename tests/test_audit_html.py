"""The HTML report is one self-contained page that a real browser renders:
Debian's chromium, headless, takes a screenshot of it (apt: chromium)."""
from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def make_html(tmp_path: Path, name: str) -> Path:
    out = tmp_path / f"{name}.html"
    r = subprocess.run([sys.executable, "-m", "ovltrace.cli", "audit", "--from",
                        str(DATA / f"{name}.jsonl.gz"), "-o", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return out


def test_html_is_self_contained(tmp_path):
    html = make_html(tmp_path, "loss").read_text()
    # nothing fetched from anywhere: no external src/href, no scripts to run
    assert not re.search(r'(src|href)\s*=\s*"(https?:|//)', html)
    assert "<script>" not in html and 'type="application/json"' in html
    assert 'aria-label="interference heat map"' in html
    embedded = re.search(r'<script type="application/json" id="ovltrace-report">(.*?)</script>',
                         html, re.S).group(1)
    rep = json.loads(embedded.replace("<\\/", "</"))
    assert {f["id"] for f in rep["findings"]} >= {"error-leak", "silent-data-loss"}


@pytest.mark.parametrize("name", ["demo", "loss"])
def test_html_renders_in_headless_chromium(tmp_path, name):
    assert CHROMIUM, "chromium is not installed (apt-get install chromium)"
    page = make_html(tmp_path, name)
    png = tmp_path / f"{name}.png"
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}",
                        f"--screenshot={png}", "--window-size=1200,1600", page.as_uri()],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert png.exists(), r.stderr[-2000:]
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert (width, height) == (1200, 1600)
    # a rendered report, not a blank page: a blank PNG compresses to ~5 KB
    assert png.stat().st_size > 30_000
