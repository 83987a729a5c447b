#!/usr/bin/env bash
# The whole `swift test` suite under AddressSanitizer (and LeakSanitizer), in its own
# scratch path so that it never disturbs .build. Takes ~15 minutes on a shared 2-core
# machine, too long for .ci/run; run it before a release and after changes to the
# readers, the tokenizer or the kernels. Extra arguments go to swift test (--filter …).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/swift/usr/bin"
# print_suppressions=0: the CLI tests expect one line on stderr, not LSan's statistics.
export LSAN_OPTIONS="suppressions=$PWD/tools/fuzz/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
# MemoryTests bound peak RSS, which AddressSanitizer's shadow memory and quarantine
# inflate by design: they are skipped here (and run in the ordinary `swift test`).
swift test --sanitize=address --scratch-path .build-asan --skip MemoryTests "$@"
