#!/usr/bin/env bash
# The packaging test (a CI step: it installs the .deb on this machine, so it needs root, and
# it purges the package again at the end). Builds the packages, checks them (lintian, rpm
# queries, the units with systemd-analyze), installs the .deb with dpkg, starts the
# installed daemon as the `orchard` user exactly as the unit's ExecStart would (there is no
# systemd as PID 1 here; a socket of ours plays NOTIFY_SOCKET), logs in over HTTPS with the
# initial admin password, checks the simulator plugin came from /usr/lib/orchard/plugins,
# reinstalls (upgrade) and checks the data survived, removes, purges and checks it is gone.
#
#   packaging/test.sh            build, then test
#   packaging/test.sh --no-build test the packages already in target/packages/
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

MAX_EXPOSURE=2.0
PORT=8443 # the packaged config's http.listen
STATE=/var/lib/orchard

step() { printf '\n== %s\n' "$*"; }
fail() {
    echo "packaging test FAILED: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || fail "must run as root (it installs the package)"
if dpkg-query -W -f='${Status}' orchard 2>/dev/null | grep -q installed; then
    fail "a package orchard is already installed here; not touching it"
fi
[ ! -e "$STATE" ] || fail "$STATE exists already; not touching it"

work=$(mktemp -d /tmp/orchard-pkgtest.XXXXXX)
daemon_pid=
listener_pid=
installed=
cleanup() {
    status=$?
    [ -z "$daemon_pid" ] || kill "$daemon_pid" 2>/dev/null || true
    [ -z "$listener_pid" ] || kill "$listener_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    if [ -n "$installed" ]; then
        dpkg --purge orchard >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

if [ "${1:-}" != "--no-build" ]; then
    step "build"
    packaging/build.sh
fi
deb=$(ls target/packages/orchard_*.deb)
rpm=$(ls target/packages/orchard-[0-9]*.rpm)

# ----- the .deb -----
step "lintian $deb"
lintian --fail-on error --info "$deb"

step "deb contents"
dpkg-deb --info "$deb"
dpkg-deb --contents "$deb" | tee "$work/deb.list"
for f in ./usr/bin/orchard ./usr/lib/orchard/plugins/liborchard_plugin_simulator.so \
    ./etc/orchard/orchard.toml ./usr/share/man/man1/orchard.1.gz \
    /systemd/system/orchard.service /systemd/system/orchard-agent.service; do
    grep -q -- "$f\$" "$work/deb.list" || fail "$f is not in the .deb"
done
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/orchard/orchard.toml ||
    fail "/etc/orchard/orchard.toml is not a conffile"

# ----- the .rpm -----
step "rpm -qip $rpm"
rpm -qip "$rpm"
step "rpm -qlp"
rpm -qlp "$rpm" | tee "$work/rpm.list"
for f in /usr/bin/orchard /usr/lib/orchard/plugins/liborchard_plugin_simulator.so \
    /etc/orchard/orchard.toml /usr/lib/systemd/system/orchard.service \
    /usr/lib/systemd/system/orchard-agent.service /usr/share/man/man1/orchard.1; do
    grep -qx -- "$f" "$work/rpm.list" || fail "$f is not in the .rpm"
done
rpm -qcp "$rpm" | grep -qx /etc/orchard/orchard.toml || fail "orchard.toml is not %config in the .rpm"
step "rpm -qp --requires"
rpm -qp --requires "$rpm" | tee "$work/rpm.requires"
for r in /usr/sbin/useradd 'libc.so.6()(64bit)'; do
    grep -q -- "^$r" "$work/rpm.requires" || fail "the .rpm does not require $r"
done
if grep -Eq 'libvirt|docker' "$work/rpm.requires"; then
    fail "the orchard .rpm must not depend on libvirt or docker"
fi
rpm -qp --scripts "$rpm" | grep -q useradd || fail "the .rpm does not create the orchard user"

# ----- the plugins' own packages -----
# check_plugin NAME DEB_DEPENDS RPM_REQUIRES: each package holds its library, depends on
# orchard and on what it links (a regex), and the orchard .deb does not carry it.
check_plugin() {
    local name=$1 deb_needs=$2 rpm_needs=$3 pdeb prpm so depends
    pdeb=$(ls target/packages/orchard-plugin-"$name"_*.deb)
    prpm=$(ls target/packages/orchard-plugin-"$name"-[0-9]*.rpm)
    so=liborchard_plugin_$name.so
    step "lintian $pdeb"
    lintian --fail-on error --info "$pdeb"
    dpkg-deb --contents "$pdeb" | grep -q -- "usr/lib/orchard/plugins/$so\$" ||
        fail "the $name plugin .deb does not hold the plugin"
    depends=$(dpkg-deb --field "$pdeb" Depends)
    echo "Depends: $depends"
    for d in orchard $deb_needs; do
        grep -q -- "$d" <<<"$depends" || fail "the $name plugin .deb does not depend on $d"
    done
    rpm -qlp "$prpm" | grep -qx "/usr/lib/orchard/plugins/$so" ||
        fail "the $name plugin .rpm does not hold the plugin"
    rpm -qp --requires "$prpm" | grep -Eq "$rpm_needs" ||
        fail "the $name plugin .rpm does not require $rpm_needs"
    if dpkg-deb --contents "$deb" | grep -q "$so"; then
        fail "the orchard .deb must not carry the $name plugin"
    fi
}
check_plugin libvirt libvirt0 libvirt
# The containers plugin links no engine library (it speaks HTTP on the engine's socket): it
# needs orchard only, and recommends an engine.
check_plugin containers "" '^orchard'
recommends=$(dpkg-deb --field target/packages/orchard-plugin-containers_*.deb Recommends)
grep -q docker.io <<<"$recommends" || fail "the containers plugin .deb does not recommend docker.io"
if rpm -qp --requires target/packages/orchard-plugin-containers-[0-9]*.rpm | grep -Eq 'docker|podman'; then
    fail "the containers plugin .rpm must not require an engine package"
fi

# ----- install -----
step "dpkg -i $deb"
installed=yes
dpkg -i "$deb"
getent passwd orchard >/dev/null || fail "no orchard user"
[ "$(stat -c '%U %a' "$STATE")" = "orchard 700" ] || fail "$STATE is not orchard's, 0700"
unit=$(dpkg -L orchard | grep '/systemd/system/orchard.service$')
agent_unit=$(dpkg -L orchard | grep '/systemd/system/orchard-agent.service$')

step "systemd-analyze verify and security (exposure <= $MAX_EXPOSURE)"
for u in "$unit" "$agent_unit"; do
    systemd-analyze verify "$u"
    systemd-analyze security --offline=true "$u" | tee "$work/security"
    score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$work/security")
    [ -n "$score" ] || fail "no exposure score for $u"
    awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' ||
        fail "$u: exposure $score > $MAX_EXPOSURE"
    echo "$(basename "$u"): exposure $score"
done

# ----- start as the unit would -----
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
workdir=$(sed -n 's/^WorkingDirectory=//p' "$unit")
[ -n "$exec_start" ] && [ -n "$workdir" ] || fail "cannot read ExecStart/WorkingDirectory from $unit"
read -r -a exec_argv <<<"$exec_start"

# A unix datagram socket standing in for systemd's NOTIFY_SOCKET. It prints every line it
# receives and exits once it has seen all the lines it was asked to wait for.
cat >"$work/notify.py" <<'PY'
import os, socket, sys
path, want = sys.argv[1], set(sys.argv[2:])
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
os.chmod(path, 0o666)
print("bound", flush=True)
while want:
    for line in sock.recv(4096).decode().splitlines():
        print(line, flush=True)
        want.discard(line)
PY
chmod 755 "$work"

# start_daemon LOG: runs ExecStart as orchard with the environment systemd gives a
# Type=notify service with WatchdogSec=, then waits (event-driven) for READY=1 and the
# first WATCHDOG=1.
start_daemon() {
    local log=$1 sock="$work/notify.sock"
    rm -f "$sock" "$work/notify.out"
    mkfifo "$work/notify.fifo"
    timeout 60 python3 "$work/notify.py" "$sock" READY=1 WATCHDOG=1 >"$work/notify.fifo" &
    listener_pid=$!
    exec 5<"$work/notify.fifo"
    read -r bound <&5 || fail "notify listener did not start"
    [ "$bound" = bound ] || fail "notify listener: $bound"
    (
        cd "$workdir"
        exec setpriv --reuid=orchard --regid=orchard --init-groups --no-new-privs \
            env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            LANG=C.UTF-8 HOME=/var/lib/orchard USER=orchard LOGNAME=orchard \
            SHELL=/usr/sbin/nologin STATE_DIRECTORY=$STATE \
            CONFIGURATION_DIRECTORY=/etc/orchard NOTIFY_SOCKET="$sock" \
            WATCHDOG_USEC=2000000 WATCHDOG_PID=$BASHPID "${exec_argv[@]}"
    ) 2>"$log" &
    daemon_pid=$!
    cat <&5 >"$work/notify.out" # ends when the listener has seen both lines, or times out
    exec 5<&-
    rm -f "$work/notify.fifo"
    wait "$listener_pid" || {
        cat "$log" >&2
        fail "no READY=1 and WATCHDOG=1 from the daemon"
    }
    listener_pid=
    cat "$work/notify.out"
    kill -0 "$daemon_pid" || fail "the daemon exited"
}

stop_daemon() {
    kill -TERM "$daemon_pid"
    local rc=0
    wait "$daemon_pid" || rc=$?
    daemon_pid=
    [ "$rc" -eq 0 ] || fail "the daemon exited with $rc after SIGTERM"
}

# api METHOD PATH [TOKEN] [JSON]: HTTPS against the generated certificate, which must
# name localhost (no -k).
api() {
    local args=(-sS --fail-with-body --cacert "$STATE/tls-cert.pem" -X "$1")
    [ -z "${3:-}" ] || args+=(-H "Authorization: Bearer $3")
    [ -z "${4:-}" ] || args+=(-H 'Content-Type: application/json' -d "$4")
    curl "${args[@]}" "https://localhost:$PORT$2"
}
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
login() {
    api POST /api/auth/login "" "{\"username\":\"$1\",\"password\":\"$2\"}" | json_field access_token
}

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    fail "port $PORT is in use here"
fi

step "first start: $exec_start (as orchard, in $workdir)"
start_daemon "$work/first.log"
cat "$work/first.log"
pwfile=$STATE/initial-admin-password
[ "$(stat -c '%U %a' "$pwfile")" = "orchard 600" ] || fail "$pwfile is not orchard's, 0600"
for f in tls-cert.pem tls-key.pem jwt-secret; do
    [ "$(stat -c '%U %a' "$STATE/$f")" = "orchard 600" ] || fail "$STATE/$f is not orchard's, 0600"
done
password=$(cat "$pwfile")
grep -q "$pwfile" "$work/first.log" || fail "the first-start log does not name $pwfile"
if grep -qF -- "$password" "$work/first.log"; then fail "the admin password was logged"; fi
grep -q 'listening on https://0.0.0.0:8443' "$work/first.log" || fail "not listening with TLS"
grep -q 'plugin loaded backend=simulator .*plugin=/usr/lib/orchard/plugins/liborchard_plugin_simulator.so' \
    "$work/first.log" || fail "the simulator was not loaded from /usr/lib/orchard/plugins"

step "HTTPS login with the initial admin password"
token=$(login admin "$password")
[ -n "$token" ] || fail "no token"
api GET /api/backends "$token" | tee "$work/backends.json"
echo
python3 - "$work/backends.json" <<'PY' || fail "the simulator backend is not loaded"
import json, sys
backends = json.load(open(sys.argv[1]))
assert any(b["name"] == "simulator" and b["status"] == "loaded" for b in backends), backends
PY
api POST /api/users "$token" \
    '{"username":"survivor","password":"survivor-password-1","account_type":"client","permissions":[]}' >/dev/null
if curl -sS --max-time 5 "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then
    fail "plain HTTP answered on the TLS port"
fi
stop_daemon

step "upgrade: reinstall the .deb over the existing state"
echo "# local change kept by the upgrade" >>/etc/orchard/orchard.toml
(cd "$STATE" && sha256sum orchard.redb jwt-secret tls-cert.pem tls-key.pem initial-admin-password) >"$work/before.sum"
dpkg -i "$deb"
(cd "$STATE" && sha256sum -c "$work/before.sum") || fail "the upgrade changed the state"
grep -q '^# local change kept by the upgrade' /etc/orchard/orchard.toml || fail "the upgrade overwrote the conffile"
start_daemon "$work/second.log"
if grep -q 'created user admin\|generated a self-signed' "$work/second.log"; then
    fail "the second start did first-start work again"
fi
login admin "$password" >/dev/null
login survivor survivor-password-1 >/dev/null
stop_daemon

step "remove keeps the state"
dpkg --remove orchard
[ -f "$STATE/orchard.redb" ] || fail "remove deleted the state"
[ ! -e /usr/bin/orchard ] || fail "remove left /usr/bin/orchard"

step "purge deletes it"
dpkg --purge orchard
installed=
[ ! -e "$STATE" ] || fail "purge left $STATE"
[ ! -e /etc/orchard ] || fail "purge left /etc/orchard"

printf '\npackaging test passed\n'
