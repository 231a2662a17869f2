#!/bin/sh
# Entry point of every role (receiver, worker, beat, flower, migrate) in the image and the Procfile.
# prometheus_client's multi-process mode adds up every sample file in its directory, so files
# left by an earlier run would be counted again: start each process tree with it empty.
set -eu
metrics_dir="${PROMETHEUS_MULTIPROC_DIR:-${CONNECTOR_METRICS_DIR:-}}"
if [ -n "$metrics_dir" ]; then
    mkdir -p "$metrics_dir"
    find "$metrics_dir" -mindepth 1 -delete
    export PROMETHEUS_MULTIPROC_DIR="$metrics_dir"
fi
exec "$@"
