#!/usr/bin/env bash
# Load and convert speed of .msz files (issue "Foundation"), measured side by side with
# plain `zstd -d` on the very same frames, in one run.
#
#   bash tools/bench_format.sh            # needs the tools venv (.venv) and zstd
#
# Makes a ~100 MB f16 CST checkpoint of random-normal weights (std 0.02), converts it,
# then times: msgen loading every tensor (decompress + checksum + byte planes back) on one
# core and on all cores, and `zstd -d` (one core) on the file's data section.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
swift build -c release --product msgen >/dev/null
msgen=.build/release/msgen

"$py" - "$work/ckpt" <<'PY'
import json, pathlib, sys, torch
from safetensors.torch import save_file
out = pathlib.Path(sys.argv[1]); out.mkdir()
V, D, F, n, L, G = 4096, 768, 3072, 7, 16, 64
cfg = dict(architecture="cst-decoder", vocab_size=V, d_model=D, n_layers=n, n_heads=12, d_ff=F,
           slice_length=L, extension_ratio=3, max_slices=G, tie_embeddings=True)
(out / "config.json").write_text(json.dumps(cfg))
g = torch.Generator().manual_seed(0)
t = {"embed.weight": [V, D], "pos_local.weight": [2 * L, D], "pos_global.weight": [G, D], "norm_f.weight": [D], "norm_f.bias": [D]}
for i in range(n):
    p = f"layers.{i}."
    for x in ["norm1", "norm2"]: t[p + x + ".weight"] = [D]; t[p + x + ".bias"] = [D]
    for x in "qkvo": t[p + f"attn.{x}_proj.weight"] = [D, D]; t[p + f"attn.{x}_proj.bias"] = [D]
    t[p + "mlp.fc1.weight"] = [F, D]; t[p + "mlp.fc1.bias"] = [F]; t[p + "mlp.fc2.weight"] = [D, F]; t[p + "mlp.fc2.bias"] = [D]
save_file({k: (torch.randn(*s, generator=g) * 0.02).half() for k, s in t.items()}, str(out / "model.safetensors"))
PY

echo "== convert (f16 checkpoint -> .msz, zstd level 3)"
/usr/bin/time -f "convert: %e s wall, %M KB peak RSS" "$msgen" convert "$work/ckpt" -o "$work/m.msz" 2>&1 | tail -2
"$msgen" inspect "$work/m.msz" | sed -n 2p

# The data section: every tensor frame, back to back, exactly what msgen decompresses.
header=$(od -An -t u8 -j 8 -N 8 "$work/m.msz" | tr -d ' ')
tail -c +$((16 + header + 1)) "$work/m.msz" > "$work/frames.zst"
raw=$("$msgen" inspect --json "$work/m.msz" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["raw_bytes"])')

best() {  # best of 5 wall times of a command, in seconds
  local b=999
  for _ in 1 2 3 4 5; do
    local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N)
    b=$(echo "$e - $s" | bc -l | awk -v b="$b" '{print ($1 < b) ? $1 : b}')
  done
  echo "$b"
}
cat "$work/m.msz" "$work/frames.zst" >/dev/null  # warm the page cache
z1=$(best taskset -c 0 zstd -d -q -c "$work/frames.zst")
m1=$(best taskset -c 0 "$msgen" inspect --verify "$work/m.msz")
m2=$(best "$msgen" inspect --verify "$work/m.msz")
echo "== load, warm page cache, $raw bytes of raw tensor data (best of 5)"
awk -v r="$raw" -v z="$z1" -v a="$m1" -v b="$m2" 'BEGIN {
  printf "zstd -d, 1 core:           %.3f s  %.2f GB/s\n", z, r / z / 1e9
  printf "msgen load, 1 core:        %.3f s  %.2f GB/s  (%.2fx zstd)\n", a, r / a / 1e9, z / a
  printf "msgen load, all cores:     %.3f s  %.2f GB/s  (%.2fx zstd)\n", b, r / b / 1e9, z / b
}'
echo "(msgen times include process start, header parse and allocating the tensors)"
