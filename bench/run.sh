#!/usr/bin/env bash
# bench/run.sh — the standard benchmark set (what `./dev bench` runs).
#
# Builds the gateway, the demo service and warren-bench in release mode, then runs every
# scenario (idle with 10,000 sessions; publish, rpc and fanout with 1, 4, 16 and 64
# clients, fanout also with 100 subscribers, where issue 13 judges it against
# Web-STOMP; each against the gateway and against raw AMQP, rpc and fanout also against
# RabbitMQ's Web-STOMP when its plugin listens; median of 5 runs) and writes
# bench/results/{report.json,table.md,chart.svg}. Takes about 27 minutes on 2 cores
# (21 without Web-STOMP).
# Run it on a quiet machine: other load skews every figure.
#
# Extra arguments go to warren-bench, e.g. `bench/run.sh --clients 1,8 --runs 3` (fanout
# keeps its own counts unless `--fanout-clients` is given too).
# Five runs per figure: a stall of a few hundred ms now and then (it hits the raw-AMQP
# runs too) moves one run's p99 a lot; the median of five is steadier than of three.
# RabbitMQ must be running (AMQP_ADDR, default amqp://127.0.0.1:5672/%2f, guest/guest).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export AMQP_ADDR=${AMQP_ADDR:-amqp://127.0.0.1:5672/%2f}
OUT=${BENCH_OUT:-bench/results}
mkdir -p "$OUT" target/warren-bench

cargo build --release -p warren-gateway -p warren-service -p warren-bench
# Where that build put the binaries (CARGO_TARGET_DIR, relative to here, or ./target).
bin=${CARGO_TARGET_DIR:-target}/release

# 10,000 sessions need 10,000+ descriptors in warren-bench and in the gateway it starts
# (which inherits the limit); warren-bench raises its soft limit to the hard one too.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt 20500 ]]; then
  echo "note: open-file limit is $(ulimit -n); the idle scenario needs ~10,100 per process" >&2
fi

# RabbitMQ's Web-STOMP (issue 13's baseline for rpc and fan-out) beside raw AMQP when
# its plugin listens (./dev enables it); `--targets` overrides.
targets=gateway,raw
if (exec 3<>/dev/tcp/127.0.0.1/15674) 2>/dev/null; then targets+=,web-stomp; fi

exec "$bin/warren-bench" \
  --targets "$targets" \
  --amqp-uri "$AMQP_ADDR" \
  --gateway-bin "$bin/warren-gateway" \
  --service-bin "$bin/warren-demo-service" \
  --stack-log target/warren-bench/stack.log \
  --json "$OUT/report.json" \
  --markdown "$OUT/table.md" \
  --chart "$OUT/chart.svg" \
  --runs 5 \
  --fanout-clients 1,4,16,64,100 \
  "$@"
