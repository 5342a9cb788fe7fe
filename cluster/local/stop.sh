#!/usr/bin/env bash
# Stop the cluster started by cluster/local/start.sh from the same --state-dir (only its processes).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-.venv/bin/python}" -m distsleep.cluster.local stop "$@"
