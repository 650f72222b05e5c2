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


def test_man_pages_are_generated_from_the_cli():
    """Every command has its page, and every option its entry with its
    help text (not byte for byte: click's formatting of defaults moves
    between its releases, and `make docs` regenerates the pages)."""
    from ovltrace.cli import cli
    pages = sorted(p.name for p in (ROOT / "man").glob("*.8"))
    assert pages == sorted(["ovltrace.8", *(f"ovltrace-{c}.8" for c in cli.commands)])
    for page, cmd in [("ovltrace.8", cli), *((f"ovltrace-{n}.8", c) for n, c in cli.commands.items())]:
        text = " ".join((ROOT / "man" / page).read_text().replace("\\-", "-").split())
        for p in cmd.params:
            if getattr(p, "help", None):
                assert p.opts[-1] in text and " ".join(p.help.split())[:40] in text, (page, p.name)
    for page in pages:                      # groff's own warnings: none
        r = subprocess.run(["groff", "-man", "-ww", "-z", "-Tutf8", str(ROOT / "man" / page)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == "", (page, r.stderr)


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
