#!/usr/bin/env bash
# Installs a WebGPU driver route that works without a GPU, for test/WebGPU.test.ts:
# OpenGL ES through EGL on Debian's stock Mesa (llvmpipe). Dawn then finds a
# "compatibility" adapter with EFFECT_TRAINER_WEBGPU_FLAGS=backend=opengles and
# EGL_PLATFORM=surfaceless (the test sets both when unset).
#
# Idempotent: packages already installed are left alone. Prints what it did. Never
# fails the build: where apt-get is missing or refuses, it says so and exits 0, and
# the test asserts the typed "no adapter" error and logs that it skipped the rest.
#
#   bash scripts/webgpu-drivers.sh
set -uo pipefail

packages=(libegl1 libegl-mesa0 libgl1-mesa-dri libegl-dev)

missing=()
for p in "${packages[@]}"; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    continue
  fi
  missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "webgpu-drivers: already installed: ${packages[*]}"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "webgpu-drivers: no apt-get on this machine; not installed: ${missing[*]} (the WebGPU test will skip its numeric part)"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    echo "webgpu-drivers: not root and no password-less sudo; not installed: ${missing[*]} (the WebGPU test will skip its numeric part)"
    exit 0
  fi
fi

echo "webgpu-drivers: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/webgpu-drivers.log 2>&1; then
  # The package lists may be missing or stale (a fresh container): refresh once.
  "${sudo[@]}" apt-get update >>/tmp/webgpu-drivers.log 2>&1
  if ! "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >>/tmp/webgpu-drivers.log 2>&1; then
    echo "webgpu-drivers: apt-get failed (see /tmp/webgpu-drivers.log); not installed: ${missing[*]} (the WebGPU test will skip its numeric part)"
    tail -5 /tmp/webgpu-drivers.log
    exit 0
  fi
fi
echo "webgpu-drivers: installed ${missing[*]}"
