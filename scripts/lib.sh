# Shared by scripts/run.sh and scripts/cluster.sh: messages, the processes a script started
# (stopped on exit or Ctrl-C), and polling for something to come up.
# The sourcing script sets `script` (its name, for messages) and `logs` (its log directory).

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf '%s: %s\n' "${script:-fx}" "$*" >&2; exit 1; }

# Every process the script starts goes here; all of them are stopped when it exits.
pids=()
cleanup() {
  trap - EXIT INT TERM
  if ((${#pids[@]})); then
    say "stopping ${#pids[@]} processes"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# Waits up to $2 seconds for the command after them to succeed (a script's poll, not a test's
# sleep), or dies naming $1.
wait_until() {
  local what="$1" seconds="$2"; shift 2
  for _ in $(seq $((seconds * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$what did not come up within ${seconds}s; see $logs/"
}
