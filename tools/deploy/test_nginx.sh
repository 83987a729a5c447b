#!/usr/bin/env bash
# nginx (tools/deploy/nginx.conf) in front of two `msgen serve` replicas, all on loopback:
# requests spread over both replicas; with one killed, new requests still succeed; a
# stream passes through whole. Run by .ci/run; needs nginx and a built msgen
# ($MSGEN_BIN, else .build/release/msgen, else .build/debug/msgen).
set -euo pipefail
cd "$(dirname "$0")/../.."

bin="${MSGEN_BIN:-}"
for c in .build/release/msgen .build/debug/msgen; do [ -z "$bin" ] && [ -x "$c" ] && bin="$c"; done
[ -n "$bin" ] || { echo "test_nginx: msgen is not built" >&2; exit 1; }
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { echo "test_nginx: nginx is not installed" >&2; exit 1; }
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"

tmp="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "test_nginx: FAIL: $*" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Two replicas, each on a port it picks (--port 0) and prints.
ports=()
for i in 1 2; do
  "$bin" serve --model models/cst-kjv.msz --port 0 --threads 1 2>"$tmp/replica$i.log" &
  pids+=($!)
done
for i in 1 2; do
  for _ in $(seq 200); do
    port=$(grep -o 'http://127.0.0.1:[0-9]*' "$tmp/replica$i.log" | grep -o '[0-9]*$' || true)
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || fail "replica $i did not start: $(cat "$tmp/replica$i.log")"
  ports+=("$port")
done

listen=$(free_port)
sed -e "s/REPLICA_1/${ports[0]}/" -e "s/REPLICA_2/${ports[1]}/" -e "s/LISTEN/$listen/" tools/deploy/nginx.conf >"$tmp/nginx.conf"
"$nginx_bin" -p "$tmp" -c "$tmp/nginx.conf" -g 'daemon off;' &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$listen/health" >/dev/null && break; sleep 0.1; done

complete() {  # prints the HTTP status of one completion through nginx
  curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    -d '{"prompt": "In the beginning", "max_tokens": 4}' "http://127.0.0.1:$listen/v1/completions"
}
served() {  # completions a replica has answered with 200, from its own /metrics
  curl -s "http://127.0.0.1:$1/metrics" | awk '/^msgen_requests_total\{status="200"\}/ {print $2}' | head -1
}

for _ in $(seq 10); do [ "$(complete)" = 200 ] || fail "a request through nginx failed"; done
a=$(served "${ports[0]}"); b=$(served "${ports[1]}")
[ "${a:-0}" -ge 3 ] && [ "${b:-0}" -ge 3 ] || fail "requests did not spread over both replicas ($a and $b of 10)"
echo "test_nginx: 10 requests spread as $a + $b (with their /metrics reads)"

# A stream comes through unbuffered and whole.
stream=$(curl -sN -H 'Content-Type: application/json' \
  -d '{"prompt": "And God said", "max_tokens": 20, "stream": true, "ignore_eos": true}' "http://127.0.0.1:$listen/v1/completions")
[ "$(grep -c '^data: {' <<<"$stream")" -ge 2 ] || fail "no stream chunks through nginx"
grep -q '^data: \[DONE\]' <<<"$stream" || fail "the stream through nginx did not end with [DONE]"

# Kill one replica outright: every new request still succeeds (nginx moves on).
kill -9 "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true
for _ in $(seq 10); do [ "$(complete)" = 200 ] || fail "a request failed with one replica down"; done
echo "test_nginx: with one replica killed, 10 of 10 requests succeeded"

# The other stops gracefully on SIGTERM and exits 0.
kill -TERM "${pids[1]}"
status=0; wait "${pids[1]}" || status=$?
[ "$status" = 0 ] || fail "a replica exited $status on SIGTERM"
echo "test_nginx: ok"
