#!/bin/sh
# PID 1 of the demo image.  busybox servers as PID 1 ignore SIGTERM (the
# kernel drops signals PID 1 has no handler for), which turns every stop into
# a 10 s wait; this shell traps TERM, stops the server and exits at once.
# With arguments, run them instead of the server (the docker-entrypoint
# convention): one-off containers, such as a migration command, use this.
if [ "$#" -gt 0 ]; then
    exec "$@"
fi
VERSION=$(cat /etc/demo/version)
MODE=$(cat /etc/demo/mode)
echo "demo-web $VERSION mode=$MODE starting on port ${PORT:-8080}"
if [ "$MODE" = crash ]; then
    echo "demo-web $VERSION: crashing at start on purpose" >&2
    exit 1
fi
date +%s > /tmp/started
# -ll -e: a persistent server forking the handler for every connection.
nc -ll -p "${PORT:-8080}" -e /bin/demo-handler &
server=$!
trap 'kill "$server" 2>/dev/null; echo "demo-web $VERSION: stopping"; exit 0' TERM INT
wait "$server"
