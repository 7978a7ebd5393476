"""How long Ctrl-C takes: SIGINT to the process group, as a terminal sends it, until the process has exited.

Two commands are measured, each started afresh for every run:

- ``server``: ``./manage.py run_plugin_server`` on its own (Postgres and Redis
  already running);
- ``demo``: ``bin/demo``, which also migrates and sets up the demo first, and
  after the server stops the services it had to start (here: a Redis of its
  own on a free port, so that there is one to stop).

The signal is sent a varying time after "All systems go" (the consumer's and
listeners' polls are then at different points), and the clock stops when the
process is gone. Usage::

    REDIS_URL=redis://127.0.0.1:6379/8 DATABASE_URL=postgres://postgres@127.0.0.1:5432/posthog \\
        .venv/bin/python benchmarks/shutdown.py --runs 8
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def one_run(command: list[str], environment: dict[str, str], settle: float) -> float:
    """Seconds from SIGINT to the process's exit (the process must exit 0)."""
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    assert process.stdout is not None
    for line in process.stdout:
        if "All systems go" in line:
            break
    else:
        raise SystemExit(f"{command} ended before it was up:\n{process.communicate()[0]}")
    time.sleep(settle)
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    took = time.monotonic() - started
    if process.returncode != 0:
        raise SystemExit(f"{command} exited {process.returncode}:\n{output}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--only", choices=("server", "demo"))
    args = parser.parse_args()
    base = {**os.environ, "DISABLE_MMDB": "true", "PLUGINS_CELERY_QUEUE": "bench-shutdown",
            "PLUGINS_RELOAD_PUBSUB_CHANNEL": "bench-shutdown-reload", "SECRET_KEY": "bench-" + "k" * 50}
    commands = {
        "server": ([sys.executable, "manage.py", "run_plugin_server"], base),
        "demo": ([str(ROOT / "bin" / "demo")], base),
    }
    for name, (command, environment) in commands.items():
        if args.only and name != args.only:
            continue
        times = []
        for run in range(args.runs):
            if name == "demo":
                # A Redis of the demo's own on a free port: it starts it, and must stop it on the way out.
                environment = {**base, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "WEB_PORT": str(free_port()),
                               "SERVICES_DIR": tempfile.mkdtemp(prefix="bench-shutdown-")}
            times.append(one_run(command, environment, settle=1.0 + 0.37 * run))
        print(f"{name}: SIGINT to exit over {len(times)} runs: min {min(times):.2f} s, median "
              f"{statistics.median(times):.2f} s, max {max(times):.2f} s  ({', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
