# Shared by the compat scripts: a free port, and cachetd started on a temp
# data directory and stopped (by pid) when the script exits, however it ends.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 1 1500); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
        sleep 0.02
    done
    echo "nothing listens on port $1" >&2
    return 1
}

cachetd_bin() {
    if [ -z "${CACHETD:-}" ]; then
        (cd "$ROOT" && cargo build -q -p cachetd)
        CACHETD="$ROOT/target/debug/cachetd"
    fi
}

# start_cachetd NAME PORT [flags…]: RESP on PORT; sets CACHETD_PID.
start_cachetd() {
    local name=$1 port=$2
    shift 2
    cachetd_bin
    "$CACHETD" --listen "resp://127.0.0.1:$port" --data-dir "$WORK/$name" "$@" 2>"$WORK/$name.log" &
    CACHETD_PID=$!
    PIDS+=("$CACHETD_PID")
    wait_port "$port" || { cat "$WORK/$name.log" >&2; return 1; }
}

# redis-py, for the scripts that drive cachetd from Python.
need_redis_py() {
    python3 -c "import redis" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check "redis>=5"
}
