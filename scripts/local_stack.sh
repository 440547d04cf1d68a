#!/usr/bin/env bash
# The whole stack on one machine, to try `prefect deployment run train-swin/part1` on a laptop:
#   - an S3 server (moto) on 127.0.0.1:$S3_PORT with bucket camtrap-data holding demo data at
#     s3://camtrap-data/train, and an empty bucket camtrap-runs (the deployments' defaults)
#   - a Prefect server on 127.0.0.1:$PREFECT_PORT (UI: http://127.0.0.1:$PREFECT_PORT)
#   - the process work pool gpu-pool, both deployments of deployments/prefect.yaml, a worker
#
#   scripts/local_stack.sh start | stop | status
#
# Everything lives in $STACK_DIR (default .camtrap-stack/ in the repo): pids, logs, the Prefect
# database, the demo data, the worker's cache, and env.sh to `source` in your shell.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$ROOT/.camtrap-stack}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
BIN="$(dirname "$PYTHON")"
PREFECT_PORT="${PREFECT_PORT:-4200}"
S3_PORT="${S3_PORT:-5055}"
DEMO_PER_CLASS="${DEMO_PER_CLASS:-40}"
SERVICES=(worker prefect s3) # stop order

# moto accepts any credentials; these exist only inside this stack.
stack_env() {
  cat <<EOF
export PREFECT_HOME="$STACK_DIR/prefect-home"
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
export PREFECT_SERVER_UI_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export DO_NOT_TRACK=1
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT"
export AWS_ACCESS_KEY_ID=local-stack
export AWS_SECRET_ACCESS_KEY=local-stack
export AWS_DEFAULT_REGION=us-east-1
export CAMTRAP_CACHE_DIR="$STACK_DIR/cache"
EOF
}

say() { printf '%s\n' "$*" >&2; }
pid_of() { cat "$STACK_DIR/$1.pid" 2>/dev/null || true; }
alive() { local pid; pid="$(pid_of "$1")"; [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; }

port_free() {
  "$PYTHON" - "$1" <<'EOF'
import socket, sys
with socket.socket() as s:
    sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0)
EOF
}

wait_http() { # url seconds
  "$PYTHON" - "$1" "$2" <<'EOF'
import sys, time, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=2):
            sys.exit(0)
    except Exception:
        time.sleep(0.5)
sys.exit(1)
EOF
}

launch() { # name command... : own session (process group), output to name.log
  local name="$1"; shift
  setsid "$@" >"$STACK_DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$STACK_DIR/$name.pid"
}

seed_buckets() {
  "$BIN/camtrap" demo-data "$STACK_DIR/demo-data" --per-class "$DEMO_PER_CLASS" >/dev/null
  "$PYTHON" - "$STACK_DIR/demo-data" <<'EOF'
import sys
from pathlib import Path

import boto3

root = Path(sys.argv[1])
s3 = boto3.client("s3")
existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
for bucket in ("camtrap-data", "camtrap-runs"):
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
files = [p for p in sorted(root.rglob("*")) if p.is_file()]
for path in files:
    s3.upload_file(str(path), "camtrap-data", f"train/{path.relative_to(root).as_posix()}")
print(f"s3://camtrap-data/train: {len(files)} files")
EOF
}

start() {
  mkdir -p "$STACK_DIR"
  for name in "${SERVICES[@]}"; do
    if alive "$name"; then say "already running ($name); use: $0 stop"; exit 1; fi
  done
  port_free "$PREFECT_PORT" || { say "port $PREFECT_PORT is taken; set PREFECT_PORT"; exit 1; }
  port_free "$S3_PORT" || { say "port $S3_PORT is taken; set S3_PORT"; exit 1; }
  stack_env >"$STACK_DIR/env.sh"
  # shellcheck disable=SC1091
  source "$STACK_DIR/env.sh"

  say "starting S3 (moto) on 127.0.0.1:$S3_PORT and Prefect on 127.0.0.1:$PREFECT_PORT ..."
  launch s3 "$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT"
  launch prefect "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
  wait_http "$AWS_ENDPOINT_URL" 30 || { say "S3 did not start: $STACK_DIR/s3.log"; stop; exit 1; }
  seed_buckets >&2
  wait_http "$PREFECT_API_URL/health" 120 || {
    say "Prefect did not start: $STACK_DIR/prefect.log"; stop; exit 1;
  }

  cd "$ROOT" # deployments point workers at the checkout they were deployed from
  "$BIN/prefect" --no-prompt work-pool create gpu-pool --type process --overwrite >/dev/null
  "$BIN/prefect" --no-prompt deploy --all --prefect-file deployments/prefect.yaml >/dev/null
  launch worker "$BIN/prefect" worker start --pool gpu-pool
  sleep 2
  alive worker || { say "the worker did not start: $STACK_DIR/worker.log"; stop; exit 1; }

  cat >&2 <<EOF
ready. In your shell:

  source $STACK_DIR/env.sh
  prefect deployment run train-swin/smoke             # ~2 min on CPU
  prefect deployment run train-swin/part1 --watch --param overrides='{"model.arch": "resnet18", "model.weights": "none", "model.drop_path": 0.0, "data.image_size": 64, "train.epochs": 3, "train.lr": 0.001}'

  UI:      http://127.0.0.1:$PREFECT_PORT  (runs, task states, artifacts, logs)
  outputs: aws s3 ls --recursive s3://camtrap-runs/runs/   (or python -c with boto3)
  logs:    $STACK_DIR/{s3,prefect,worker}.log
  stop:    $0 stop
EOF
}

stop_one() { # name: SIGTERM, SIGINT (a Prefect worker ignores its first SIGTERM), SIGKILL
  local name="$1" pid sig waits
  pid="$(pid_of "$name")"
  [[ -n "$pid" ]] || return 0
  for sig in TERM INT KILL; do
    kill -0 "$pid" 2>/dev/null || break
    kill -"$sig" -- "-$pid" 2>/dev/null || kill -"$sig" "$pid" 2>/dev/null || true
    waits=$([[ "$sig" == TERM ]] && echo 4 || echo 40) # x 0.25 s
    for _ in $(seq 1 "$waits"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  done
  rm -f "$STACK_DIR/$name.pid"
  say "stopped $name"
}

stop() {
  for name in "${SERVICES[@]}"; do stop_one "$name"; done
}

status() {
  local name code=0
  for name in s3 prefect worker; do
    if alive "$name"; then say "$name: running (pid $(pid_of "$name"))"
    else say "$name: stopped"; code=3; fi
  done
  return $code
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) say "usage: $0 start|stop|status"; exit 2 ;;
esac
