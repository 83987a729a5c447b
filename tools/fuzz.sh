#!/usr/bin/env bash
# Fuzzes msgen's parsers with libFuzzer + AddressSanitizer (Tests/Fuzz/README.md).
#
#   tools/fuzz.sh TARGET SECONDS     one target (msz safetensors torch tokenizer config bpe detok http)
#   tools/fuzz.sh all SECONDS        every target in turn, SECONDS each
#   tools/fuzz.sh build              only build the fuzz binaries
#
# Why this way: the entry functions (Tests/Fuzz/Entries) are an ordinary library target,
# built here with `-sanitize=fuzzer,address` into its own scratch path (.build-fuzz, git-
# ignored) so it never disturbs .build; the libFuzzer mains (Tests/Fuzz/Targets/*.swift)
# are compiled by swiftc against those objects. They have no `main` (libFuzzer brings
# it), so they are not SwiftPM targets and `swift build`/`swift test` never see them.
#
# Exits non-zero on a crash, leak, timeout or out-of-memory; libFuzzer leaves the input
# as .build-fuzz/artifacts/TARGET/{crash,leak,timeout,oom}-*. Fix it, then copy it to
# Tests/Fixtures/fuzz/TARGET/ so that `swift test` (FuzzRegressionTests) replays it.
# Corpora (seeds generated from Tests/Fixtures, plus what the fuzzer finds) live in
# .build-fuzz/corpus/TARGET and are regenerated when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/swift/usr/bin"

targets=(msz safetensors torch tokenizer config bpe detok http)
scratch=.build-fuzz
bin=$scratch/bin

