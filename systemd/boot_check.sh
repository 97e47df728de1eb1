#!/usr/bin/env bash
# The unit under a real systemd: boots systemd as PID 1 of new PID, mount, network, UTS, IPC and cgroup namespaces
# over a throwaway overlay of this machine's root, installs d3ad-inspector.service with install-service.sh, runs it
# on a signed bundle against a GStreamer test camera and a password-protected mosquitto, and checks READY, the
# credential handover, the hardening and a watchdog restart of a stalled service. See systemd/README.md.
#
#   boot_check.sh --bundle TAR --key PUB.pem [--out DIR] [--python PYTHON] [--hold]
#
#   --bundle, --key  the signed bundle and the public key it is signed with
#   --out DIR        where summary.txt, journal.txt and the other evidence go (default: a new folder in /tmp)
#   --python PYTHON  a Python whose site-packages hold the device dependencies (OpenVINO, paho-mqtt, PyGObject...);
#                    mounted read-only into the box, since the box has no network for pip (default: python3)
#   --hold           keep the box after the checks, for a look inside, until DIR/hold is removed
#
# Exit status 0: every check passed; 1: a check failed (summary.txt says which); 77: this machine cannot boot
# systemd this way (the reason is printed). Needs root. Writes nothing outside --out: the box's writes land in a
# tmpfs that disappears with its mount namespace, and everything started is stopped on exit.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)
SYSTEMD=/lib/systemd/systemd
UNIT=d3ad-inspector.service
BOX_REPO=/usr/src/d3ad-inspector        # the repository, read-only in the box
BOX_DEPS=/opt/d3ad-check/site-packages   # the dependencies, read-only in the box
VENV=/opt/d3ad-inspector/venv
START_TIMEOUT_S=300
WATCHDOG_WAIT_S=240
WATCHDOG_S=30  # the unit's WatchdogSec=
READY_AT=0

# --- PID 1 of the box: mounts, then systemd -----------------------------------------------------------------

# Runs inside the new namespaces (called by unshare as `boot_check.sh __init WORK DEPS`).
init_box() {
    local work=$1 deps=$2 root=$1/root
    mount -t tmpfs -o mode=0755,size=4g d3ad-check "$work"
    mkdir -p "$work/upper" "$work/work" "$root"
    # Every write of the box lands in this tmpfs; the machine's root is only read.
    mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$root"
    mount -t proc proc "$root/proc"
    # Kernel settings read-only, as container managers do: systemd-sysctl would otherwise set the machine's
    # global fs.* and kernel.* values (its units skip themselves when /proc/sys is read-only).
    read_only_bind "$root/proc/sys" "$root/proc/sys"
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$root/sys/fs/cgroup"
    make_dev "$root"
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
    mkdir -p "$root$BOX_REPO" "$root$BOX_DEPS"
    read_only_bind "$REPO" "$root$BOX_REPO"
    read_only_bind "$deps" "$root$BOX_DEPS"
    echo d3ad-check >"$root/etc/hostname"
    hostname d3ad-check
    mkdir -p "$root/old-root"
    cd "$root"
    pivot_root . old-root
    umount -l /old-root
    rmdir /old-root
    # Shared propagation inside the box, as systemd sets up itself when it boots a machine but leaves to the
    # container manager in a container: credentials are mounted in a child namespace and propagate back.
    mount --make-rshared /
    # Without module loading and the clock, nothing in the box can change the machine (ProtectClock= and
    # ProtectKernelModules= then drop what the box does not have, which systemd accepts).
    exec env -i container=d3ad-check TERM=dumb \
        setpriv --bounding-set -sys_module,-sys_time "$SYSTEMD" --unit=basic.target
}

read_only_bind() {
    mount --bind "$1" "$2"
    mount -o remount,bind,ro "$2"
}

