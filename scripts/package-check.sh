#!/usr/bin/env bash
# Builds the Debian package with `cargo deb`, installs it with `dpkg -i` on this machine, checks
# what it installed (the binary runs, the packaged config loads, the engine user and the state
# directories exist with their modes, the unit starts the installed binary, the config is a
# conffile), then removes it with `dpkg --purge` and checks that the journal was kept, and
# that a purge asked to (POOL_MANAGERD_PURGE_STATE=yes) removes it.
#
# Needs root (dpkg) and cargo-deb (`cargo install cargo-deb --locked`); .ci/run provides both.
# It refuses to run where pool-managerd is already installed (it would replace an operator's
# install). Usage: scripts/package-check.sh [--no-build | --profile NAME]. The default builds
# the release package operators install; `--profile dev` packages the test build's binary
# (already built by `cargo test`, so it costs seconds, not a second optimized build of every
# dependency): the same files and maintainer scripts, an unoptimized daemon.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "package check: $*" >&2; exit 1; }
say() { printf '  %s\n' "$*"; }

[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i); run it as root or let .ci/run do it"
command -v dpkg >/dev/null || fail "dpkg not found: this check runs on Debian"
if dpkg-query -W -f='${Status}' pool-managerd 2>/dev/null | grep -q "installed"; then
  fail "pool-managerd is already installed here; this check installs and purges its own build"
fi
[ -e /var/lib/pool-managerd ] && fail "/var/lib/pool-managerd exists: not touching an existing node's state"

case "${1:-}" in
  --no-build) ;;
  --profile) cargo deb --locked --quiet --profile "${2:?--profile needs a name}" -o target/debian/ >/dev/null ;;
  "") cargo deb --locked --quiet -o target/debian/ >/dev/null ;;
  *) fail "unknown argument '$1' (--no-build, --profile NAME)" ;;
esac
deb=$(ls -t target/debian/pool-managerd_*.deb | head -n 1)
echo "package: $deb"
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Depends\|Installed-Size\):/  \1:/p'

cleanup() {
  if dpkg-query -W pool-managerd >/dev/null 2>&1; then
    POOL_MANAGERD_PURGE_STATE=yes dpkg --purge pool-managerd >/dev/null 2>&1 || true
  fi
  rm -rf /var/lib/pool-managerd
}
trap cleanup EXIT

DEBIAN_FRONTEND=noninteractive dpkg -i "$deb"

mode_of() { stat -c '%a %U:%G' "$1"; }
expect_mode() {
  local have
  have=$(mode_of "$1")
  [ "$have" = "$2" ] || fail "$1 is '$have', expected '$2'"
  say "$1: $have"
}

echo "installed:"
[ "$(command -v pool-managerd)" = /usr/bin/pool-managerd ] || fail "pool-managerd is not /usr/bin/pool-managerd"
version=$(/usr/bin/pool-managerd --version)
say "$version"
[[ "$version" == "pool-managerd "* ]] || fail "--version printed '$version'"
printed=$(/usr/bin/pool-managerd serve --config /etc/pool-managerd/config.toml --print-config)
grep -qx 'engine_user = "pool-engine"' <<<"$printed" || fail "--print-config lacks engine_user = \"pool-engine\":
$printed"
grep -qx 'journal_dir = "/var/lib/pool-managerd/journal"' <<<"$printed" || fail "--print-config lacks the packaged journal_dir"
say "serve --print-config: engine_user pool-engine, journal /var/lib/pool-managerd/journal"
getent passwd pool-engine >/dev/null || fail "no pool-engine user"
[ "$(getent passwd pool-engine | cut -d: -f7)" = /usr/sbin/nologin ] || fail "pool-engine has a login shell"
say "user pool-engine (uid $(id -u pool-engine), shell /usr/sbin/nologin)"
expect_mode /var/lib/pool-managerd "700 root:root"
expect_mode /var/lib/pool-managerd/runtime "700 root:root"
expect_mode /var/lib/pool-managerd/journal "700 root:root"
expect_mode /etc/pool-managerd "750 root:root"
expect_mode /etc/pool-managerd/config.toml "640 root:root"
expect_mode /etc/pool-managerd/env "600 root:root"
grep -q '^LLORCH_API_TOKEN=[0-9a-f]\{64\}$' /etc/pool-managerd/env || fail "/etc/pool-managerd/env holds no token"
unit=$(ls /lib/systemd/system/pool-managerd.service /usr/lib/systemd/system/pool-managerd.service 2>/dev/null | head -n 1)
[ -n "$unit" ] || fail "the systemd unit was not installed"
grep -qx 'ExecStart=/usr/bin/pool-managerd serve --config /etc/pool-managerd/config.toml' "$unit" \
  || fail "$unit does not start /usr/bin/pool-managerd with the packaged config"
