# Shared by scripts/test and scripts/demo: start (or reuse) the local services and export their addresses.
#
# - PostgreSQL: a throwaway cluster under .local/ (initialised from the machine's PostgreSQL binaries,
#   installed with apt-get where missing), run as the `postgres` user when we are root (PostgreSQL refuses
#   to run as root). When DATABASE_URL already points at a running server, that server is used instead.
# - moto server (S3, SQS, DynamoDB) from a project-local Python venv (.venv).
#
# Services this shell starts are stopped by `stop_started_services` (the callers trap EXIT); services that
# were already running are reused and left alone.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
VENV="$ROOT/.venv"
mkdir -p "$LOCAL"
STARTED_SERVICES=()

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
# Gives up: the reason on stderr, status 1 (the EXIT trap still stops what the script started).
die() { printf '\033[1;31merror: %s\033[0m\n' "$*" >&2; exit 1; }

# Keeps a long step's whole output in the file $1 and shows the lines matching $2 as they come, with the time
# since the step began, at most one every $3 seconds (default 0: every one) unless it matches $4 (always shown).
# With $5 (seconds), a step silent that long says it is still going and what rustc is compiling (`sam build`
# prints a function's build output only when the function is done). Exits with the step's status when used as
# `cmd 2>&1 | show_progress ...` under pipefail.
show_progress() {
  local logfile="$1" pattern="$2" every="${3:-0}" always="${4:-}" heartbeat="${5:-0}"
  local start=$SECONDS last=-1000 line="" partial="" shown rc crate
  : >"$logfile"
  while :; do
    if [ "$heartbeat" -gt 0 ]; then
      IFS= read -r -t "$heartbeat" line && rc=0 || rc=$?
    else
      IFS= read -r line && rc=0 || rc=$?
    fi
    if [ "$rc" -gt 128 ]; then
      # Timed out: keep what came of the line so far, and say the step is alive.
      partial+="$line"
      crate="$(pgrep -a rustc 2>/dev/null | sed -n 's/.*--crate-name \([^ ]*\).*/\1/p' | head -n 1)"
      printf '    [%dm%02ds] still going%s\n' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)) \
        "${crate:+: compiling $crate}" >&2
      continue
    fi
    [ "$rc" -eq 0 ] || [ -n "$partial$line" ] || break
    line="$partial$line"; partial=""
    printf '%s\n' "$line" >>"$logfile"
    if { [ -n "$always" ] && [[ "$line" =~ $always ]]; } || { [[ "$line" =~ $pattern ]] && [ $((SECONDS - last)) -ge "$every" ]; }; then
      shown="${line%% (from *}" # pip's "Collecting x (from y->z ...)": the package is enough
      printf '    [%dm%02ds] %s\n' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)) "${shown:0:150}" >&2
      last=$SECONDS
    fi
    [ "$rc" -eq 0 ] || break
  done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Runs a PostgreSQL server binary as the right user.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bindir() {
  local dir
  if command -v pg_config >/dev/null && dir="$(pg_config --bindir 2>/dev/null)" && [ -x "$dir/initdb" ]; then
    echo "$dir"; return
  fi
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return; fi
  return 1
}

install_postgres() {
  log "installing PostgreSQL (apt-get)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
}

ensure_postgres() {
  if [ -n "${DATABASE_URL:-}" ] && [ -z "${CLICKPACER_OWN_PG:-}" ]; then
    if psql "$DATABASE_URL" -Atqc 'SELECT 1' >/dev/null 2>&1; then
      log "using the PostgreSQL server in DATABASE_URL"
      return
    fi
    die "DATABASE_URL is set but no server answers there; unset it to let the scripts start one"
  fi

  local bindir
  bindir="$(pg_bindir)" || { install_postgres; bindir="$(pg_bindir)" || die "PostgreSQL binaries not found after install"; }
  command -v psql >/dev/null || export PATH="$bindir:$PATH"

  local base="$LOCAL/pg"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --create-home postgres
    # The server runs as `postgres`, which must reach its data directory; a project under a private home
    # directory is not reachable, so the cluster then lives under /var/tmp instead.
    if ! runuser -u postgres -- test -x "$LOCAL"; then
      base="/var/tmp/clickpacer-pg-$(printf '%s' "$ROOT" | md5sum | cut -c1-12)"
    fi
  fi
  local data="$base/data" run="$base/run" port_file="$base/port"
  mkdir -p "$run"
  [ "$(id -u)" = 0 ] && chown postgres "$base" "$run"

  if [ -f "$port_file" ] && as_pg "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "reusing PostgreSQL on port $(cat "$port_file")"
  else
    if [ ! -f "$data/PG_VERSION" ]; then
      log "initialising a PostgreSQL cluster in $data"
      rm -rf "$data"; mkdir -p "$data"
      [ "$(id -u)" = 0 ] && chown postgres "$data"
      as_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-sync >"$base/initdb.log" 2>&1 \
        || { cat "$base/initdb.log" >&2; die "initdb failed"; }
    fi
    local port; port="$(free_port)"
    echo "$port" >"$port_file"
    log "starting PostgreSQL on port $port"
    # Tuned for a throwaway test cluster: durability traded for speed (fsync off), enough connections for
    # parallel tests.
    as_pg "$bindir/pg_ctl" -D "$data" -l "$base/server.log" -w -t 60 start \
      -o "-p $port -k $run -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      >/dev/null || { tail -n 30 "$base/server.log" >&2; die "PostgreSQL did not start"; }
    STARTED_SERVICES+=("postgres:$bindir:$data")
  fi
  local port; port="$(cat "$port_file")"
  export PGHOST=127.0.0.1 PGPORT="$port" PGUSER=postgres
  if ! psql -d postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = 'clickpacer'" | grep -q 1; then
    psql -d postgres -qc 'CREATE DATABASE clickpacer' >/dev/null
  fi
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/clickpacer"
  export CLICKPACER_OWN_PG=1
  # Where the cluster is, for tools that restart it (the chaos runner).
  export CLICKPACER_PG_BINDIR="$bindir" CLICKPACER_PG_DATA="$data"
  if [ "$(id -u)" = 0 ]; then export CLICKPACER_PG_USER=postgres; fi
}

