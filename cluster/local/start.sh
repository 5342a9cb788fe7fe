#!/usr/bin/env bash
# Start a multi-node Ray cluster (head + N worker nodes) and an MLflow server on this machine.
#   cluster/local/start.sh [--workers N] [--state-dir DIR] [--netns auto|yes|no] ...
# Prints the addresses and the `export` line for jobs; stop with cluster/local/stop.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-.venv/bin/python}" -m distsleep.cluster.local start "$@"
