#!/usr/bin/env bash
# bench/smoke.sh — a tiny run of every warren-bench scenario, of the reply-path probe
# (warren-bench-reply-path) and of the priority-switch bench (warren-bench-priority), so
# the tools cannot rot (part of `./dev test`; the
# hub's topic bench, gateway/benches/topics.rs, runs its short form in `cargo test`).
# Debug builds, 2 clients, one 1-second run per scenario and target, 50 idle sessions,
# then idle and rpc again with JWT identity: about 25 s once built. Fails when any run
# fails or completes nothing; the speed figures are not judged (debug builds, tiny
# runs), the bytes a fan-out delivery costs on the wire are.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export AMQP_ADDR=${AMQP_ADDR:-amqp://127.0.0.1:5672/%2f}
mkdir -p target/warren-bench

# The same build as ./dev test's bins step (the workspace's binaries and tests): after
# it nothing is rebuilt; a narrower one resolves other features and rebuilt lapin, serde
# and the gateway (48 s). Run alone, it builds the tests too (minutes the first time),
# and the gateway it runs carries the tests' fault-injection hooks (unused here).
cargo build --workspace --bins --tests
# Where that build put the binaries (CARGO_TARGET_DIR, relative to here, or ./target).
bin=${CARGO_TARGET_DIR:-target}/debug

# The Web-STOMP baseline runs whenever the broker is on this machine (./dev enables the
# plugin): a smoke run that left it out silently would let its path rot unseen.
targets=gateway,gateway-deflate,raw
host=${AMQP_ADDR#*://}; host=${host#*@}; host=${host%%[:/]*}
if (exec 3<>/dev/tcp/127.0.0.1/15674) 2>/dev/null; then
  targets+=,web-stomp
elif [[ $host == 127.0.0.1 || $host == localhost ]]; then
  echo "bench smoke: RabbitMQ's Web-STOMP plugin does not answer on 127.0.0.1:15674;" \
    "enable it (rabbitmq-plugins enable rabbitmq_web_stomp; ./dev does)" >&2
  exit 1
else
  echo "bench smoke: RabbitMQ is not on this machine ($host): the web-stomp target is skipped"
fi

timeout 120 "$bin/warren-bench" \
  --amqp-uri "$AMQP_ADDR" \
  --gateway-bin "$bin/warren-gateway" \
  --service-bin "$bin/warren-demo-service" \
  --stack-log target/warren-bench/smoke-stack.log \
  --scenarios idle,publish,rpc,fanout \
  --targets "$targets" \
  --clients 2 --runs 1 --duration 1s --warmup 500ms \
  --idle-sessions 50 --idle-window 1s \
  --json target/warren-bench/smoke.json \
  --chart target/warren-bench/smoke.svg \
  --strict

# The one figure judged here: what the gateway sends per fan-out delivery, counted off
# the clients' sockets, is at least the 128 B message, and less with deflate.
python3 - target/warren-bench/smoke.json <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
sent = {r["target"]: (r.get("median") or {}).get("gateway_bytes_per_op")
        for r in results if r["scenario"] == "fanout"}
plain, deflate = sent.get("gateway"), sent.get("gateway_deflate")
print(f"bench smoke: gateway bytes sent per fan-out delivery: plain {plain}, deflate {deflate}")
assert plain is not None and plain >= 128, f"plain: {plain}"
assert deflate is not None and deflate < plain, f"deflate: {deflate} against {plain}"
PY

# Sessions with JWT identity (--auth-jwt-secret: the started gateway in jwt mode, each
# client its own signed token; a welcome for another user fails the run).
timeout 60 "$bin/warren-bench" \
  --amqp-uri "$AMQP_ADDR" \
  --gateway-bin "$bin/warren-gateway" \
  --service-bin "$bin/warren-demo-service" \
  --stack-log target/warren-bench/smoke-jwt-stack.log \
  --auth-jwt-secret "bench smoke: an HMAC secret of at least 32 bytes" \
  --scenarios idle,rpc --targets gateway \
  --clients 2 --runs 1 --duration 1s --warmup 500ms \
  --idle-sessions 50 --idle-window 1s \
  --strict

# The reply-path probe (stream against a classic reply queue), a few messages.
timeout 60 "$bin/warren-bench-reply-path" --amqp-uri "$AMQP_ADDR" --messages 20 --runs 1

# The priority-switch bench (Service::consume_queues against simulated polling), a few
# trials: about 1 s.
timeout 60 "$bin/warren-bench-priority" --amqp-uri "$AMQP_ADDR" --trials 5 --work-ms 50 --poll-ms 500