# Python tools live in project venvs, (re)installed when their requirements file changes: .venv for moto and
# the AWS CLI, .venv-deploy for cargo-lambda, the SAM CLI and cfn-lint (kept apart: their pins of the AWS Python
# libraries differ).
install_requirements() {
  local venv="$1" req="$2" stamp want
  stamp="$venv/.requirements.sha"
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  log "installing Python tools from $(basename "$req") into $(basename "$venv") (a minute or two the first time)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --progress-bar off -r "$req" 2>&1 \
    | show_progress "$venv/pip-install.log" '^(Collecting|Successfully installed)' 0 '^(ERROR|error)' \
    || { tail -n 30 "$venv/pip-install.log" >&2; die "pip install -r $req failed"; }
  echo "$want" >"$stamp"
}

ensure_venv() { install_requirements "$VENV" "$ROOT/scripts/requirements.txt"; }

ensure_deploy_venv() {
  install_requirements "$ROOT/.venv-deploy" "$ROOT/scripts/requirements-deploy.txt"
  export SAM_CLI_TELEMETRY=0
}

moto_ready() { curl -sf "http://127.0.0.1:$1/moto-api/" >/dev/null 2>&1; }

# `ensure_moto --quiet` says nothing when it reuses a running server (scripts/aws: its output is the CLI's).
ensure_moto() {
  ensure_venv
  local port_file="$LOCAL/moto.port" port
  if [ -f "$port_file" ] && moto_ready "$(cat "$port_file")"; then
    port="$(cat "$port_file")"
    [ "${1:-}" = --quiet ] || log "reusing the moto server on port $port"
  else
    port="$(free_port)"
    log "starting the moto server on port $port"
    nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$LOCAL/moto.log" 2>&1 &
    echo $! >"$LOCAL/moto.pid"
    echo "$port" >"$port_file"
    STARTED_SERVICES+=("moto:$!")
    for _ in $(seq 1 150); do moto_ready "$port" && break; sleep 0.2; done
    moto_ready "$port" || { tail -n 30 "$LOCAL/moto.log" >&2; die "moto server did not start"; }
  fi
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
  export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
  export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
  export AWS_EC2_METADATA_DISABLED=true
}

# wrk (Debian package): the plain HTTP load generator the bridge benchmark compares against.
ensure_wrk() {
  command -v wrk >/dev/null && return
  log "installing wrk (apt-get)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq wrk >/dev/null
  command -v wrk >/dev/null || die "wrk not found after install"
}

ensure_services() {
  ensure_postgres
  ensure_moto
}

# Runs a command as a child and waits for it, passing SIGINT and SIGTERM sent to this script's pid on to it:
# a service manager, or a person in another terminal, signals the script, not its process group. The child
# stops in its own way (the runner prints its reconciliation), then the EXIT trap stops the services.
run_child() {
  "$@" &
  local child=$! status=0
  trap 'kill -INT "$child" 2>/dev/null || true' INT
  trap 'kill -TERM "$child" 2>/dev/null || true' TERM
  # `wait` returns early when a trapped signal arrives; wait again until the child is gone.
  while :; do
    status=0
    wait "$child" || status=$?
    kill -0 "$child" 2>/dev/null || break
  done
  trap - INT TERM
  return "$status"
}

stop_started_services() {
  local svc
  for svc in "${STARTED_SERVICES[@]}"; do
    case "$svc" in
      postgres:*)
        local rest="${svc#postgres:}"
        log "stopping PostgreSQL"
        as_pg "${rest%%:*}/pg_ctl" -D "${rest#*:}" -m fast -w stop >/dev/null 2>&1 || true ;;
      moto:*)
        log "stopping the moto server"
        kill "${svc#moto:}" 2>/dev/null || true ;;
    esac
  done
  STARTED_SERVICES=()
}
