# ovltrace: everything a fresh Debian/Ubuntu machine needs, as root.
PY      ?= /usr/bin/python3
VENV    := .venv
STAMP   := $(VENV)/.setup-done
APT_PKGS := python3-bpfcc bpftool linux-libc-dev python3-venv python3-pip \
            e2fsprogs xfsprogs util-linux tmux bpftrace busybox-static

.PHONY: setup demo test test-vm bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	$(PY) -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/ovltrace demo

test: setup
	$(VENV)/bin/python -m pytest tests

test-vm: setup
	tests/vm/run

clean:
	rm -rf $(VENV) build *.egg-info
