#!/usr/bin/env bash
# Debian packages for the coding eval (cardforge.eval.coding): one compiler/runtime per language, in /usr/bin.
#   usage: scripts/setup_toolchains.sh     (as root; a no-op in ~0.1 s when every tool is there)
# The sandbox shows only /usr to the code it runs (no /usr/local, no /root: a rustup or nvm install is
# invisible inside), so each tool is checked at its /usr/bin path, and installed from Debian when absent.
set -euo pipefail
# tool in /usr/bin -> Debian package (python3, bubblewrap, util-linux: scripts/setup_system.sh)
declare -A PKG=(
  [node]=nodejs [tsc]=node-typescript [javac]=default-jdk-headless [java]=default-jdk-headless
  [gcc]=gcc [g++]=g++ [cc]=gcc [rustc]=rustc [go]=golang-go [ruby]=ruby [bash]=bash
  [base64]=coreutils [timeout]=coreutils
)
missing=()
for tool in "${!PKG[@]}"; do
  [ -x "/usr/bin/$tool" ] || missing+=("${PKG[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "setup_toolchains: missing Debian packages for the coding eval: ${missing[*]}; run as root: sudo $0" >&2
  exit 1
fi
echo "[setup_toolchains] apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
