# Sourced by the bin/ scripts: the virtualenv and the service defaults.
# Every value can be overridden from the environment.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VENV="${VENV:-$ROOT/.venv}"
export SERVICES_DIR="${SERVICES_DIR:-$ROOT/.services}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/posthog}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

ensure_venv() {
    # Create the virtualenv and install the pinned requirements once; again
    # whenever a requirements file changes.
    local stamp="$VENV/.requirements.sha"
    local want
    want="$(cat "$ROOT"/requirements*.txt | sha256sum | cut -d' ' -f1)"
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/requirements-dev.txt"
        echo "$want" > "$stamp"
    fi
    export PATH="$VENV/bin:$PATH"
}
