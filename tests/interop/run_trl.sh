#!/usr/bin/env bash
# TRL's real-client tests (tests/interop/test_trl.py) in a virtual environment of their own:
# echo-nemo with its `test` and `interop` extras (trl, pinned to the tested 1.16.0 by
# constraints.txt), installed with pip's resolver beside echo-nemo's own pins.
#
#   bash tests/interop/run_trl.sh [--no-install] [pytest args ...]
#
# ECHO_NEMO_INTEROP_VENVS (default .interop-venvs in the checkout) holds the venv (`trl`); PYTHON (default
# python3) makes it. --no-install reuses a venv already built. Install and test are timed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ECHO_NEMO_INTEROP_VENVS:-$REPO/.interop-venvs}/trl"
PYTHON="${PYTHON:-python3}"

if [[ "${1:-}" == "--no-install" ]]; then
    shift
else
    start=$SECONDS
    "$PYTHON" -m venv --clear "$VENV"
    "$VENV/bin/pip" install -q -c "$REPO/constraints.txt" -e "$REPO[test,interop]"
    echo "[interop] trl venv at $VENV installed in $((SECONDS - start)) s" >&2
fi
cd "$REPO"
start=$SECONDS
status=0
"$VENV/bin/python" -m pytest -q -n 0 -m interop tests/interop/test_trl.py "$@" || status=$?
echo "[interop] TRL tests took $((SECONDS - start)) s" >&2
exit "$status"
