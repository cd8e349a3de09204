#!/usr/bin/env bash
# `make up` / `make down` with a Docker engine (the Makefile calls this; local mode is
# stack/local.py).
#
#   deploy/compose_up.sh mode        prints docker or local (STACK_MODE=auto|docker|local)
#   deploy/compose_up.sh up [SCALE]  .env (generated when missing), checks, compose up --wait, URLs
#   deploy/compose_up.sh down        compose down; the named volumes (data, models) stay
#
# Every refusal is one line on stderr that names the problem and what to do, exit 1, and
# nothing started.
set -uo pipefail
cd "$(dirname "$0")/.."

project="${COMPOSE_PROJECT_NAME:-boring-ml-stack}"
say() { echo "$*"; }
die() { echo "$*" >&2; exit 1; }

engine_answers() { docker info >/dev/null 2>&1; }

mode() {
    case "${STACK_MODE:-auto}" in
        local) echo local ;;
        docker) echo docker ;;
        auto) if engine_answers; then echo docker; else echo local; fi ;;
        *) die "up: STACK_MODE=${STACK_MODE} is not one of auto, docker, local" ;;
    esac
}

need_engine_and_compose() {
    command -v docker >/dev/null 2>&1 || die "$1: STACK_MODE=docker but there is no docker command; install Docker or use STACK_MODE=local"
    engine_answers || die "$1: no Docker engine answers (docker info fails); start it (e.g. sudo systemctl start docker) or use STACK_MODE=local"
    docker compose version >/dev/null 2>&1 || die "$1: the Docker engine answers but Compose v2 does not (docker compose version fails); install Docker's Compose plugin (https://docs.docker.com/compose/install/linux/), or run without Docker: make $1 STACK_MODE=local"
}

secret() { head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'; }  # URL-safe, 43 chars

# Variables docker-compose.yml requires (${NAME:?...}): .env must give each a value.
required_variables() { grep -o '\${[A-Z][A-Z0-9_]*:?' docker-compose.yml | sed 's/^\${//; s/:?$//' | sort -u; }

env_value() {  # the value .env gives $1, quotes stripped; exit 1 if the line is missing
    local line
    line="$(grep -E "^[[:space:]]*(export[[:space:]]+)?$1=" .env | tail -1)" || return 1
    line="${line#*=}"
    line="${line%\"}"; line="${line#\"}"; line="${line%\'}"; line="${line#\'}"
    printf '%s' "$line"
}

write_env() {
    [ -e .env ] && return 0
    [ -f .env.example ] || die "up: .env is missing and so is .env.example to make it from; restore it with git checkout .env.example"
    local tmp=".env.tmp.$$"
    (
        umask 077
        while IFS= read -r line || [ -n "$line" ]; do
            case "$line" in
                POSTGRES_PASSWORD=|GRAFANA_ADMIN_PASSWORD=|ADMIN_TOKEN=) echo "${line}$(secret)" ;;
                *) echo "$line" ;;
            esac
        done <.env.example >"$tmp"
    ) || { rm -f "$tmp"; die "up: could not write .env (is this folder writable?)"; }
    # ln refuses to replace an existing file: a .env that appeared meanwhile is never overwritten.
    if ln "$tmp" .env 2>/dev/null; then
        say "up: wrote .env from .env.example with generated secrets (mode 0600, git-ignored; it is never overwritten)"
    fi
    rm -f "$tmp"
}