# A private /dev with the pseudo devices only; /dev/console is the file the host collects as console.log.
make_dev() {
    local root=$1 node
    mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
    for node in null zero full random urandom tty; do
        touch "$root/dev/$node"
        mount --bind "/dev/$node" "$root/dev/$node"
    done
    mkdir -p "$root/dev/pts" "$root/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
    ln -s pts/ptmx "$root/dev/ptmx"
    touch "$root/dev/console"
    mount --bind /proc/self/fd/1 "$root/dev/console"
}

if [ "${1:-}" = __init ]; then
    init_box "$2" "$3"
fi

# --- the host side ------------------------------------------------------------------------------------------

BUNDLE=""
KEY=""
OUT=""
PYTHON=${PYTHON:-python3}
WORK=""
CGROUP=""
UNSHARE_PID=""
BOX_PID=""
FAILED=0
HOLD=0

usage() {
    sed -n '7,13s/^# \{0,1\}//p' "$SELF"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --bundle) BUNDLE=$2; shift 2 ;;
        --key) KEY=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --python) PYTHON=$2; shift 2 ;;
        --hold) HOLD=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; echo "boot_check: unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -f "$BUNDLE" ] && [ -f "$KEY" ] || { usage >&2; echo "boot_check: --bundle and --key must name files" >&2; exit 2; }

cannot_run() {
    echo "boot_check: cannot boot systemd here: $*" >&2
    exit 77
}

# Why this machine cannot run the check, or nothing.
check_machine() {
    [ "$(id -u)" -eq 0 ] || cannot_run "not root (namespaces, mounts and the service user need root)"
    local tool
    for tool in unshare nsenter pivot_root setpriv mosquitto mosquitto_passwd; do
        command -v "$tool" >/dev/null || cannot_run "$tool is not installed"
    done
    [ -x "$SYSTEMD" ] || cannot_run "$SYSTEMD is not installed"
    [ -n "$(cgroup2_mount)" ] || cannot_run "no cgroup2 hierarchy is mounted (systemd needs the unified hierarchy)"
    grep -qw overlay /proc/filesystems || cannot_run "the kernel has no overlayfs (or its module is not loaded)"
    unshare --pid --fork --mount --net --cgroup true 2>/dev/null || cannot_run "unshare of PID/mount/net/cgroup namespaces is refused"
}

cgroup2_mount() {
    findmnt -n -o TARGET -t cgroup2 | head -n 1
}

dependencies() {
    "$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

python_version() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'
}

cleanup() {
    local status=$?
    set +e
    if [ -n "$BOX_PID" ] && kill -0 "$BOX_PID" 2>/dev/null; then
        save_evidence
        hold_box
        in_box systemctl poweroff --no-block >/dev/null 2>&1
        for _ in $(seq 30); do kill -0 "$BOX_PID" 2>/dev/null || break; sleep 1; done
        # Killing PID 1 of a PID namespace kills everything in it; its mounts go with the namespace.
        kill -0 "$BOX_PID" 2>/dev/null && kill -KILL "$BOX_PID"
    fi
    [ -n "$UNSHARE_PID" ] && wait "$UNSHARE_PID" 2>/dev/null
    if [ -n "$CGROUP" ] && [ -d "$CGROUP" ]; then
        find "$CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null
    fi
    [ -n "$WORK" ] && rm -rf "$WORK"
    exit "$status"
}

# --hold: keep the box for a look inside until $OUT/hold is removed.
hold_box() {
    [ "$HOLD" = 1 ] || return 0
    touch "$OUT/hold"
    echo "box held: nsenter --target $BOX_PID --all; rm $OUT/hold ends it" >&2
    while [ -e "$OUT/hold" ]; do sleep 1; done
}

# A command in the box, with the box's own PATH (not this shell's, which may name interpreters in /root).
in_box() {
    nsenter --target "$BOX_PID" --all -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}

note() {
    echo "$1=$2" >>"$OUT/summary.txt"
    echo "  $1=$2"
}

