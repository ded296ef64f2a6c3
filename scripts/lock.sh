#!/usr/bin/env bash
# Regenerate requirements/lock.txt, the pinned versions every install uses (install.sh
# passes it to pip as constraints), with pip-tools' pip-compile from pyproject.toml.
#   bash scripts/lock.sh             # re-resolve, keeping the current pins where they still fit
#   bash scripts/lock.sh --upgrade   # today's newest versions (the scheduled refresh)
# The gate for a refreshed lock is the test suite on a fresh venv: `bash .ci/run` (the
# scheduled workflow in .github/workflows/refresh-lock.yml does both and proposes the
# change only when the suite passes).
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${LOCK_TOOLS_VENV:-.venv-lock}"
[[ -x "$tools/bin/pip-compile" ]] || { python3 -m venv "$tools"; "$tools/bin/pip" install -q "pip-tools==7.7.0"; }
upgrade=()
[[ "${1:-}" == "--upgrade" ]] && upgrade=(--upgrade)
# torch comes from the CPU wheel pip finds on the machine (an unpinned torch is a CUDA
# build of several GB); every extra is resolved together so their pins agree.
"$tools/bin/pip-compile" -q "${upgrade[@]}" --strip-extras --no-emit-index-url \
  --no-emit-find-links --unsafe-package babeldesk --no-header \
  --extra transformers --extra test --extra plot --extra onnx --extra gpu --extra bench \
  -o requirements/lock.txt pyproject.toml
# smollm2-135m's weights come with --no-deps (install.sh); its pin lives there.
echo "==> requirements/lock.txt: $(grep -c '==' requirements/lock.txt) pins"
