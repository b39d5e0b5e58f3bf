"""Labeling throughput: N concurrent simulated labelers (next, then submit) against a running server.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/arbiter_bench \\
        .venv/bin/python bench/labeling.py --labelers 100 --tasks 100000 --seconds 30 [--rate 200]

Seeds a campaign of --tasks pairwise tasks (once; reused on later runs), starts the server
(granian or gunicorn WSGI workers, or daphne, or --url for one you started), drives the labelers
over loopback with aiohttp, then prints judgements/s, p50/p95/p99 latency of next and submit,
the CPU each side used per judgement, and a consistency check straight from the database: no
task over-served, every 201 stored. Without --rate each labeler goes as fast as the server lets
it (closed loop: the server's capacity); with --rate the labelers start judgements at random
times at that total rate (open loop: the latency people see at that load).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

import aiohttp  # noqa: E402
import psutil  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from annotate.api.tokens import issue_token  # noqa: E402
from annotate.models import Campaign, Judgement, Membership, ModelVersion, Prompt, Response, Task, TaskResponse  # noqa: E402


def seed(slug: str, tasks: int, labelers: int, overlap: int) -> list[str]:
    """The campaign (created once, with bulk inserts) and the labelers' API tokens."""
    campaign = Campaign.objects.filter(slug=slug).first()
    if campaign is None:
        campaign = _create_campaign(slug, tasks, overlap)
    User = get_user_model()
    tokens = []
    for i in range(labelers):
        user, _ = User.objects.get_or_create(username=f"bench-labeler-{i}")
        Membership.objects.get_or_create(campaign=campaign, user=user, defaults={"role": "labeler"})
        tokens.append(issue_token(user))  # keys are stored hashed: a fresh one per run
    return tokens


def _create_campaign(slug: str, tasks: int, overlap: int) -> Campaign:
    started = time.perf_counter()
    with transaction.atomic():
        campaign = Campaign.objects.create(name=slug, slug=slug, task_type="pairwise", responses_per_task=2, overlap=overlap, lease_seconds=600)
        models = [ModelVersion.objects.get_or_create(name=f"bench-model-{m}")[0] for m in "ab"]
        for start in range(0, tasks, 10_000):
            count = min(10_000, tasks - start)
            prompts = Prompt.objects.bulk_create(
                Prompt(campaign=campaign, external_id=f"p{start + i}", messages=[{"role": "user", "content": f"Question {start + i}?"}]) for i in range(count)
            )
            responses = Response.objects.bulk_create(
                Response(prompt=p, model_version=m, text=f"{m.name} answers {p.external_id}. " * 8) for p in prompts for m in models
            )
            new_tasks = Task.objects.bulk_create(Task(campaign=campaign, prompt=p, judgements_needed=overlap, remaining=overlap) for p in prompts)
            TaskResponse.objects.bulk_create(
                TaskResponse(task=t, response=r, position=j) for t, i in zip(new_tasks, range(count)) for j, r in enumerate(responses[2 * i : 2 * i + 2])
            )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # fresh planner statistics after a bulk load, as autovacuum would do
    print(f"seeded {tasks} tasks in {time.perf_counter() - started:.1f} s")
    return campaign


def start_server(kind: str, port: int, workers: int, threads: int) -> subprocess.Popen:
    # gunicorn and granian threads keep their connections; daphne runs each request in a fresh thread, so
    # persistent connections would pile up past PostgreSQL's max_connections: close them per request.
    env = {**os.environ, "CONN_MAX_AGE": "0" if kind == "daphne" else "600", "LOG_LEVEL": "WARNING"}
    if kind == "gunicorn":
        cmd = [sys.executable, "-m", "gunicorn", "config.wsgi:application", "-b", f"127.0.0.1:{port}", "-w", str(workers),
               "-k", "gthread", "--threads", str(threads), "--log-level", "warning", "--backlog", "2048"]
    elif kind == "granian":
        cmd = [str(Path(sys.executable).parent / "granian"), "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--blocking-threads", str(threads), "--log-level", "warning", "config.wsgi:application"]
    else:
        cmd = [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port), "-v", "0", "config.asgi:application"]
    server = subprocess.Popen(cmd, cwd=ROOT, env=env)
    time.sleep(3 if kind == "gunicorn" else 4)
    return server


