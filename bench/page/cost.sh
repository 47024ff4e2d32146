#!/bin/bash
# What an open live page costs the daemon: `detingestd demo` (3000 frames at 100 Hz) twice,
# once alone and once with headless Chromium holding the page open for 25 s; after 26 s, the
# CPU seconds of the daemon's threads by name (from /proc/<pid>/task/*/stat) and the whole
# process. Run from the repository root after `make test` (release build, target/node).
set -euo pipefail
exe=./target/release/detingestd
[ -x "$exe" ] || cargo build --release -p detingest-daemon
port=${PORT:-18453}
cpu() { # CPU seconds per thread name of process $1
  for t in /proc/"$1"/task/*; do
    read -r -a s < <(sed 's/.*) //' "$t/stat")
    echo "$(cat "$t/comm") $(( s[11] + s[12] ))"
  done | awk '{a[$1] += $2; all += $2} END {for (k in a) printf "%-16s %.2f s\n", k, a[k] / 100; printf "%-16s %.2f s\n", "(process)", all / 100}' | sort
}
for page in 0 1; do
  data=$(mktemp -d)
  "$exe" demo --data-dir "$data" --frames 3000 --listen 127.0.0.1:$port >/dev/null 2>&1 &
  pid=$!
  sleep 2
  if [ $page = 1 ]; then
    NODE_PATH=target/node/node_modules node bench/page/watch.cjs "http://127.0.0.1:$port/" 25 &
  fi
  sleep 26
  echo "== page open: $page"
  cpu $pid
  wait $pid
  wait
  rm -rf "$data"
done
