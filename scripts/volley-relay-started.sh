# Sourced by the per-message benchmark scripts (after `cd` to the repository), whose arguments
# are VOLLEY [MESSAGES] [volley-bench relay arguments...]:
#   relay_arguments DEFAULT_MESSAGES "$@"   sets volley, messages, relay_args, work (a temporary
#                                            directory removed on exit) and out
#   start_volley_relay LOG                  starts the Volley-only relay run in the background and
#                                            waits until the daemon's API listens (start-up is not
#                                            per-message work); sets `relay` (volley-bench's pid)
#                                            and `pid` (the daemon's); exits 2 if it does not start
relay_arguments() {
  local default_messages="$1"
  shift
  volley="$(realpath "${1:?the volley binary}")"
  messages="${2:-$default_messages}"
  shift $(($# < 2 ? $# : 2))
  relay_args=("$@")
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  out="$work/relay"
}

start_volley_relay() {
  target/release/volley-bench relay --no-ceiling --messages "$messages" --volley "$volley" \
    --out "$out" "${relay_args[@]}" >"$1" 2>&1 &
  relay=$!
  pid=""
  for _ in $(seq 200); do
    pid=$(pgrep -f "^$volley serve --config $out" | head -1 || true)
    [ -n "$pid" ] && break
    sleep 0.05
  done
  [ -n "$pid" ] || { echo "volley did not start" >&2; exit 2; }
  for _ in $(seq 200); do
    grep -qs "volley::api: API on" "$out/volley/volley.log" && break
    sleep 0.05
  done
}
