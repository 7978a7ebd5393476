# Sourced by the bin/ scripts: the virtualenv and the service defaults.
# Every value can be overridden from the environment.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VENV="${VENV:-$ROOT/.venv}"
export SERVICES_DIR="${SERVICES_DIR:-$ROOT/.services}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/posthog}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
# The broker bin/services starts (Tansu) or finds; the settings' own default is
# none, so that a deployment must name its brokers. ClickHouse: CLICKHOUSE_HOST
# (localhost), CLICKHOUSE_PORT (9000, native) and CLICKHOUSE_HTTP_PORT (8123)
# keep the settings' defaults unless set.
export KAFKA_HOSTS="${KAFKA_HOSTS:-127.0.0.1:9092}"

apt_install() {
    # Install Debian packages: as root, or through sudo when there is one.
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "apt-get install $* needs root (or sudo)" >&2; return 1; }
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 "$@"
}

ensure_venv() {
    # Create the virtualenv and install the pinned requirements once; again
    # whenever a requirements file changes.
    local stamp="$VENV/.requirements.sha"
    local want
    want="$(cat "$ROOT"/requirements*.txt | sha256sum | cut -d' ' -f1)"
    if [ ! -x "$VENV/bin/python" ]; then
        # Debian's own python3 ships venv's pip bootstrap separately.
        python3 -m venv --clear "$VENV" || { apt_install python3-venv && python3 -m venv --clear "$VENV"; }
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/requirements-dev.txt"
        echo "$want" > "$stamp"
    fi
    export PATH="$VENV/bin:$PATH"
}

ensure_js_vendor() {
    # The transpiler of JavaScript/TypeScript plugins (@babel/standalone, run
    # inside V8 by the main process): installed from vendor/js/package-lock.json
    # with the machine's npm, again whenever the lock file changes.
    local dir="$ROOT/vendor/js" stamp="$ROOT/vendor/js/node_modules/.lock.sha"
    local want
    want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        command -v npm >/dev/null || apt_install nodejs npm
        (cd "$dir" && npm ci --no-audit --no-fund --silent)
        echo "$want" > "$stamp"
    fi
}

dev_secret_key() {
    # A SECRET_KEY of this checkout for bin/demo and bin/shell, made once and
    # kept under SERVICES_DIR: no shared built-in key, no W001 warning. A
    # deployment sets its own SECRET_KEY (README, "In production").
    local file="$SERVICES_DIR/secret_key"
    if [ ! -s "$file" ]; then
        mkdir -p "$SERVICES_DIR"
        (umask 077 && "$VENV/bin/python" -c "import secrets; print(secrets.token_urlsafe(50))" >"$file")
    fi
    cat "$file"
}
