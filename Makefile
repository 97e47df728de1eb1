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
	gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 mosquitto libgl1 libglib2.0-0 chromium

.PHONY: soak setup system-packages test lint demo bench clean install-service systemd-check

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

# The product end to end, under 15 minutes on two CPU cores: train and evaluate a small model (magnetic tile at
# 128 px, or synthetic parts the demo makes when ../shared/datasets is missing), export a signed INT8 bundle,
# start mosquitto and the edge service on a conveyor stream of labelled test parts, print every result as it
# arrives and a summary; overlays and summary.json land in runs/demo. A finished training run is reused:
# `make demo DEMO_ARGS=--fresh` trains again (`python -m demo_line demo --help` lists the options).
demo: setup
	$(PY) -m demo_line demo --out runs/demo $(DEMO_ARGS)

# Ten minutes of the demo model at full rate with the broker stopped twice for 60 s and the service killed
# (kill -9) once; checks that every result arrived exactly once, in order, one per inspected frame. Runs the
# demo first when it has not been run. Figures in runs/soak/soak.json (and docs/MQTT.md).
soak: setup
	@ls runs/demo/bundle/*.tar >/dev/null 2>&1 || $(PY) -m demo_line demo --out runs/demo
	$(PY) -m demo_line soak --demo runs/demo --out runs/soak $(SOAK_ARGS)

# Device benchmark at 256 px on magnetic_tile: trains the run first if it is missing (about 30 min on 2 cores),
# exports INT8, gated (auto) and FP32 bundles, then measures them, the gated bundle's memory-only mode and the torch
# FP32 baseline, and writes one comparison table (docs/bench/compare.md); then the service itself with the gated
# bundle for 90 s on a conveyor of the set's test parts, MQTT results and heatmaps on (docs/bench/service.json).
BENCH_RUN ?= runs/magnetic_tile
BENCH_DATA ?= ../shared/datasets/magnetic_tile
BENCH_IMAGES ?= $(BENCH_DATA)/test
BENCH_OUT ?= docs/bench
BENCH_KEY := keys/bench
# The run's bundles, exported again whenever the run was calibrated after them (so a new or retrained run is never
# measured through another run's bundles).
BENCH_BUNDLES = bundles/bench/$(notdir $(BENCH_RUN))
bench: setup
	@[ -f $(BENCH_RUN)/calibration.json ] || $(PY) -m train_host train --config configs/train/magnetic_tile.yaml --out $(BENCH_RUN) --no-evaluate
	@[ -f $(BENCH_KEY).pem ] || $(PY) -m export keygen --out $(BENCH_KEY)
	@mkdir -p $(BENCH_BUNDLES)
	@for p in int8 auto fp32; do \
		[ $(BENCH_BUNDLES)/$$p.tar -nt $(BENCH_RUN)/calibration.json ] || $(PY) -m export bundle --run $(BENCH_RUN) \
			--out $(BENCH_BUNDLES)/$$p.tar --sign-key $(BENCH_KEY).pem --model-version 0.0.0+bench.$$p --precision $$p \
			|| exit 1; \
		$(PY) -m edge_runtime bench --bundle $(BENCH_BUNDLES)/$$p.tar --trusted-key $(BENCH_KEY).pub.pem \
			--images $(BENCH_IMAGES) --out $(BENCH_OUT)/openvino-$$p.json || exit 1; \
	done
	$(PY) -m edge_runtime bench --bundle $(BENCH_BUNDLES)/auto.tar --trusted-key $(BENCH_KEY).pub.pem \
		--images $(BENCH_IMAGES) --memory-only --out $(BENCH_OUT)/openvino-memory-only.json
	$(PY) -m train_host bench --run $(BENCH_RUN) --images $(BENCH_IMAGES) --out $(BENCH_OUT)/torch-fp32.json
	$(PY) -m edge_runtime bench-compare $(BENCH_OUT)/openvino-auto.json $(BENCH_OUT)/openvino-int8.json \
		$(BENCH_OUT)/openvino-fp32.json $(BENCH_OUT)/openvino-memory-only.json $(BENCH_OUT)/torch-fp32.json \
		--out $(BENCH_OUT)/compare.md
	rm -rf runs/bench-service  # a fresh broker and state: an old outbox would publish its results again
	$(PY) -m demo_line soak --steady --duration 90 --camera-fps 60 --bundle $(BENCH_BUNDLES)/auto.tar \
		--trusted-key $(BENCH_KEY).pub.pem --images $(BENCH_DATA) --out runs/bench-service
	cp runs/bench-service/soak.json $(BENCH_OUT)/service.json

# On the device, once and as root: the systemd service d3ad-inspector (code and a venv without torch in
# /opt/d3ad-inspector, the unit, /etc/d3ad-inspector/inspector.yaml); systemd/README.md says what comes next.
install-service:
	PYTHON=$(PYTHON) $(SHELL) systemd/install-service.sh $(INSTALL_ARGS)

# The unit under a real systemd (root; about 50 s after training the tiny test model): boots systemd as PID 1 of its
# own namespaces, installs and starts the service, checks READY, the credential, the hardening and a watchdog
# restart (systemd/README.md, "Under a real systemd"). Not part of `make test`.
systemd-check: setup
	$(SUDO) env D3AD_SYSTEMD_BOOT=1 $(PY) -m pytest -q -rs tests/systemd/test_boot.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs/demo