say "$unit: ExecStart=/usr/bin/pool-managerd serve --config /etc/pool-managerd/config.toml"
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify "$unit" 2>&1 | sed 's/^/  systemd-analyze: /' || true
fi
for shipped in /usr/share/pool-managerd/prometheus/pool-managerd.rules.yml \
               /usr/share/pool-managerd/grafana/pool-managerd.json \
               /usr/share/doc/pool-managerd/README.md; do
  [ -f "$shipped" ] || fail "$shipped was not installed"
done
say "alert rules, dashboard and packaging README under /usr/share"
dpkg-query --control-show pool-managerd conffiles | grep -q '^ */etc/pool-managerd/config.toml' \
  || fail "/etc/pool-managerd/config.toml is not a conffile"
say "conffiles: /etc/pool-managerd/config.toml"

# The installed daemon starts on the packaged config and token (as the unit would start it, on
# a free loopback port), answers /health, writes its journal, and stops on SIGTERM.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(set -a; . /etc/pool-managerd/env; set +a
 exec /usr/bin/pool-managerd serve --config /etc/pool-managerd/config.toml --addr "127.0.0.1:$port" \
   >/tmp/pool-managerd-package-check.log 2>&1) &
daemon=$!
health=""
for _ in $(seq 1 300); do
  health=$(python3 -c "import urllib.request,sys; print(urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1).status)" 2>/dev/null || true)
  [ "$health" = 200 ] && break
  kill -0 "$daemon" 2>/dev/null || break
  sleep 0.1
done
[ "$health" = 200 ] || { cat /tmp/pool-managerd-package-check.log >&2; fail "the installed daemon did not answer /health on 127.0.0.1:$port"; }
token=$(sed -n 's/^LLORCH_API_TOKEN=//p' /etc/pool-managerd/env)
codes=$(python3 - "$port" "$token" <<'PY'
import sys, urllib.request, urllib.error
port, token = sys.argv[1], sys.argv[2]
def code(headers):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/pools", headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code
print(code({}), code({"Authorization": f"Bearer {token}"}))
PY
)
[ "$codes" = "401 200" ] || fail "GET /v2/pools without / with the packaged token answered $codes, expected 401 200"
kill -TERM "$daemon"
wait "$daemon" || fail "the installed daemon exited with $? on SIGTERM (log: /tmp/pool-managerd-package-check.log)"
[ -n "$(ls -A /var/lib/pool-managerd/journal)" ] || fail "the installed daemon wrote no journal"
say "serve (packaged config and token): /health 200, /v2/pools 401 without the token and 200 with it, journal written, clean stop on SIGTERM"

# The journal the node wrote: the purge must keep it.
echo "marker" > /var/lib/pool-managerd/journal/kept-by-purge
dpkg --purge pool-managerd
echo "purged:"
[ ! -e /usr/bin/pool-managerd ] || fail "the binary is still there after dpkg --purge"
[ ! -e /etc/pool-managerd ] || fail "/etc/pool-managerd is still there after dpkg --purge"
[ -f /var/lib/pool-managerd/journal/kept-by-purge ] || fail "dpkg --purge removed the journal"
say "binary and /etc/pool-managerd gone; /var/lib/pool-managerd/journal kept"

# Asked to: state goes too.
rm -rf /var/lib/pool-managerd
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >/dev/null
POOL_MANAGERD_PURGE_STATE=yes dpkg --purge pool-managerd >/dev/null 2>&1
[ ! -e /var/lib/pool-managerd ] || fail "POOL_MANAGERD_PURGE_STATE=yes dpkg --purge left /var/lib/pool-managerd"
say "POOL_MANAGERD_PURGE_STATE=yes dpkg --purge: /var/lib/pool-managerd removed"
echo "package check passed"
