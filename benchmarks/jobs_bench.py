"""Benchmark: plugin jobs through the job consumer and the sandboxed worker pool.

Usage (from the repository root, services running):

    REDIS_URL=redis://127.0.0.1:6379/9 .venv/bin/python benchmarks/jobs_bench.py [--jobs N] [--concurrency C ...]

Creates a throw-away database (``bench_posthog_jobs``), stores N due jobs of
one small plugin (``meta.jobs.NAME(payload).run_now()`` is one INSERT each,
as in production), then for each JOBS_WORKERS value C drains them with a
JobConsumer on a WorkerPool of 2 workers, polling as the server does
(JOB_POLL_INTERVAL 0.2 s, or less with ``--poll``). Prints enqueue rate,
jobs/s run and the main process's CPU per job.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.test")
os.environ.setdefault("PLUGIN_SERVER_TEST_DB", "bench_posthog_jobs")

import django  # noqa: E402

PLUGIN = """
def count(payload, meta):
    return payload['n'] * 2

jobs = {'count': count}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--poll", type=float, default=0.2)
    args = parser.parse_args()
    django.setup()
    from django.db import connection

    from plugin_server.job_consumer import JobConsumer, JobSettings
    from plugin_server.jobs import enqueue_job, pending_jobs
    from plugin_server.locks import LockKeeper, RedisLock
    from plugin_server.plugins.meta.context import PluginContext
    from plugin_server.workers.pool import PoolSettings, WorkerPool
    from tests.workers.helpers import install

    test_db = connection.creation.create_test_db(verbosity=0, keepdb=False, serialize=False)
    try:
        config = install(PLUGIN)
        ctx = PluginContext(config.id, config.plugin_id, config.team_id, "bench")
        pool = WorkerPool(PoolSettings.from_config(concurrency=2, task_timeout=5.0))
        pool.start()
        try:
            for concurrency in args.concurrency:
                started = time.perf_counter()
                for n in range(args.jobs):
                    enqueue_job(ctx, "count", {"n": n}, datetime.now(timezone.utc))
                enqueue_rate = args.jobs / (time.perf_counter() - started)
                settings = JobSettings(concurrency=concurrency, poll_interval=args.poll, lease=60.0)
                consumer = JobConsumer(pool, LockKeeper(RedisLock(f"bench-jobs-{os.getpid()}", 10)), settings)
                cpu_before, wall_before = time.process_time(), time.perf_counter()
                consumer.start()
                while pending_jobs():
                    time.sleep(0.05)
                wall = time.perf_counter() - wall_before
                cpu = time.process_time() - cpu_before
                consumer.stop()
                print(
                    f"JOBS_WORKERS={concurrency}: enqueue {enqueue_rate:,.0f} jobs/s; ran {args.jobs} jobs in {wall:.1f} s = "
                    f"{args.jobs / wall:,.0f} jobs/s, main-process CPU {cpu / args.jobs * 1000:.2f} ms/job"
                )
        finally:
            pool.stop()
    finally:
        connection.close()
        connection.creation.destroy_test_db(test_db, verbosity=0)


if __name__ == "__main__":
    main()
