"""The documentation stays true to the code: the metric reference is the
metric table's output, links resolve, the README stays a landing page,
and no text points at documents outside the repository."""
from __future__ import annotations

import re
import subprocess

from conftest import ROOT
from ovltrace.views.metrics import FAMILIES, LABEL_HELP, LABELS, label_names, reference

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_metric_reference_is_generated_from_the_table():
    assert (ROOT / "docs" / "metrics.md").read_text() == reference(), \
        "docs/metrics.md is stale: run `make docs`"


def test_every_family_and_label_is_described():
    assert set(FAMILIES) == set(LABELS)
    text = reference()
    for name in FAMILIES:
        assert f"`{name}`" in text
        for label in label_names(name):
            bare = re.sub(r"^(caller|victim|source)_", "", label)
            assert label in LABEL_HELP or bare in LABEL_HELP, (name, label)


def test_links_resolve():
    bad = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue                      # https:, mailto:
            if not (doc.parent / target).exists():
                bad.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not bad, bad


def test_readme_is_a_landing_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, len(lines)


def test_no_pointers_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    hits = [p for p in tracked if not p.startswith("tests/test_docs.py")
            and (ROOT / p).is_file() and b"KERNEL-NOTES" in (ROOT / p).read_bytes()]
    assert not hits, hits
