#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS seconds (default 60).
# Exits non-zero if any target crashes (or fails to build). Run as root on a fresh
# Debian machine: it installs what it needs.
#
#   fuzz/run.sh 60                  # every target, 60 s each
#   fuzz/run.sh 300 uevent          # one target
#
# Build method: cargo-fuzz on the stable toolchain with RUSTC_BOOTSTRAP=1 (it needs
# nightly-only flags), address sanitizer first, `--sanitizer none` if ASan cannot build or
# run here. FUZZ_METHOD=plain (or cargo-fuzz failing entirely) builds the targets with
# plain `cargo build` and sancov RUSTFLAGS instead.
#
# Seeds in fuzz/corpus/<target> are read, never written; what the fuzzer finds goes to
# fuzz/target/corpus/<target> (kept between runs), crashes to fuzz/artifacts/<target>/,
# logs to fuzz/target/logs/<target>.log.
set -euo pipefail

secs=${1:-60}
shift || true
[[ $secs =~ ^[0-9]+$ && $secs -gt 0 ]] || { echo "usage: $0 SECONDS [TARGET...]" >&2; exit 2; }

fuzz_dir=$(cd "$(dirname "$0")" && pwd)
cd "$fuzz_dir"
targets=("$@")
((${#targets[@]})) || targets=(mountinfo uevent kmsg)
target_dir=$fuzz_dir/target
method=${FUZZ_METHOD:-cargo-fuzz}

# --- what the build needs ---------------------------------------------------------------
packages=(libudev-dev pkg-config g++)  # udev crate links libudev; libFuzzer is C++
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "run.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v cargo >/dev/null || { echo "run.sh: cargo (Rust) is required" >&2; exit 1; }
host=$(rustc -vV | sed -n 's/^host: //p')

# --- build --------------------------------------------------------------------------------
# ASan can build yet fail at start-up (e.g. no room for its shadow memory): try one input.
smoke() {
  local empty
  empty=$(mktemp -d)
  "$target_dir/$host/release/${targets[0]}" -runs=1 "$empty" >/dev/null 2>&1
  local rc=$?
  rmdir "$empty"
  return $rc
}
build_plain() {
  # Same instrumentation cargo-fuzz adds (minus the sanitizer). --target keeps RUSTFLAGS off
  # build scripts and proc macros, which must not be instrumented.
  RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
    nice -n 10 cargo build --release --manifest-path "$fuzz_dir/Cargo.toml" \
    --target "$host" --target-dir "$target_dir/plain" "${targets[@]/#/--bin=}" 2>&1 | tail -n 30
}

cargo_fuzz_usable() {
  command -v cargo-fuzz >/dev/null && return 0
  echo "run.sh: installing cargo-fuzz" >&2
  nice -n 10 cargo install cargo-fuzz --locked 2>&1 | tail -n 2
  command -v cargo-fuzz >/dev/null
}

bin_dir=
if [[ $method == cargo-fuzz ]] && cargo_fuzz_usable; then
  # `cargo fuzz build` builds one named target or all of them.
  if ((${#targets[@]} == 1)); then build_args=("${targets[0]}"); else build_args=(); fi
  for san in address none; do
    echo "run.sh: build: RUSTC_BOOTSTRAP=1 cargo fuzz build --sanitizer $san ${build_args[*]}" >&2
    if RUSTC_BOOTSTRAP=1 nice -n 10 cargo fuzz build --fuzz-dir "$fuzz_dir" \
         --target-dir "$target_dir" --sanitizer "$san" "${build_args[@]}" && smoke; then
      bin_dir=$target_dir/$host/release
      method="cargo-fuzz (--sanitizer $san)"
      break
    fi
    echo "run.sh: cargo fuzz with --sanitizer $san did not work" >&2
  done
fi
if [[ -z $bin_dir ]]; then
  echo "run.sh: build: plain cargo build with sancov RUSTFLAGS" >&2
  build_plain
  bin_dir=$target_dir/plain/$host/release
  method="plain cargo build (sancov RUSTFLAGS, no sanitizer)"
fi

# --- run ----------------------------------------------------------------------------------
mkdir -p "$target_dir/logs"
failed=()
summary=()
for t in "${targets[@]}"; do
  corpus=$target_dir/corpus/$t
  artifacts=$fuzz_dir/artifacts/$t
  log=$target_dir/logs/$t.log
  mkdir -p "$corpus" "$artifacts"
  echo "run.sh: fuzzing $t for ${secs}s ($method)" >&2
  set +e
  nice -n 10 "$bin_dir/$t" "$corpus" "$fuzz_dir/corpus/$t" \
    -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  if ((rc != 0)); then
    failed+=("$t")
    echo "run.sh: $t FAILED (exit $rc); end of $log:" >&2
    grep -v '^#' "$log" | tail -n 40 >&2
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    if [[ -n $crash && -f $crash ]]; then
      echo "run.sh: crashing input $crash:" >&2
      od -c "$crash" | head -n 20 >&2
      echo "run.sh: reproduce: $bin_dir/$t $crash" >&2
    fi
    summary+=("$t: CRASH (exit $rc) after ${runs:-?} runs")
  else
    summary+=("$t: ok, ${runs:-?} runs, ${eps:-?} exec/s, corpus $(find "$corpus" -type f | wc -l) files")
  fi
done

echo "run.sh: build method: $method"
printf 'run.sh: %s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "run.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