expect() {
    local name=$1 seen=$2 wanted=$3
    if [ "$seen" = "$wanted" ]; then
        echo "  ok: $name = $seen"
    else
        echo "  FAILED: $name = '$seen', expected '$wanted'"
        echo "failed=$name" >>"$OUT/summary.txt"
        FAILED=1
    fi
}

show() {
    in_box systemctl show "$UNIT" --value -p "$1"
}

boot() {
    CGROUP=$(cgroup2_mount)/d3ad-boot-check.$$
    mkdir "$CGROUP"
    # The box's own cgroup subtree: systemd in it manages only what lies below, and it is removed afterwards.
    # Should this script be killed outright (no cleanup), unshare dies with it and takes the box along.
    (
        echo "$BASHPID" >"$CGROUP/cgroup.procs"
        exec setpriv --pdeathsig KILL unshare --pid --fork --kill-child=KILL --mount --uts --ipc --net --cgroup \
            --propagation private -- "$SELF" __init "$WORK/box" "$DEPS"
    ) >"$OUT/console.log" 2>&1 </dev/null &
    UNSHARE_PID=$!
    for _ in $(seq 50); do
        BOX_PID=$(cat "/proc/$UNSHARE_PID/task/$UNSHARE_PID/children" 2>/dev/null | awk '{print $1}')
        [ -n "$BOX_PID" ] && [ "$(cat "/proc/$BOX_PID/comm" 2>/dev/null)" = systemd ] && break
        BOX_PID=""
        sleep 0.2
    done
    [ -n "$BOX_PID" ] || { cat "$OUT/console.log" >&2; cannot_run "systemd did not start as PID 1 of the box"; }
    local state=""
    for _ in $(seq 60); do
        state=$(in_box systemctl is-system-running 2>/dev/null) || true
        case "$state" in running | degraded) break ;; esac
        sleep 1
    done
    note systemd "$(in_box systemctl --version | head -n 1)"
    note virtualization "$(in_box systemd-detect-virt || true)"
    note system_state "$state"
    note pid1 "$(in_box cat /proc/1/comm)"
}

# The install script as on a device, then the venv it would build, from the mounted dependencies (no network).
install_service() {
    in_box bash "$BOX_REPO/systemd/install-service.sh" --no-venv >"$OUT/install.log" 2>&1
    local version
    version=$(python_version "$PYTHON")
    [ "$(in_box python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$version" ] ||
        cannot_run "the box's python3 is not Python $version, which the dependencies of $PYTHON are built for"
    in_box python3 -m venv --without-pip "$VENV"
    echo "$BOX_DEPS" | in_box tee "$VENV/lib/python$version/site-packages/d3ad-check-deps.pth" >/dev/null
    in_box env PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q --no-deps --no-index \
        --no-build-isolation /opt/d3ad-inspector/src >>"$OUT/install.log" 2>&1
    in_box "$VENV/bin/d3ad" --version >>"$OUT/install.log"
    note unit_enabled "$(in_box systemctl is-enabled "$UNIT")"
}

# The files an operator places (install-service.sh's list), and the site config with a test camera and a local
# broker in place of the site's.
place_files() {
    in_box install -m 0640 -g d3ad /dev/stdin /etc/d3ad-inspector/model.tar <"$BUNDLE"
    in_box install -m 0640 -g d3ad /dev/stdin /etc/d3ad-inspector/signer.pub.pem <"$KEY"
    printf '%s\n' "$PASSWORD" | in_box install -m 0600 -o root -g root /dev/stdin /etc/d3ad-inspector/mqtt-password
    in_box "$VENV/bin/python" - <<'EOF'
import yaml
path = "/etc/d3ad-inspector/inspector.yaml"
config = yaml.safe_load(open(path))
config["camera"]["pipeline"] = "videotestsrc pattern=ball is-live=true ! video/x-raw,width=320,height=240,framerate=5/1"
config["mqtt"].update(host="127.0.0.1", port=1883, device_id="boot-check")
del config["mqtt"]["tls"]  # a broker on the box's loopback; the site's is TLS
config["openvino"]["threads"] = 1
open(path, "w").write(yaml.safe_dump(config, sort_keys=False))
EOF
}

