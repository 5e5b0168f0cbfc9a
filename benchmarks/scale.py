"""The queue under several workers: claims + completions per second on SQLite and PostgreSQL.

    python benchmarks/scale.py [--jobs 2000] [--batch-size 4] [--sleep 0.02]
                               [--workers 1 2 4] [--postgres-url URL]

Each worker is a process running the daemon's queue cycle against one database: claim a
batch (lease), start it, "colorize" it with an engine that only sleeps --sleep seconds per
batch, then complete each job. The engine costs the same everywhere, so what differs
between rows is the queue: claim/complete round trips and lock contention. Reported per
(database, workers): jobs per second from the first claim to the last completion, the
ideal (workers x batch / sleep) and the share of it reached.

SQLite with several processes is measured for comparison only: semwatch runs one daemon per
SQLite database. PostgreSQL: --postgres-url (a database the benchmark may create databases
on, e.g. postgresql://postgres@127.0.0.1:5432/postgres), $SEMWATCH_TEST_POSTGRES_URL, else a
throw-away cluster started here as the tests do (Debian's postgresql package, as root).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import postgres_server  # noqa: E402  (tests/postgres_server.py: the throw-away cluster)
from machine import describe_machine  # noqa: E402

from semwatch.log import configure_logging  # noqa: E402
from semwatch.queue import Owner, SqlJobQueue  # noqa: E402

LEASE = 600.0


def _queue(url: str) -> SqlJobQueue:
    return SqlJobQueue(url, lease_seconds=LEASE, max_attempts=3, retry_backoff=1.0)


def _worker(url: str, batch: int, sleep: float, go, results) -> None:
    configure_logging("warning", "console")  # a line per claim would be measured too
    queue = _queue(url)
    owner = Owner.current()
    go.wait()
    done = 0
    first = last = None
    while jobs := queue.claim(owner, batch):
        first = first or time.perf_counter()
        queue.start(owner, [job.id for job in jobs])
        time.sleep(sleep)  # the engine: a fixed cost per batch
        for job in jobs:
            queue.complete(owner, job.id, f"out/{job.rel_path}")
        done += len(jobs)
        last = time.perf_counter()
    queue.close()
    results.put((done, first, last))


def measure(url: str, workers: int, jobs: int, batch: int, sleep: float) -> float:
    """Jobs per second with `workers` processes draining `jobs` fresh jobs from `url`."""
    queue = _queue(url)
    sha = "0" * 64
    queue.enqueue_many((f"f{i:06d}.tif", sha, 1, 1.0, 0.0) for i in range(jobs))
    queue.close()
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, batch, sleep, go, results)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    time.sleep(2.0)  # every worker imported and connected before the start
    go.set()
    outcomes = [results.get(timeout=3600) for _ in procs]
    for proc in procs:
        proc.join()
    total = sum(done for done, _, _ in outcomes)
    assert total == jobs, f"{total} jobs done of {jobs}"
    start = min(first for _, first, _ in outcomes if first is not None)
    end = max(last for _, _, last in outcomes if last is not None)
    return total / (end - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.02, help="engine seconds per batch")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--postgres-url", default=os.environ.get(postgres_server.ENV_URL))
    args = parser.parse_args()
    configure_logging("warning", "console")

    rows = []
    with ExitStack() as stack:
        admin = args.postgres_url or stack.enter_context(postgres_server.cluster())
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="semwatch-scale-")))
        for workers in args.workers:
            for name in ("sqlite", "postgresql"):
                if name == "sqlite":
                    url = f"sqlite:///{folder / f'queue-{workers}.db'}"
                else:
                    url = postgres_server.fresh_database(admin)
                rate = measure(url, workers, args.jobs, args.batch_size, args.sleep)
                if name == "postgresql":
                    postgres_server.drop_database(admin, url)
                ideal = workers * args.batch_size / args.sleep
                rows.append((name, workers, rate, ideal))
                print(f"  {name:10s} {workers} workers: {rate:7.0f} jobs/s", file=sys.stderr)

    print(f"machine: {describe_machine()}")
    print(
        f"{args.jobs} jobs, batches of {args.batch_size}, engine {args.sleep * 1000:.0f} ms per batch "
        "(claim + start + complete per job)"
    )
    print()
    print("| database   | workers | jobs/s | ideal jobs/s | share of ideal |")
    print("|------------|--------:|-------:|-------------:|---------------:|")
    for name, workers, rate, ideal in rows:
        print(f"| {name:10s} | {workers:7d} | {rate:6.0f} | {ideal:12.0f} | {rate / ideal:14.0%} |")


if __name__ == "__main__":
    main()
