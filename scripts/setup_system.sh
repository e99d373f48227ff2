#!/usr/bin/env bash
# Debian packages the code sandbox (cardforge.core.sandbox) needs, installed only when missing.
#   usage: scripts/setup_system.sh            (as root; a no-op in ~0.1 s when all are present)
# bubblewrap: the namespace sandbox (bwrap). util-linux: setpriv (drop to uid 65534) and prlimit (limits).
# libseccomp2: compiles the sandbox's seccomp filter (loaded through ctypes; bwrap --seccomp applies it).
# python3: the interpreter the sandbox runs, from /usr; the host venv/pyenv python is never bound inside.
set -euo pipefail
PKGS=(bubblewrap util-linux libseccomp2 python3)
# chromium: only for the slow test that looks at the MLflow UI in a real headless browser (make test-full sets
# CARDFORGE_SLOW_TESTS=1; without it that test skips)
[ "${CARDFORGE_SLOW_TESTS:-0}" = 1 ] && PKGS+=(chromium)
missing=()
for p in "${PKGS[@]}"; do
  # dpkg-query is exact about "installed" (a removed-but-configured package still has an entry)
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "setup_system: missing Debian packages: ${missing[*]}; run as root: sudo $0" >&2
  exit 1
fi
echo "[setup_system] apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
