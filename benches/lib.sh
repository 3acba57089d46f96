# Helpers shared by the A/B scripts (sourced, not run). They expect WORK (a
# scratch directory) and set PID and PORT.

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_cachetd BUILD DATA_DIR SYNC: starts BUILD on core 0 with tarpc on
# PORT and RESP on PORT+1, and returns once it logs its ready line. A free
# port can be taken by another connection before cachetd binds it (the
# benchmarks open many): then it tries another, five times at most.
start_cachetd() {
    local p
    for _ in 1 2 3 4 5; do
        p=$(port)
        taskset -c 0 "$1" --listen 127.0.0.1:"$p" --listen resp://127.0.0.1:$((p + 1)) --data-dir "$2" \
            --sync "$3" 2>"$WORK/log" &
        PID=$!
        until grep -q "ready: listening" "$WORK/log"; do
            kill -0 "$PID" 2>/dev/null || break
            sleep 0.002
        done
        if grep -q "ready: listening" "$WORK/log"; then PORT=$p; return 0; fi
        wait "$PID" || true; PID=
    done
    cat "$WORK/log" >&2; exit 1
}

stop_cachetd() { kill -TERM "$PID"; wait "$PID" || true; PID=; }
