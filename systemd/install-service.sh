#!/usr/bin/env bash
# Install the device runtime as the systemd service d3ad-inspector; run once as root (`sudo make install-service`),
# and again to update the code. See systemd/README.md.
#
#   install-service.sh [--root DIR] [--no-venv]
#
#   --root DIR  install below DIR instead of / (also: DESTDIR=DIR), e.g. to stage a package or an image;
#               no user is created, no ownership changed, systemctl is not called
#   --no-venv   copy code, unit and config only; do not create /opt/d3ad-inspector/venv (no pip, no network)
#
# Environment: PYTHON (default python3) makes the venv.
set -euo pipefail

SERVICE=d3ad-inspector
SERVICE_USER=d3ad
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${DESTDIR:-}
WITH_VENV=1
PYTHON=${PYTHON:-python3}

usage() {
    sed -n '5,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

fail() {
    echo "install-service: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || fail "--root needs a folder"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        --no-venv) WITH_VENV=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; fail "unknown argument: $1" ;;
    esac
done

ROOT=${ROOT%/}
STAGING=0
[ -n "$ROOT" ] && STAGING=1
if [ "$STAGING" = 0 ] && [ "$(id -u)" -ne 0 ]; then
    fail "must run as root (it creates the user $SERVICE_USER and writes /opt, /etc): sudo make install-service"
fi

PREFIX=/opt/$SERVICE
CONFIG_DIR=/etc/$SERVICE
UNIT_DIR=/etc/systemd/system

# A user of its own, without login or home; group video opens the cameras.
create_user() {
    if ! getent group video >/dev/null; then
        groupadd --system video
    fi
    if getent passwd "$SERVICE_USER" >/dev/null; then
        usermod --append --groups video "$SERVICE_USER"
        echo "user $SERVICE_USER exists"
    else
        useradd --system --user-group --groups video --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "$SERVICE service" "$SERVICE_USER"
        echo "created system user $SERVICE_USER (groups: $SERVICE_USER, video)"
    fi
}

# Only the device package and its build file: the host's training and export code stay off the device.
copy_code() {
    local source=$ROOT$PREFIX/src
    rm -rf "$source"
    install -d -m 0755 "$source"
    cp "$REPO/pyproject.toml" "$source/"
    cp -r "$REPO/edge_runtime" "$source/"
    find "$source" -name __pycache__ -type d -prune -exec rm -rf {} +
    install -m 0644 "$REPO/systemd/README.md" "$ROOT$PREFIX/README.md"
    echo "code in $ROOT$PREFIX/src"
}

# The venv's python links to the interpreter it was made from; ProtectHome=yes hides /root and /home from the
# service, so an interpreter there (pyenv, a user's own build) fails every start with status=203/EXEC.
check_interpreter() {
    local base
    base=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))') ||
        fail "cannot run $PYTHON"
    case "$base" in
        /root/* | /home/* | /run/user/*)
            fail "$PYTHON is $base, which the service cannot see (ProtectHome=yes); use the system's: PYTHON=/usr/bin/python3" ;;
    esac
}

# A venv with the device extra only (OpenVINO, hnswlib, paho-mqtt, PyGObject; no torch).
make_venv() {
    local venv=$ROOT$PREFIX/venv
    check_interpreter
    "$PYTHON" -m venv --clear "$venv" || fail "cannot create a venv with $PYTHON (Debian: apt install python3-venv)"
    if ! PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install -q --no-cache-dir "$ROOT$PREFIX/src[device]"; then
        echo "PyGObject builds against the system's GStreamer; on Debian/Ubuntu first run:" >&2
        echo "  apt install python3-dev pkg-config libgirepository1.0-dev libcairo2-dev gir1.2-gstreamer-1.0 \\" >&2
        echo "    gir1.2-gst-plugins-base-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good" >&2
        fail "pip install of the device package failed"
    fi
    "$venv/bin/python" -c "import edge_runtime.service.service" || fail "the installed runtime does not import"
    "$venv/bin/d3ad" --version >/dev/null || fail "the d3ad command was not installed in $venv/bin"
    echo "venv in $venv"
}

# The unit, and the template for one instance per camera (d3ad-inspector@NAME runs /etc/d3ad-inspector/NAME.yaml).
install_unit() {
    install -d -m 0755 "$ROOT$UNIT_DIR"
    install -m 0644 "$REPO/systemd/$SERVICE.service" "$ROOT$UNIT_DIR/$SERVICE.service"
    install -m 0644 "$REPO/systemd/$SERVICE@.service" "$ROOT$UNIT_DIR/$SERVICE@.service"
    echo "units in $ROOT$UNIT_DIR: $SERVICE.service, $SERVICE@.service (one instance per camera)"
}

# The site's config is installed once; later runs keep whatever the site made of it.
install_config() {
    local folder=$ROOT$CONFIG_DIR
    install -d -m 0750 "$folder"
    [ "$STAGING" = 1 ] || chown "root:$SERVICE_USER" "$folder"
    if [ -e "$folder/inspector.yaml" ]; then
        echo "kept the existing $folder/inspector.yaml"
        return
    fi
    install -m 0640 "$REPO/configs/runtime/site.yaml" "$folder/inspector.yaml"
    [ "$STAGING" = 1 ] || chown "root:$SERVICE_USER" "$folder/inspector.yaml"
    echo "config in $folder/inspector.yaml (from configs/runtime/site.yaml)"
}

systemd_running() {
    [ -d /run/systemd/system ] && command -v systemctl >/dev/null
}

enable_service() {
    if [ "$STAGING" = 1 ]; then
        echo "staged below $ROOT: on the target, run 'systemctl daemon-reload && systemctl enable $SERVICE'"
    elif systemd_running; then
        systemctl daemon-reload
        systemctl enable "$SERVICE.service"
        if systemctl is-active --quiet "$SERVICE.service"; then
            echo "$SERVICE is running the previous code: systemctl restart $SERVICE"
        fi
    else
        echo "systemd is not running here (a container or chroot?): the unit is installed but not enabled;"
        echo "on the device run 'systemctl daemon-reload && systemctl enable $SERVICE'"
    fi
}

next_steps() {
    cat <<EOF

Before the first start, put these files in place (names as in $CONFIG_DIR/inspector.yaml):
  $CONFIG_DIR/model.tar         the signed bundle          install -m 0640 -g $SERVICE_USER BUNDLE.tar $CONFIG_DIR/model.tar
  $CONFIG_DIR/signer.pub.pem    the key that signed it     install -m 0640 -g $SERVICE_USER KEY.pub.pem $CONFIG_DIR/signer.pub.pem
  $CONFIG_DIR/ca.pem            the broker's CA (TLS)      install -m 0640 -g $SERVICE_USER CA.pem $CONFIG_DIR/ca.pem
  $CONFIG_DIR/mqtt-password     the MQTT password, root only; systemd hands it to the service as a credential.
      Type it, then Enter and Ctrl-D:   install -m 0600 -o root -g root /dev/stdin $CONFIG_DIR/mqtt-password
Set the camera, broker and device id in $CONFIG_DIR/inspector.yaml, then check it:
  runuser -u $SERVICE_USER -- $PREFIX/venv/bin/d3ad validate-config $CONFIG_DIR/inspector.yaml
Start and watch it:
  systemctl start $SERVICE && systemctl status $SERVICE
  journalctl -u $SERVICE -f
More cameras on this device: one instance each (systemd/README.md, "One instance per camera").
EOF
}

[ "$STAGING" = 1 ] || create_user
copy_code
if [ "$WITH_VENV" = 1 ]; then
    make_venv
else
    echo "no venv made (--no-venv): $PREFIX/venv must be created before the service can start"
fi
install_unit
install_config
enable_service
next_steps
