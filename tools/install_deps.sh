#!/usr/bin/env bash
# Installs what rehyat needs on Debian/Ubuntu (run as root): the compiler toolchain and
# libraries from apt, and the Python test helpers from pip. Skips what is already there.
# The CUDA toolkit (nvcc, cuBLAS, NCCL) is not installed here: with it present the CUDA
# kernels are built too; without it rehyat builds its CPU reference path alone.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(cmake ninja-build g++ pkg-config libyaml-cpp-dev libspdlog-dev libfmt-dev libhdf5-dev
              nlohmann-json3-dev libcli11-dev libgtest-dev libopenblas-dev libpng-dev libgif-dev
              libonnx-dev libprotobuf-dev python3 python3-pip)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "rehyat: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! python3 -c 'import numpy, h5py, safetensors, pytest, onnxruntime' >/dev/null 2>&1; then
  echo "rehyat: installing the Python test helpers"
  python3 -m pip install -q -r tests/requirements.txt ||
    python3 -m pip install -q --break-system-packages -r tests/requirements.txt
fi