async def labeler(session, base: str, slug: str, token: str, window: tuple[float, float], stats: dict, interval: float) -> None:
    """next → submit in a loop; with `interval`, judgements start at random (Poisson), one per `interval` seconds on average.

    Latencies count for judgements started inside `window` (after the warm-up); every stored id is kept for the check.
    """
    measured_from, deadline = window
    headers = {"Authorization": f"Token {token}"}
    scheduled = time.perf_counter() + (random.expovariate(1 / interval) if interval else 0.0)
    while time.perf_counter() < deadline:
        due = scheduled
        if interval:
            # Open loop: starts follow each labeler's own Poisson schedule; one who is behind starts at once.
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            scheduled += random.expovariate(1 / interval)
        t0 = time.perf_counter()
        async with session.get(f"{base}/api/v1/campaigns/{slug}/tasks/next/", headers=headers) as r:
            if r.status == 204:
                return
            body = await r.json()
        t1 = time.perf_counter()
        ids = [x["id"] for x in body["responses"]]
        key = uuid.uuid4().hex
        async with session.post(
            f"{base}/api/v1/tasks/{body['task_id']}/judgements/",
            json={"ranking": [[ids[0]], [ids[1]]], "time_spent_ms": 1000},
            headers={**headers, "Idempotency-Key": key},
        ) as r:
            if r.status != 201:
                stats["errors"].append((r.status, await r.text()))
                continue
            stored = await r.json()
        stats["stored"].append(stored["id"])
        if measured_from <= t0 and time.perf_counter() <= deadline:
            stats["next"].append(t1 - t0)
            stats["submit"].append(time.perf_counter() - t1)
            stats["late"].append(max(0.0, t0 - due))  # open loop: how far behind its schedule a start was


async def drive(base: str, slug: str, tokens: list[str], args, server) -> tuple[dict, float, dict]:
    """Run the labelers; returns the stats, the measured seconds and the CPU used in that window."""
    stats: dict = {"next": [], "submit": [], "stored": [], "errors": [], "late": []}
    connector = aiohttp.TCPConnector(limit=len(tokens) + 10)
    async with aiohttp.ClientSession(connector=connector) as session:
        measured_from = time.perf_counter() + args.warmup
        window = (measured_from, measured_from + args.seconds)
        interval = len(tokens) / args.rate if args.rate else 0.0
        running = asyncio.gather(*(labeler(session, base, slug, t, window, stats, interval) for t in tokens))
        await asyncio.sleep(args.warmup)
        before = cpu_snapshot(server)
        await asyncio.sleep(args.seconds)
        after = cpu_snapshot(server)
        await running
    cpu = {name: after[name] - before[name] for name in after}
    return stats, args.seconds, cpu


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def cpu_snapshot(server: subprocess.Popen | None) -> dict[str, float]:
    """CPU seconds used so far by the server's processes, PostgreSQL's, and this load generator."""
    postgres = [p for p in psutil.process_iter(["name"]) if p.info["name"] and p.info["name"].startswith("postgres")]
    server_procs = []
    if server is not None:
        root = psutil.Process(server.pid)
        server_procs = [root, *root.children(recursive=True)]
    return {"server": cpu_seconds(server_procs), "postgres": cpu_seconds(postgres), "load generator": cpu_seconds([psutil.Process()])}


def percentiles(samples: list[float]) -> str:
    if len(samples) < 2:
        return "n/a"
    q = statistics.quantiles(samples, n=100)
    return f"p50 {q[49] * 1000:6.1f} ms  p95 {q[94] * 1000:6.1f} ms  p99 {q[98] * 1000:6.1f} ms"