build() {
    swift build -q --scratch-path "$scratch" --target MSFuzzEntries -Xswiftc -sanitize=fuzzer,address
    local b=$scratch/x86_64-unknown-linux-gnu/debug objs=()
    for m in MSFormat MSModels MSKernels MSTokenizer MSGen MSServeRequests ZIPFoundation CVector MSFuzzEntries; do objs+=("$b/$m.build"/*.o); done
    mkdir -p "$bin"
    for t in "${targets[@]}"; do
        # lld: gold fails on the sanitizer objects' debug info ("internal error in format_file_lineno").
        swiftc -sanitize=fuzzer,address -parse-as-library -g -use-ld=lld \
            -I "$b/Modules" -I Sources/CZstd -I Sources/CBLAS -I "$scratch/checkouts/ZIPFoundation/Sources/CZLib" \
            -Xcc -fmodule-map-file="$b/CVector.build/module.modulemap" \
            "Tests/Fuzz/Targets/$t.swift" "${objs[@]}" -lzstd -lopenblas -lz -o "$bin/fuzz-$t" 2> >(grep -v "warning: Cannot export" >&2)
    done
}

# Seeds from the test fixtures (nothing downloaded). A torch seed's first byte says how
# the fuzz entry reads it (0: a whole .pt zip, 1: the bytes of data.pkl; see FuzzEntries).
seeds() {
    local t=$1 dir=$scratch/corpus/$1 f i=0
    mkdir -p "$dir"
    [ -n "$(ls -A "$dir")" ] && return 0
    case $t in
    msz)
        local msgen=.build/debug/msgen
        [ -x "$msgen" ] || swift build -q --product msgen
        for f in Tests/Fixtures/format/tiny-cst Tests/Fixtures/golden/*/; do
            i=$((i + 1)); "$msgen" convert "$f" -o "$dir/seed-$i.msz" 2>/dev/null
        done
        "$msgen" convert Tests/Fixtures/format/tiny-cst --dtype q8 -o "$dir/seed-q8.msz" 2>/dev/null ;;
    safetensors) for f in $(find Tests/Fixtures -name '*.safetensors'); do i=$((i + 1)); cp "$f" "$dir/seed-$i"; done ;;
    torch)
        # Not shared_dicts.pt: its 2^40 paths stop at the 10^6-entry limit, 10 s per run
        # under the sanitizer, and every mutation of it would be as slow.
        for f in $(ls Tests/Fixtures/format/*.pt | grep -v shared_dicts); do
            i=$((i + 1))
            { printf '\0'; cat "$f"; } > "$dir/zip-$i"
            # data.pkl alone, behind the mode byte 1 (the legacy file is no zip: skipped).
            { printf '\1'; python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
sys.stdout.buffer.write(z.read(min((n for n in z.namelist() if n.endswith("data.pkl")), key=len)))' "$f" 2>/dev/null; } > "$dir/pkl-$i" ||
                rm "$dir/pkl-$i"
        done ;;
    tokenizer) for f in Tests/Fixtures/format/tiny-cst/tokenizer.json Tests/Fixtures/gpt2/tokenizer.json; do i=$((i + 1)); cp "$f" "$dir/seed-$i"; done ;;
    config) for f in $(find Tests/Fixtures -name config.json); do i=$((i + 1)); cp "$f" "$dir/seed-$i"; done ;;
    bpe)
        split -b 2000 Tests/Fixtures/perplexity/psalm.txt "$dir/psalm-"
        printf '<|endoftext|>héllo  wörld\r\n\t日本語 🙂🙂 x<|endoftext|>' > "$dir/special" ;;
    detok)
        # 3 bytes per id after one flag byte: runs of ids inside and outside the vocabulary.
        head -c 3001 Tests/Fixtures/perplexity/psalm.txt > "$dir/text"
        printf '\1\0\0\020\0\020\001\0\020\002\0\020' > "$dir/small" ;;
    http)
        # The bodies the router tests post (RouteTests' post() writes each one, behind its
        # route byte, when MSGEN_FUZZ_SEEDS is set), plus two they do not send.
        [ -d .build/debug ] && ls .build/debug/*.xctest >/dev/null 2>&1 || swift build -q --build-tests
        MSGEN_FUZZ_SEEDS="$PWD/$dir" swift test -q --skip-build --filter MSServeTests.RouteTests >/dev/null 2>&1 || true
        printf '\3{"tokens": [0, 1, 50256]}' > "$dir/detok"
        printf '\1{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "stop": "x", "top_logprobs": 2, "logprobs": true}' > "$dir/chat-parts" ;;
    esac
}

# One target for SECONDS: libFuzzer stops at the first crash, leak, timeout (-timeout
# per input) or out-of-memory (-rss_limit_mb) and exits non-zero, leaving the input.
run() {
    local t=$1 seconds=$2
    seeds "$t"
    mkdir -p "$scratch/artifacts/$t"
    echo "fuzz $t for ${seconds}s"
    export LSAN_OPTIONS="suppressions=$PWD/tools/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
    # Inputs up to 256 KB: the .msz and safetensors seeds are 30-170 KB, and libFuzzer
    # cuts every input to max_len.
    local log=$scratch/artifacts/$t/last.log rc=0
    "$bin/fuzz-$t" "$scratch/corpus/$t" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 \
        -max_len=262144 -print_final_stats=1 -artifact_prefix="$scratch/artifacts/$t/" >"$log" 2>&1 || rc=$?
    grep -E "^#[0-9]+\s+(INITED|DONE)|ERROR|SUMMARY|Test unit written|stat::number_of_executed_units" "$log" || true
    [ "$rc" = 0 ] || echo "fuzz $t FAILED (exit $rc): the input is in $scratch/artifacts/$t/, the log in $log" >&2
    return "$rc"
}

case "${1:-}" in
build) build ;;
all)
    # Every target runs even after one fails; the exit status says whether any did.
    build; status=0
    for t in "${targets[@]}"; do run "$t" "${2:?SECONDS}" || status=1; done
    exit "$status" ;;
*)
    [[ " ${targets[*]} " == *" ${1:-} "* ]] || { echo "usage: tools/fuzz.sh {$(IFS='|'; echo "${targets[*]}")|all|build} SECONDS" >&2; exit 2; }
    build; run "$1" "${2:?SECONDS}" ;;
esac
