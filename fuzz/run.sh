#!/usr/bin/env bash
# Runs every fuzz target in turn for N minutes each (default 1):
#   fuzz/run.sh [minutes] [target...]
# The seeds in fuzz/corpus/<target>/ are read, never written: what libFuzzer
# finds goes to fuzz/target/corpus/<target>/ (kept between runs), crashes to
# fuzz/artifacts/<target>/. Needs cargo-fuzz (`cargo install cargo-fuzz`);
# RUSTC_BOOTSTRAP=1 lets the stable toolchain take its nightly flags.
# FUZZ_SECONDS overrides the minutes (CI runs each target for seconds).
set -euo pipefail
cd "$(dirname "$0")"

minutes="${1:-1}"
shift || true
seconds="${FUZZ_SECONDS:-$((minutes * 60))}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi

export RUSTC_BOOTSTRAP=1
cargo fuzz build
for target in "${targets[@]}"; do
    echo "== fuzz $target for ${seconds}s"
    mkdir -p "target/corpus/$target"
    cargo fuzz run "$target" "target/corpus/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