start_broker() {
    in_box mosquitto_passwd -c -b /etc/mosquitto/d3ad-check.passwd line1-cam1 "$PASSWORD"
    in_box mosquitto_passwd -b /etc/mosquitto/d3ad-check.passwd checker "$PASSWORD-checker"
    in_box chown mosquitto:mosquitto /etc/mosquitto/d3ad-check.passwd
    in_box chmod 0600 /etc/mosquitto/d3ad-check.passwd
    in_box tee /etc/mosquitto/conf.d/d3ad-check.conf >/dev/null <<'EOF'
listener 1883 127.0.0.1
allow_anonymous false
password_file /etc/mosquitto/d3ad-check.passwd
log_dest stderr
connection_messages true
EOF
    in_box systemctl start mosquitto.service
    note broker_state "$(in_box systemctl show mosquitto.service --value -p ActiveState)"
}

# Results received on the broker in `seconds`, logged in as the second user.
count_results() {
    in_box "$VENV/bin/python" - "$1" "$PASSWORD-checker" <<'EOF'
import sys, time
import paho.mqtt.client as mqtt
seconds, password = float(sys.argv[1]), sys.argv[2]
received = []
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="boot-check-subscriber")
client.username_pw_set("checker", password)
client.on_connect = lambda c, *_: c.subscribe("d3ad/boot-check/result", qos=1)
client.on_message = lambda c, u, message: received.append(message.topic)
client.connect("127.0.0.1", 1883)
client.loop_start()
time.sleep(seconds)
client.loop_stop()
print(len(received))
EOF
}

start_service() {
    local started=$SECONDS
    timeout "$START_TIMEOUT_S" nsenter --target "$BOX_PID" --all -- /usr/bin/systemctl start "$UNIT" || true
    READY_AT=$SECONDS
    note start_seconds "$((READY_AT - started))"
    note ready_state "$(show ActiveState)/$(show SubState)"
    note status_text "$(show StatusText)"
    note watchdog_usec "$(show WatchdogUSec)"
    MAIN_PID=$(show MainPID)
    note main_pid "$MAIN_PID"
    note ready_journal "$(in_box journalctl -u "$UNIT" -o cat --no-pager | grep -m 1 'Started d3ad-inspector' || true)"
}

check_credential() {
    local folder environ
    folder=$(in_box cat "/proc/$MAIN_PID/environ" | tr '\0' '\n' | sed -n 's/^CREDENTIALS_DIRECTORY=//p')
    note credentials_directory "$folder"
    note credential_file "$(in_box stat -c '%n %U:%G %a' "$folder/mqtt-password" 2>&1)"
    note credential_matches "$(in_box cat "$folder/mqtt-password" 2>/dev/null | head -n 1 | grep -qxF "$PASSWORD" && echo yes || echo no)"
    environ=$(in_box cat "/proc/$MAIN_PID/environ" | tr '\0' '\n')
    note password_in_environment "$(grep -qF "$PASSWORD" <<<"$environ" && echo yes || echo no)"
    note user_reads_password_file "$(in_box runuser -u d3ad -- cat /etc/d3ad-inspector/mqtt-password >/dev/null 2>&1 && echo yes || echo no)"
    note service_connected "$(in_box journalctl -u "$UNIT" -o cat --no-pager | grep -m 1 'connected to 127.0.0.1:1883' || true)"
    note broker_login "$(in_box journalctl -u mosquitto.service -o cat --no-pager | grep -m 1 "u'line1-cam1'" || true)"
    note results_in_10s "$(count_results 10)"
}

