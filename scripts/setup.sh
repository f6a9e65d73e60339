#!/usr/bin/env bash
# One-shot set-up: a virtual environment with mtsc, torch (CPU wheel unless CUDA is present or
# torch is already installed), triton, the test tools, and graphviz's `dot` where apt can get it.
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip

if ! "$PY" -c "import torch" 2>/dev/null; then
    if [ -n "${MTSC_TORCH_SPEC:-}" ]; then
        "$PY" -m pip install -q "$MTSC_TORCH_SPEC"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        "$PY" -m pip install -q torch
    else
        # Without CUDA, the CPU wheel: PyPI's Linux torch wheel is the CUDA build, which pulls
        # several GB of CUDA packages. A CPU wheel pip already finds locally (find-links) comes
        # first, its dependencies after; else PyTorch's CPU index, whose "+cpu" build outranks
        # PyPI's wheel of the same version.
        TORCH="torch==${MTSC_CPU_TORCH_VERSION:-2.13.0}"
        if "$PY" -m pip install -q --no-index --no-deps "$TORCH" 2>/dev/null; then
            "$PY" -m pip install -q "$TORCH"
        else
            "$PY" -m pip install -q "$TORCH" \
                --extra-index-url "${MTSC_CPU_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
        fi
    fi
fi

"$PY" -m pip install -q -e ".[dev,triton]"
# Byte-compile the package as pip does for regular installs: an editable install is not, and
# where PYTHONDONTWRITEBYTECODE is set every `mtsc` run would compile it again (~30 ms).
"$PY" -m compileall -q mtsc grammar ir codegen runtime >/dev/null

if ! command -v dot >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        (apt-get install -y -qq graphviz >/dev/null 2>&1 \
            || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq graphviz >/dev/null 2>&1)) \
            || echo "setup: could not install graphviz; mtsc will write .dot files only"
    else
        echo "setup: graphviz's dot not found; install it to get .svg graphs (.dot files are written anyway)"
    fi
fi
touch "$VENV/.setup-done"