check_env() {
    local name value
    for name in $(required_variables); do
        value="$(env_value "$name")" || die "up: .env has no $name line; add $name=<value> (see .env.example), or move .env away and rerun make up to get a generated one"
        [ -n "$value" ] || die "up: $name is empty in .env; set it (e.g. $name=$(secret)) and rerun make up"
    done
    value="$(env_value ADMIN_TOKEN || true)"
    if [ -n "$value" ] && [ ${#value} -lt 24 ]; then
        die "up: ADMIN_TOKEN in .env has ${#value} characters; the server refuses fewer than 24 in production. Make one with: head -c 32 /dev/urandom | base64"
    fi
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports() {
    local ours port
    # Ports this project's running containers publish are not "taken": a second `make up` is fine.
    ours="$(docker ps --filter "label=com.docker.compose.project=$project" --format '{{.Ports}}' 2>/dev/null)"
    for port in "$@"; do
        if listening "$port" && [[ "$ours" != *"127.0.0.1:$port->"* ]]; then
            die "up: port $port on 127.0.0.1 is already in use by another program; stop it (find it with: ss -ltnp 'sport = :$port') and rerun make up"
        fi
    done
}

compose_failed() {
    local code=$1
    if ! engine_answers; then
        die "up: the Docker engine stopped while the stack was starting (docker info fails); start it again and rerun make up (containers and volumes are kept; make down removes the containers)"
    fi
    die "up: docker compose up failed (exit $code, see above); docker compose ps -a and docker compose logs <service> show why; make down stops what started"
}

up() {
    local scale="${1:-1}" started=$SECONDS
    [[ "$scale" =~ ^[1-9][0-9]*$ ]] || die "up: SCALE=$scale is not a whole number >= 1"
    need_engine_and_compose up
    write_env
    check_env
    local ports=(8000 9090 3000) profile=()
    if [ "$scale" -gt 1 ]; then ports+=(8080); profile=(--profile scale); fi
    check_ports "${ports[@]}"
    GIT_COMMIT="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
    export GIT_COMMIT SCALE="$scale"
    say "up: docker compose up (project $project$([ "$scale" -gt 1 ] && echo ", $scale serve replicas behind nginx")); the first run builds the image, seeds and trains: a few minutes"
    docker compose "${profile[@]}" up -d --build --wait --wait-timeout 1800 --remove-orphans || compose_failed $?
    if [ "$scale" -gt 1 ]; then  # nginx reads the replicas' addresses at start: show it the current set
        docker compose exec -T nginx nginx -s reload >/dev/null 2>&1 || compose_failed $?
    fi
    docker compose "${profile[@]}" ps --format 'table {{.Service}}\t{{.Status}}\t{{.Ports}}'
    say ""
    say "up: the stack is up in $((SECONDS - started)) s (docker compose; make down stops it, the data stays)"
    say "  API         http://127.0.0.1:8000        docs: http://127.0.0.1:8000/docs"
    [ "$scale" -gt 1 ] && say "  balancer    http://127.0.0.1:8080        nginx over $scale serve-scaled replicas"
    say "  Prometheus  http://127.0.0.1:9090"
    say "  Grafana     http://127.0.0.1:3000        user admin, password: GRAFANA_ADMIN_PASSWORD in .env"
    say "  logs        docker compose logs -f serve trainer"
    # The examples come from features/spec.yml, read inside the image (the host needs no Python).
    local key
    key="$(docker compose exec -T serve python -m features key)" || compose_failed $?
    mkdir -p var
    docker compose exec -T serve python -m features example > var/example.json.tmp || compose_failed $?
    mv var/example.json.tmp var/example.json
    say "try it (scores $key with features computed from the stack's Postgres; var/example.json is a /predict body):"
    say "  curl -s -X POST http://127.0.0.1:8000/predict/user/$key"
    say "  curl -s -X POST http://127.0.0.1:8000/predict -H 'content-type: application/json' -d @var/example.json"
    if command -v curl >/dev/null 2>&1; then
        say "  -> $(curl -s --max-time 10 -X POST "http://127.0.0.1:8000/predict/user/$key")"
    fi
}

down() {
    need_engine_and_compose down
    # compose interpolates the whole file even to remove containers; without .env, say so harmlessly
    [ -e .env ] || export POSTGRES_PASSWORD="${POSTGRES_PASSWORD:-unused-by-down}" \
        GRAFANA_ADMIN_PASSWORD="${GRAFANA_ADMIN_PASSWORD:-unused-by-down}"
    docker compose --profile scale down --remove-orphans || {
        engine_answers || die "down: the Docker engine stopped (docker info fails); start it again and rerun make down"
        die "down: docker compose down failed (see above)"
    }
    say "down: the stack is stopped; its volumes stay (list: docker volume ls --filter label=com.docker.compose.project=$project; wipe: docker compose down -v)"
}

case "${1:-}" in
    mode) mode ;;
    up) shift; up "$@" ;;
    down) down ;;
    *) die "usage: deploy/compose_up.sh mode|up [SCALE]|down" ;;
esac