check_hardening() {
    local status
    status=$(in_box cat "/proc/$MAIN_PID/status")
    note process_user "$(in_box ps -o user= -p "$MAIN_PID")"
    note cap_eff "$(awk '/^CapEff/ {print $2}' <<<"$status")"
    note cap_bnd "$(awk '/^CapBnd/ {print $2}' <<<"$status")"
    note no_new_privs "$(awk '/^NoNewPrivs/ {print $2}' <<<"$status")"
    note seccomp "$(awk '/^Seccomp:/ {print $2}' <<<"$status")"
    note root_read_only "$(in_box nsenter --target "$MAIN_PID" --mount -- sh -c 'touch /opt/x 2>&1 || true' | grep -c 'Read-only' || true)"
    note device_camera "$(camera_probe)"
    note device_other "$(device_probe 240)"
    note security_exposure "$(in_box systemd-analyze security "$UNIT" --no-pager | sed -n 's/.*Overall exposure level for [^:]*: //p')"
    in_box systemd-analyze security "$UNIT" --no-pager >"$OUT/security.txt" 2>&1 || true
    note unit_warnings "$(in_box journalctl -b -p warning -o cat --no-pager | grep -ci 'd3ad-inspector' || true)"
}

# DevicePolicy=closed: a process in the service's cgroup opens a device node of the given major number, 0 minor.
# Major 240 has no driver; the policy must refuse it ("Operation not permitted") before the kernel would say "No such
# device or address".
device_probe() {
    local node=/dev/d3ad-check-$1 procs=/sys/fs/cgroup/system.slice/$UNIT/cgroup.procs
    in_box mknod -m 0666 "$node" c "$1" 0
    in_box sh -c 'echo $$ >"$1" && exec 2>&1 && exec 3<"$2" && echo opened' sh "$procs" "$node" | sed 's/.*: //'
    in_box rm -f "$node"
}

# DeviceAllow=char-video4linux is looked up in /proc/devices when the service starts: a kernel without the
# video4linux driver has no major number for it, and then no camera can be allowed, nor this rule checked.
camera_probe() {
    local major
    major=$(awk '$2 == "video4linux" {print $1}' /proc/devices)
    if [ -z "$major" ]; then
        echo "untestable: the kernel has no video4linux driver (/proc/devices)"
    else
        device_probe "$major" | sed 's/^opened$/allowed/; s/^No such device or address$/allowed/'
    fi
}

# Stall the service (SIGSTOP: no frame, no WATCHDOG=1) and wait for systemd to kill and restart it.
check_watchdog() {
    local before stopped state="" fed_for=$((WATCHDOG_S + 10))
    # First the service as it is: fed by its frame loop, it outlives WatchdogSec without a restart.
    while [ $((SECONDS - READY_AT)) -lt "$fed_for" ]; do sleep 1; done
    note running_after_${fed_for}s "$(show NRestarts) $(show ActiveState)/$(show SubState) $(show MainPID)"
    before=$(show NRestarts)
    note restarts_before "$before"
    in_box kill -STOP "$MAIN_PID"
    stopped=$SECONDS
    for _ in $(seq "$WATCHDOG_WAIT_S"); do
        sleep 1
        state="$(show NRestarts) $(show ActiveState)/$(show SubState) $(show MainPID)"
        [ "${state%% *}" -gt "$before" ] && [[ "$state" == *" active/running "* ]] && break
    done
    note restart_seconds "$((SECONDS - stopped))"
    note restarts_after "$(show NRestarts)"
    note restart_state "$(show ActiveState)/$(show SubState)"
    note new_main_pid "$(show MainPID)"
    note watchdog_journal "$(in_box journalctl -u "$UNIT" -o cat --no-pager | grep -m 1 'Watchdog timeout' || true)"
    note watchdog_kill_journal "$(in_box journalctl -u "$UNIT" -o cat --no-pager | grep -m 1 'Killing process' || true)"
    note restart_journal "$(in_box journalctl -u "$UNIT" -o cat --no-pager | grep -m 1 'Scheduled restart job' || true)"
}

