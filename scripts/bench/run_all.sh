#!/usr/bin/env bash
# Run every cronbox benchmark with its defaults (about 20 minutes on 2 cores; big_home.py
# builds a 10,000-session home first, about 3 minutes: give it --home to keep one).
# Usage: scripts/bench/run_all.sh [python]   (default: ./.venv/bin/python, else python3)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${1:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$here/../../.venv/bin/python" ]]; then python="$here/../../.venv/bin/python"; else python=python3; fi
fi
cd "$here/../.."

echo "== due -> runner-start latency (200 one-time tasks, pool 8) =="
"$python" "$here/due_latency.py"
echo
echo "== the same at a rate 2 cores can start runners (one task every 500 ms) =="
"$python" "$here/due_latency.py" --stagger 0.5
echo
echo "== due -> runner start at 1 task / 2 s, now and with the code paths before (issue 13) =="
"$python" "$here/due_latency.py" --tasks 30 --stagger 2
"$python" "$here/due_latency.py" --tasks 30 --stagger 2 --before
echo
echo "== CPU of one runner start: forked, spawned, the bare imports =="
"$python" "$here/runner_start.py"
echo
echo "== what idling costs: idle host and idle runners, change signals beside polling =="
"$python" "$here/idle_cost.py"
echo
echo "== burst: 2,000 due one-time tasks over 200 sessions, pool 16, beside before and nanoclaw =="
"$python" "$here/burst.py"
echo
echo "== idle sweep (10,000 sessions x 10 future tasks) =="
"$python" "$here/idle_sweep.py"
echo
echo "== history: a series with 0, 10,000 and 50,000 past occurrences =="
"$python" "$here/history.py"
echo
echo "== event-loop lag while delivery applies 50 agent actions =="
"$python" "$here/loop_lag.py"
echo
echo "== next fire: cronbox beside cronsim, croniter and the old evaluation =="
"$python" "$here/next_fire.py"
echo
echo "== docker runtime: cold and warm wake beside docker run (needs scripts/docker-setup) =="
if docker info >/dev/null 2>&1; then "$python" "$here/docker_wake.py"; else echo "skipped: no Docker engine"; fi
echo "== due -> runner start with the HTTP API under a GET /api/tasks loop, beside none =="
"$python" "$here/http_load.py"
echo
echo "== the model gateway: a model call through it, beside one straight to the server =="
"$python" "$here/gateway.py"
echo
echo "== fault injection: what one hostile session costs the others (issue 14) =="
"$python" "$here/faults.py"
echo
echo "== chains and approval gates: settling a parent, gating, approving, beside a plain settlement =="
"$python" "$here/chain_settle.py"
echo
echo "== the CLI and the host on 10,000 sessions / 100,000 tasks, beside the merge base (issue 13) =="
"$python" "$here/big_home.py"
echo
echo "== slot hand-over in a burst: runners tended concurrently beside one after another (issue 13) =="
"$python" "$here/handover.py"
