#!/usr/bin/env bash
# Builds one virtual environment per RL framework, installs echo-nemo beside the framework's
# own pins with pip's resolver, and runs that framework's interop tests in it.
#
#   bash tests/interop/run_interop.sh [openrlhf|verl|bridge|all] [--no-install]
#
# ECHO_NEMO_INTEROP_VENVS (default .interop-venvs in the checkout) holds the venvs; PYTHON (default python3.11)
# makes them. --no-install reuses venvs already built. Each install and test run is timed.
#
# - openrlhf 0.11.2: its requirements, as its wheel's metadata lists them, go through pip's
#   resolver together with echo-nemo, except flash-attn (an sdist that needs torch in pip's
#   build environment and CUDA: `pip install openrlhf` stops there) and deepspeed (the GPU
#   training engine, not needed by the code the tests drive); then the wheel itself goes in
#   with --no-deps. `pip check` names the two left out.
# - verl 0.9.1: `pip install -e .[test] verl==0.9.1`, the resolver alone.
# - megatron-bridge 0.3.1: tried with the resolver first; on a CPU machine that fails, and it
#   is installed without its CUDA packages, then probed: it does not import (docs/interop.md,
#   Megatron-Bridge, says why). echo-nemo is not installed there: megatron-bridge 0.3.1 needs
#   transformers < 5, echo-nemo >= 5.5.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENVS="${ECHO_NEMO_INTEROP_VENVS:-$REPO/.interop-venvs}"
PYTHON="${PYTHON:-python3.11}"
WHICH="${1:-all}"
INSTALL=1
[[ "${2:-}" == "--no-install" ]] && INSTALL=0

pin() { sed -n "s/^$1==//p" "$REPO/constraints.txt"; }  # the tested version, from constraints.txt
OPENRLHF="$(pin openrlhf)"
VERL="$(pin verl)"
BRIDGE="$(pin megatron-bridge)"
# torch 2.13.0 is the CPU wheel this machine's pip finds locally; a newer torch from the registry
# is the CUDA build, which pulls several GB of nvidia libraries.
TORCH="torch==2.13.0"
# Packages that need CUDA (or torch inside pip's build isolation) to build from source.
OPENRLHF_LEFT_OUT="flash-attn deepspeed"
BRIDGE_LEFT_OUT="transformer-engine mamba-ssm causal-conv1d nvidia-resiliency-ext"

timed() {  # timed CMD ARGS...: runs it, prints its wall time
    local start=$SECONDS
    "$@"
    echo "[interop] $* took $((SECONDS - start)) s" >&2
}

requirements_without() {  # requirements_without WHEEL_SPEC "NAMES": the wheel's base requirements minus NAMES
    local dir
    dir="$(mktemp -d)"
    "$VENVS/$VENV_NAME/bin/pip" download -q --no-deps -d "$dir" "$1" >/dev/null
    "$VENVS/$VENV_NAME/bin/python" - "$dir"/*.whl "$2" <<'EOF'
import re, sys, zipfile
from email.parser import Parser
wheel, left_out = sys.argv[1], set(sys.argv[2].split())
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    reqs = Parser().parsestr(z.read(meta).decode()).get_all("Requires-Dist") or []
for req in reqs:
    name = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower().replace("_", "-")
    if "extra ==" not in req and name not in left_out:
        print(req.split(";")[0].strip())
EOF
    rm -r "$dir"
}

make_venv() {
    VENV_NAME="$1"
    "$PYTHON" -m venv --clear "$VENVS/$1"
    "$VENVS/$1/bin/pip" install -q --upgrade pip
}

install_openrlhf() {
    make_venv openrlhf
    mapfile -t reqs < <(requirements_without "openrlhf==$OPENRLHF" "$OPENRLHF_LEFT_OUT")
    "$VENVS/openrlhf/bin/pip" install -e "$REPO[test]" "$TORCH" "${reqs[@]}"
    "$VENVS/openrlhf/bin/pip" install --no-deps "openrlhf==$OPENRLHF"
    "$VENVS/openrlhf/bin/pip" check || true  # lists flash-attn and deepspeed as missing
}

install_verl() {
    make_venv verl
    "$VENVS/verl/bin/pip" install -e "$REPO[test]" "$TORCH" "verl==$VERL"
    "$VENVS/verl/bin/pip" check
}

install_bridge() {
    make_venv bridge
    if ! "$VENVS/bridge/bin/pip" install "$TORCH" "megatron-bridge==$BRIDGE"; then
        echo "[interop] megatron-bridge $BRIDGE does not install with its dependencies here;" \
             "installing it without: $BRIDGE_LEFT_OUT" >&2
        # megatron-core's [dev] extra is the GPU kernels (transformer-engine, mamba, flashinfer, ...)
        mapfile -t reqs < <(requirements_without "megatron-bridge==$BRIDGE" "$BRIDGE_LEFT_OUT" \
                            | sed 's/^megatron-core\[dev,mlm\]/megatron-core[mlm]/')
        "$VENVS/bridge/bin/pip" install "$TORCH" "${reqs[@]}"
        "$VENVS/bridge/bin/pip" install --no-deps "megatron-bridge==$BRIDGE"
    fi
    # transformers imports torchvision when present; the registry's torchvision is a CUDA
    # build whose operators do not load beside the CPU torch
    "$VENVS/bridge/bin/pip" uninstall -y -q torchvision || true
    "$VENVS/bridge/bin/python" -c "import megatron.bridge" \
        || echo "[interop] megatron.bridge does not import here: see docs/interop.md, Megatron-Bridge" >&2
}

run_tests() {  # run_tests VENV TESTFILE
    (cd "$REPO" && "$VENVS/$1/bin/python" -m pytest -q -n 0 -p no:cacheprovider -m interop "$2")
}

for name in openrlhf verl bridge; do
    [[ "$WHICH" == all || "$WHICH" == "$name" ]] || continue
    [[ $INSTALL == 1 ]] && timed "install_$name"
    file="tests/interop/test_$name.py"
    [[ -f "$REPO/$file" ]] && timed run_tests "$name" "$file"
done