stop_service() {
    in_box systemctl stop "$UNIT" || true
    note stop_result "$(show Result)/$(show ActiveState)"
}

save_evidence() {
    in_box journalctl -u "$UNIT" -u mosquitto.service -o short-monotonic --no-pager >"$OUT/journal.txt" 2>&1 || true
    in_box journalctl -b -o short-monotonic --no-pager >"$OUT/journal-all.txt" 2>&1 || true
}

judge() {
    echo "checks:"
    expect system_state "$(sed -n 's/^system_state=//p' "$OUT/summary.txt")" running
    expect ready_state "$(sed -n 's/^ready_state=//p' "$OUT/summary.txt")" active/running
    expect credential_matches "$(sed -n 's/^credential_matches=//p' "$OUT/summary.txt")" yes
    expect user_reads_password_file "$(sed -n 's/^user_reads_password_file=//p' "$OUT/summary.txt")" no
    expect password_in_environment "$(sed -n 's/^password_in_environment=//p' "$OUT/summary.txt")" no
    expect broker_login "$(grep -c "^broker_login=.*u'line1-cam1'" "$OUT/summary.txt")" 1
    expect results_arrive "$(awk -F= '/^results_in_10s=/ {print ($2 > 0)}' "$OUT/summary.txt")" 1
    expect process_user "$(sed -n 's/^process_user=//p' "$OUT/summary.txt")" d3ad
    expect cap_eff "$(sed -n 's/^cap_eff=//p' "$OUT/summary.txt")" 0000000000000000
    expect no_new_privs "$(sed -n 's/^no_new_privs=//p' "$OUT/summary.txt")" 1
    expect seccomp "$(sed -n 's/^seccomp=//p' "$OUT/summary.txt")" 2
    if ! grep -q '^device_camera=untestable' "$OUT/summary.txt"; then
        expect device_camera "$(sed -n 's/^device_camera=//p' "$OUT/summary.txt")" allowed
    fi
    expect device_other "$(sed -n 's/^device_other=//p' "$OUT/summary.txt")" "Operation not permitted"
    expect unit_warnings "$(sed -n 's/^unit_warnings=//p' "$OUT/summary.txt")" 0
    expect fed_watchdog "$(sed -n 's/^running_after_[0-9]*s=//p' "$OUT/summary.txt")" "0 active/running $MAIN_PID"
    expect watchdog_timeout "$(grep -c '^watchdog_journal=.*Watchdog timeout' "$OUT/summary.txt")" 1
    expect restarted_once "$(sed -n 's/^restarts_after=//p' "$OUT/summary.txt")" 1
    expect restart_state "$(sed -n 's/^restart_state=//p' "$OUT/summary.txt")" active/running
    expect stop_result "$(sed -n 's/^stop_result=//p' "$OUT/summary.txt")" success/inactive
}

main() {
    check_machine
    OUT=${OUT:-$(mktemp -d /tmp/d3ad-boot-check.XXXXXX)}
    mkdir -p "$OUT"
    : >"$OUT/summary.txt"
    WORK=$(mktemp -d /tmp/d3ad-boot-box.XXXXXX)
    mkdir -p "$WORK/box"
    DEPS=$(dependencies)
    PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    echo "booting systemd in a box (evidence in $OUT):"
    boot
    echo "installing and starting $UNIT:"
    install_service
    place_files
    start_broker
    start_service
    echo "credential:"
    check_credential
    echo "hardening:"
    check_hardening
    echo "watchdog (the service is stopped with SIGSTOP; WatchdogSec=$(show WatchdogUSec)):"
    check_watchdog
    stop_service
    judge
    echo "evidence: $OUT (summary.txt, journal.txt, security.txt)"
    return "$FAILED"
}

main