def consistency(slug: str, stored_ids: list[int]) -> list[str]:
    """Problems found in the database after the run (an empty list is a pass)."""
    problems = []
    campaign = Campaign.objects.get(slug=slug)
    with connection.cursor() as cur:
        cur.execute(
            """SELECT count(*) FROM annotate_task t
               WHERE t.campaign_id = %s AND (t.remaining < 0 OR t.judgements_received > t.judgements_needed
                 OR t.judgements_received <> (SELECT count(*) FROM annotate_judgement j WHERE j.task_id = t.id AND NOT j.is_surplus)
                 OR (SELECT count(*) FROM annotate_assignment a WHERE a.task_id = t.id AND a.state IN ('open', 'submitted')) > t.judgements_needed)""",
            [campaign.pk],
        )
        if (bad := cur.fetchone()[0]):
            problems.append(f"{bad} tasks over-served or with counters out of step")
        cur.execute("SELECT count(*) FROM (SELECT task_id, labeler_id FROM annotate_assignment GROUP BY 1, 2 HAVING count(*) > 1) d")
        if (twice := cur.fetchone()[0]):
            problems.append(f"{twice} tasks served twice to one labeler")
    found = Judgement.objects.filter(pk__in=stored_ids).count()
    if found != len(set(stored_ids)):
        problems.append(f"{len(set(stored_ids)) - found} acknowledged judgements missing")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelers", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--overlap", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60, help="measured seconds, after the warm-up")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of load before measuring (connections, first requests)")
    parser.add_argument("--rate", type=float, help="offered judgements/s, spread over the labelers (default: each as fast as it can)")
    parser.add_argument("--server", choices=["granian", "gunicorn", "daphne"], default="granian",
                        help="gunicorn only for comparison: pip install -r requirements-bench.txt")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (gunicorn, granian)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process (gunicorn, granian)")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--url", help="drive a server you started instead of starting one")
    parser.add_argument("--slug", help="campaign slug (default: bench-<tasks>)")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("Set DATABASE_URL to a PostgreSQL database: this benchmark is about PostgreSQL under concurrency.")
    slug = args.slug or f"bench-{args.tasks}"
    tokens = seed(slug, args.tasks, args.labelers, args.overlap)
    with connection.cursor() as cursor:
        # Start from the state autovacuum keeps a live database in (earlier runs left dead rows
        # at the head of the queue; some servers, like these machines', run with autovacuum off).
        cursor.execute("VACUUM ANALYZE annotate_task, annotate_assignment, annotate_judgement")
    connection.close()
    server = None if args.url else start_server(args.server, args.port, args.workers, args.threads)
    base = args.url or f"http://127.0.0.1:{args.port}"
    try:
        stats, elapsed, cpu = asyncio.run(drive(base, slug, tokens, args, server))
    finally:
        if server:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    done = len(stats["submit"])
    described = args.url or (f"{args.server} ({args.workers} workers x {args.threads} threads)" if args.server != "daphne" else "daphne")
    print(f"server: {described}  labelers: {args.labelers}  tasks: {args.tasks}  cpus: {os.cpu_count()}")
    offered = f"  offered {args.rate:.0f}/s" if args.rate else "  (closed loop: no pause between judgements)"
    print(f"judgements/s: {done / elapsed:8.1f}   ({done} in {elapsed:.1f} s, {len(stats['errors'])} errors){offered}")
    print(f"next:   {percentiles(stats['next'])}")
    print(f"submit: {percentiles(stats['submit'])}")
    if args.rate:  # large values mean the server held labelers back: the latencies above would understate it
        print(f"start behind schedule: {percentiles(stats['late'])}")
    if done:
        used = {name: seconds * 1000 / done for name, seconds in cpu.items() if server or name != "server"}
        print("CPU ms per judgement: " + ", ".join(f"{name} {ms:.1f}" for name, ms in used.items()))
    problems = consistency(slug, stats["stored"])
    print("consistency: " + ("OK (no task over-served, none served twice, every acknowledged judgement stored)" if not problems else "; ".join(problems)))
    if stats["errors"]:
        print("first errors:", stats["errors"][:3])
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
