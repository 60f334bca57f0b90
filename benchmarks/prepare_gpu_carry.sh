#!/usr/bin/env bash
# Prepare, on a machine that reaches PyPI, what benchmarks/gpu_check.sh carries to the GPU machine (whose
# image has nvcc, ninja, torch, Triton and cuSPARSELt but no CUTLASS, and which reaches no registry):
#
#   bash benchmarks/prepare_gpu_carry.sh            # -> .gpu_carry/ (git-ignored)
#   bash benchmarks/prepare_gpu_carry.sh DIR        # -> DIR (gpu_check.sh reads GPU_CARRY=DIR)
#
# Today that is one file: the nvidia-cutlass wheel (CUTLASS headers; 6.4 MB, pure Python, so it fits the
# device tool's 64 MiB carry with the working tree), at the version scripts/check_csrc.sh compiles csrc/
# against, downloaded with --no-deps (its Python dependencies are for CUTLASS's own code generator, which
# the build never runs) and checked against the pinned SHA-256 with pip's --require-hashes.
# On the GPU machine gpu_check.sh installs it with one line, offline:
#   python3 -m pip install --no-index --no-deps --no-compile --target <scratch>/site .gpu_carry/nvidia_cutlass-*.whl
#
# Exit status: 0 the carry is ready (downloaded, or already there with the right hash); 75 SKIPPED, the
# registry is not reachable (one line says so; nothing is left half-written); 1 any other failure.
# Time: one 6.4 MB download, about 1 s here; every pip call is capped (PIP_TIMEOUT s per connection,
# CARRY_TIMEOUT s in all) so an unreachable registry costs at most CARRY_TIMEOUT seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CARRY=${1:-${GPU_CARRY:-.gpu_carry}}
PIP_TIMEOUT=${PIP_TIMEOUT:-15}
CARRY_TIMEOUT=${CARRY_TIMEOUT:-120}

# name==version and the SHA-256 of the one wheel PyPI has for it (py3-none-any)
CUTLASS_REQ=nvidia-cutlass==4.2.0.0
CUTLASS_WHEEL=nvidia_cutlass-4.2.0.0-py3-none-any.whl
CUTLASS_SHA256=f9599ada45c7bcb6bf53f7d3f0a7d154183e53451c01bfa59eecd37dd4a693f6

say() { echo "prepare_gpu_carry: $*"; }
have_good_wheel() { [[ -f "$CARRY/$CUTLASS_WHEEL" ]] && echo "$CUTLASS_SHA256  $CARRY/$CUTLASS_WHEEL" | sha256sum -c --status; }

mkdir -p "$CARRY" || { say "FAILED: cannot create $CARRY"; exit 1; }
if have_good_wheel; then
  say "ready: $CARRY/$CUTLASS_WHEEL (already there, sha256 ok; nothing downloaded)"
  exit 0
fi
# Another version of the wheel would make the GPU machine's install ambiguous: keep exactly one.
for old in "$CARRY"/nvidia_cutlass-*.whl; do
  [[ -e "$old" && "$old" != "$CARRY/$CUTLASS_WHEEL" ]] && { say "removing $old (not $CUTLASS_WHEEL)"; rm -f "$old"; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu_carry.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "$CUTLASS_REQ --hash=sha256:$CUTLASS_SHA256" >"$tmp/requirements.txt"
t0=$(date +%s)
# --python-version/--platform: the GPU image's interpreter (CPython 3.12, x86-64), whatever runs this script.
timeout -k 5 "$CARRY_TIMEOUT" "$PYTHON" -m pip download --no-deps --only-binary=:all: --require-hashes \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --timeout "$PIP_TIMEOUT" --retries 1 --progress-bar off \
    -d "$tmp/dl" -r "$tmp/requirements.txt" >"$tmp/pip.log" 2>&1
rc=$?
if (( rc != 0 )); then
  network='NewConnectionError|ConnectTimeout|ReadTimeout|Max retries exceeded|Temporary failure in name resolution|Name or service not known|Network is unreachable|Connection refused|ProxyError|Could not fetch URL|timed out|No route to host'
  if (( rc == 124 || rc == 137 )) || grep -Eq "$network" "$tmp/pip.log"; then
    why=$(grep -Eo "$network" "$tmp/pip.log" | head -1)
    say "SKIPPED: the package registry is not reachable (${why:-pip download ran past ${CARRY_TIMEOUT}s}); $CARRY has no $CUTLASS_WHEEL, so gpu_check.sh's extension slice will refuse to run"
    exit 75
  fi
  tail -15 "$tmp/pip.log"
  say "FAILED: pip download of $CUTLASS_REQ (exit $rc; a hash mismatch shows above as 'THESE PACKAGES DO NOT MATCH THE HASHES')"
  exit 1
fi
[[ -f "$tmp/dl/$CUTLASS_WHEEL" ]] || { ls "$tmp/dl"; say "FAILED: pip saved no $CUTLASS_WHEEL"; exit 1; }
mv "$tmp/dl/$CUTLASS_WHEEL" "$CARRY/$CUTLASS_WHEEL"
have_good_wheel || { say "FAILED: $CARRY/$CUTLASS_WHEEL does not match sha256 $CUTLASS_SHA256"; exit 1; }
say "ready: $CARRY/$CUTLASS_WHEEL ($(du -h "$CARRY/$CUTLASS_WHEEL" | cut -f1), sha256 ok, $(( $(date +%s) - t0 )) s); carry it with the device tool's carry=[\"$CARRY\"]"
