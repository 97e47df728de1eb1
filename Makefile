# Two commands for a new user: `make demo` and `make test`. Both install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# Debian/Ubuntu packages: GStreamer and its introspection data, the broker the tests start, headers PyGObject
# builds against, and the GL/GLib libraries opencv-python loads.
APT_PACKAGES := python3-venv python3-dev pkg-config libgirepository1.0-dev libcairo2-dev \
	gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 mosquitto libgl1 libglib2.0-0

.PHONY: setup system-packages test lint demo bench clean

setup: system-packages $(VENV)/.installed

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: setup lint
	$(PY) -m pytest -q

# Until the edge service lands: train a small model on a real set, then evaluate it.
demo: setup
	$(PY) -m train_host train --config configs/train/demo.yaml --out runs/demo --fresh

bench: setup
	@echo "no benchmark yet"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs/demo
