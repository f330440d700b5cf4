#!/usr/bin/env bash
# Create (or update) a virtual environment with zcopy-data installed editable plus EXTRAS.
# Where pip can find torch 2.13.0 without an index (a local wheel folder in pip's find-links),
# that build is installed first, so the project never pulls a multi-GB CUDA build by accident;
# elsewhere torch is installed as usual, from the project's own requirement.
set -euo pipefail
venv=${1:-.venv}
extras=${2:-dev}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    probe=$(mktemp -d)
    if "${pip[@]}" download --no-index --no-deps -d "$probe" "torch==2.13.0" >/dev/null 2>&1; then
        "${pip[@]}" install "torch==2.13.0"
    fi
    rm -rf "$probe"
fi
"${pip[@]}" install -c "$(dirname "$0")/constraints.txt" -e ".[$extras]"
if [[ ",$extras," == *",dev,"* ]]; then
    # a writer the tests read the files of, whose own requirements would pull another torch build:
    # installed without them (its indexed-dataset builder needs only NumPy and torch)
    "${pip[@]}" install --no-deps "megatron-core==0.16.1"
fi
