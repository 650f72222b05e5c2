# ovltrace: everything a fresh Debian/Ubuntu machine needs, as root.
#   make setup   ./.venv (distro python3 + system site packages for bcc)
#   make demo    sandbox containers + live audit
#   make test    every test: unit, live on this kernel, the mutation check
#                (planted bugs the suite must catch), a 2-minute soak
#                (churn, instant containers, an error storm: every container
#                exact), and the live tests again in Debian's 5.10, 6.1 and
#                6.12 kernels under QEMU, per hook mechanism (test-vm;
#                KERNELS="6.1" for fewer)
PY        ?= /usr/bin/python3
VENV      := .venv
# running: bcc, the uapi headers bcc compiles with, the venv, the web
# config's YAML and bcrypt, and what the demo's sandbox mounts with
APT_RUN   := python3-bpfcc linux-libc-dev python3-venv python3-pip \
             python3-yaml python3-bcrypt e2fsprogs util-linux
# testing and benchmarking only (the first three: the distro libraries
# `make install` uses, so its test installs nothing; xfsprogs: the xfs
# upper fs tests; groff-base: the man pages' check)
APT_TEST  := python3-click python3-tabulate python3-prometheus-client xfsprogs groff-base bpftool openssl mmdebstrap uidmap containerd systemd tmux bpftrace busybox-static docker.io podman runc prometheus chromium python3-yaml python3-jsonschema
APT_VM    := qemu-system-x86 kmod
# make install: the package and its BPF sources under LIBDIR, a launcher in
# PREFIX/bin (the path the systemd unit runs), the unit in UNITDIR; the
# Python libraries come from the distro (no pip, no venv, as in the image)
PREFIX    ?= /usr/local
LIBDIR    ?= /opt/ovltrace
UNITDIR   ?= /etc/systemd/system
MANDIR    ?= $(PREFIX)/share/man
APT_INSTALL := python3 python3-bpfcc linux-libc-dev python3-click python3-tabulate \
             python3-prometheus-client python3-yaml python3-bcrypt
# the kernels test-vm boots (Debian's, fetched into a cache, never installed)
KERNELS   ?= 5.10 6.1 6.12
export KERNELS

.PHONY: setup setup-test setup-vm install uninstall demo docs image test test-host test-vm mutate soak bench clean root

# everything here mounts filesystems or loads BPF: say so once, plainly
root:
	@[ "$$(id -u)" = 0 ] || { echo "make: needs root (it installs packages, mounts filesystems and loads BPF): sudo make $(MAKECMDGOALS)"; exit 1; }

# install the named Debian packages that are missing (apt-get update once)
define apt_missing
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	fi
endef

setup: root $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml
	$(call apt_missing,$(APT_RUN))
	$(PY) -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q -e .
	@touch $@

setup-test: setup
	$(call apt_missing,$(APT_TEST))
	@$(VENV)/bin/python -c "import pytest, hypothesis, jsonschema, yaml" 2>/dev/null || $(VENV)/bin/pip install -q -e '.[test]'

setup-vm: setup
	$(call apt_missing,$(APT_VM))
	@$(VENV)/bin/vng --version >/dev/null 2>&1 || $(VENV)/bin/pip install -q virtme-ng

install: root
	$(call apt_missing,$(APT_INSTALL))
	rm -rf $(LIBDIR)/ovltrace $(LIBDIR)/bpf
	install -d $(LIBDIR) $(PREFIX)/bin $(UNITDIR) $(MANDIR)/man8
	cp -r ovltrace bpf $(LIBDIR)/
	install -m 644 man/*.8 $(MANDIR)/man8/
	find $(LIBDIR) -name __pycache__ -prune -exec rm -rf {} +
	@# -I: neither the caller's directory nor PYTHONPATH can shadow the package
	printf '#!/usr/bin/python3 -I\nimport sys\nsys.path.insert(0, "%s")\nfrom ovltrace.cli import main\nsys.exit(main())\n' \
	  '$(LIBDIR)' > $(PREFIX)/bin/ovltrace
	chmod 755 $(PREFIX)/bin/ovltrace
	sed 's|/usr/local/bin/ovltrace|$(PREFIX)/bin/ovltrace|' deploy/ovltrace-exporter.service \
	  > $(UNITDIR)/ovltrace-exporter.service
	@[ -d /run/systemd/system ] && systemctl daemon-reload || true
	@$(PREFIX)/bin/ovltrace --version
	@echo "installed $(PREFIX)/bin/ovltrace; start the exporter: systemctl enable --now ovltrace-exporter"

uninstall: root
	@[ -d /run/systemd/system ] && systemctl disable --now ovltrace-exporter 2>/dev/null || true
	rm -rf $(LIBDIR) $(PREFIX)/bin/ovltrace $(UNITDIR)/ovltrace-exporter.service
	rm -f $(MANDIR)/man8/ovltrace.8 $(MANDIR)/man8/ovltrace-*.8
	@[ -d /run/systemd/system ] && systemctl daemon-reload || true

demo: setup
	$(VENV)/bin/ovltrace demo

# ovltrace:latest in podman (ENGINE=docker for docker; BASE=... for a
# registry's Debian image instead of one built here with mmdebstrap)
image: root
	$(call apt_missing,podman mmdebstrap)
	deploy/build-image

# and proves it left the host's kernels alone (test-vm boots cached ones)
test: root
	@tests/boot-fingerprint > .boot-before
	$(MAKE) test-host mutate soak test-vm
	@tests/boot-fingerprint | diff -u .boot-before - >&2 \
	  || { echo "make test: /boot or the installed kernel packages changed"; exit 1; }
	@rm -f .boot-before

# docs/metrics.md from the metric table, man/*.8 from the click
# definitions (a test fails when either is stale)
docs: setup
	$(VENV)/bin/python -m ovltrace.views.metrics > docs/metrics.md
	$(VENV)/bin/python man/generate

test-host: setup-test
	$(VENV)/bin/python -m pytest tests

mutate: setup-test
	$(VENV)/bin/python tests/mutate.py

# the CI-sized soak: exits 1 unless every container's bytes are exact and
# no writeback error lands on the wrong container (bench/soak for the full one)
soak: setup-test
	$(VENV)/bin/python bench/soak --minutes 2

test-vm: setup-test setup-vm
	tests/vm/run

bench: setup-test
	$(VENV)/bin/python bench/overhead

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
