"""Soak: many labelers for minutes while every database connection is killed every 30 s.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/arbiter_soak \\
        .venv/bin/python bench/soak.py --recipe demo --labelers 100 --minutes 10 --kill-every 30
    ... --recipe production   (granian for HTTP, daphne for websockets, REDIS_URL; as the README's recipe)

Starts the recipe's processes as `make demo` or the README start them (daphne, or granian and
daphne; `db_worker`; `housekeeping --every 30`), all with the default settings (no CONN_MAX_AGE),
then runs the labelers (next, think, submit with an Idempotency-Key; a 503 or a refused
connection is sent again after Retry-After, as a client should), starts a snapshot run every
30 s, keeps one dashboard websocket open (production: through Redis), and every --kill-every
seconds terminates every backend on the database (`pg_terminate_backend`). Prints judgements,
500s, retries, lost judgements (acknowledged but not stored), over-served tasks, runs left
queued or running, processes that died, and whether the websocket stayed open.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

import aiohttp  # noqa: E402
import psycopg  # noqa: E402
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model  # noqa: E402
from django.contrib.sessions.backends.db import SessionStore  # noqa: E402
from django.db import close_old_connections, connection  # noqa: E402
from labeling import consistency, seed  # noqa: E402  (bench/labeling.py: the campaign and the consistency check)

from annotate.api.tokens import issue_token  # noqa: E402
from annotate.jobs import engine  # noqa: E402
from annotate.models import Campaign, Membership, Run  # noqa: E402

BIN = Path(sys.executable).parent


def start_recipe(recipe: str, port: int, log_dir: Path) -> tuple[dict[str, subprocess.Popen], str, str]:
    """The recipe's processes by name, the HTTP base URL and the websocket base URL."""
    env = {k: v for k, v in os.environ.items() if k != "CONN_MAX_AGE"} | {"LOG_LEVEL": "WARNING"}
    manage = [sys.executable, "manage.py"]
    if recipe == "demo":  # the Makefile's demo target
        env.pop("REDIS_URL", None)
        commands = {
            "daphne": [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
            "db_worker": [*manage, "db_worker", "--queue-name", "*", "-v0"],
            "housekeeping": [*manage, "housekeeping", "--every", "30", "-v0"],
        }
        http, ws = port, port
    else:  # the README's production recipe
        env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/3")
        commands = {
            "granian": [str(BIN / "granian"), "--interface", "wsgi", "--workers", "2", "--blocking-threads", "8", "--host", "127.0.0.1",
                        "--port", str(port), "--log-level", "warning", "config.wsgi:application"],
            "daphne": [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port + 1), "config.asgi:application"],
            "db_worker": [*manage, "db_worker", "--queue-name", "default"],
            "housekeeping": [*manage, "housekeeping", "--every", "30"],
        }
        http, ws = port, port + 1
    processes = {
        name: subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=(log_dir / f"{name}.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        for name, cmd in commands.items()
    }
    wait_for(http, processes)
    wait_for(ws, processes)
    return processes, f"http://127.0.0.1:{http}", f"ws://127.0.0.1:{ws}"


def wait_for(port: int, processes: dict[str, subprocess.Popen]) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(2)  # the other processes start alongside
            return
        except OSError:
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes.values()):
                sys.exit(f"the recipe did not start: see var/soak-*/ logs ({ {n: p.poll() for n, p in processes.items()} })")
            time.sleep(0.5)


async def send(session, method: str, url: str, stats: dict, **kwargs):
    """One call, sent again while the answer is a 503 or the connection is refused; (status, body)."""
    for _attempt in range(100):
        try:
            async with session.request(method, url, **kwargs) as r:
                if r.status == 503:
                    stats["retries"] += 1
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                    continue
                body = await r.json() if r.content_type == "application/json" else await r.text()
                return r.status, body
        except (TimeoutError, aiohttp.ClientConnectionError):
            stats["retries"] += 1
            await asyncio.sleep(1)
    return 503, None


async def labeler(session, base: str, slug: str, token: str, until: float, think: float, ready: asyncio.Event, stats: dict) -> None:
    headers = {"Authorization": f"Token {token}"}
    await ready.wait()
    while time.monotonic() < until:
        status, task = await send(session, "GET", f"{base}/api/v1/campaigns/{slug}/tasks/next/", stats, headers=headers)
        if status == 204:
            return
        if status != 200:
            stats["errors"].append(("next", status, str(task)[:200]))
            continue
        await asyncio.sleep(random.expovariate(1 / think) if think else 0)
        ids = [r["id"] for r in task["responses"]]
        body = {"ranking": [[ids[0]], [ids[1]]], "time_spent_ms": 1000}
        status, stored = await send(session, "POST", f"{base}/api/v1/tasks/{task['task_id']}/judgements/", stats, json=body,
                                    headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
        if status in (200, 201):
            stats["acknowledged"].append(stored["id"])
        else:
            stats["errors"].append(("submit", status, str(stored)[:200]))


async def killer(dbname: str, every: float, until: float, stats: dict) -> None:
    async with await psycopg.AsyncConnection.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
        while (left := until - time.monotonic()) > 0:
            await asyncio.sleep(min(every, left))
            cur = await admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", [dbname]
            )
            stats["killed"].append((await cur.fetchone())[0])


async def runs_starter(campaign: Campaign, until: float, stats: dict) -> None:
    while (left := until - time.monotonic()) > 0:
        await asyncio.sleep(min(30, left))

        def start():
            close_old_connections()
            try:
                run = engine.start_run("snapshot", campaign=campaign, params={"name": f"soak-{uuid.uuid4().hex[:8]}"})
                stats["runs"].append(run.pk)
            except Exception as exc:  # the bench's own connection may be killed too: try again next time
                stats["bench_errors"].append(repr(exc))
                connection.close()

        await asyncio.to_thread(start)


async def watch_dashboard(ws_base: str, http_base: str, slug: str, cookie: str, until: float, ready: asyncio.Event, stats: dict) -> None:
    """One dashboard websocket for the whole soak, opened before the load starts; a close is
    recorded (time and code) and the socket opened again, as the page's script does."""
    headers = {"Origin": http_base, "Cookie": f"sessionid={cookie}"}
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < until:
            try:
                async with session.ws_connect(f"{ws_base}/ws/campaigns/{slug}/", headers=headers) as ws:
                    ready.set()
                    while time.monotonic() < until:
                        try:
                            message = await ws.receive(timeout=max(0.1, until - time.monotonic()))
                        except TimeoutError:
                            return
                        if message.type == aiohttp.WSMsgType.TEXT:
                            stats["ws_events"] += 1
                        elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            stats["ws_closes"].append((round(time.monotonic() - stats["t0"]), ws.close_code))
                            break
            except aiohttp.ClientError as exc:
                stats["ws_closes"].append((round(time.monotonic() - stats["t0"]), f"handshake: {exc}"))
                ready.set()
                await asyncio.sleep(1)


def admin_session(campaign: Campaign) -> str:
    user, _ = get_user_model().objects.get_or_create(username="soak-admin", defaults={"is_staff": True})
    Membership.objects.get_or_create(campaign=campaign, user=user, defaults={"role": "admin"})
    session = SessionStore()
    session[SESSION_KEY], session[BACKEND_SESSION_KEY] = str(user.pk), "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return session.session_key


async def soak(args, base: str, ws_base: str, slug: str, tokens: list[str], cookie: str) -> dict:
    campaign = await asyncio.to_thread(Campaign.objects.get, slug=slug)
    stats = {"acknowledged": [], "errors": [], "retries": 0, "killed": [], "runs": [], "bench_errors": [], "ws_events": 0, "ws_closes": [],
             "t0": time.monotonic()}
    until = time.monotonic() + args.minutes * 60
    ready = asyncio.Event()  # the dashboard's websocket is open: start the load
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=len(tokens) + 10), timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(
            *(labeler(session, base, slug, t, until, args.think, ready, stats) for t in tokens),
            killer(connection.settings_dict["NAME"], args.kill_every, until, stats),
            runs_starter(campaign, until, stats),
            watch_dashboard(ws_base, base, slug, cookie, until, ready, stats),
        )
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=["demo", "production"], default="demo")
    parser.add_argument("--labelers", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--kill-every", type=float, default=30, help="seconds between rounds of pg_terminate_backend")
    parser.add_argument("--think", type=float, default=2.0, help="mean seconds a labeler looks at a task before submitting")
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--port", type=int, default=8130)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("Set DATABASE_URL to a PostgreSQL database: the soak kills PostgreSQL connections.")
    slug = f"soak-{args.tasks}"
    seed(slug, args.tasks, args.labelers, overlap=3)
    # API keys are stored hashed: issue each bench labeler a fresh one (seed's are not usable)
    tokens = [issue_token(get_user_model().objects.get(username=f"bench-labeler-{i}")) for i in range(args.labelers)]
    cookie = admin_session(Campaign.objects.get(slug=slug))
    connection.close()
    log_dir = ROOT / "var" / f"soak-{args.recipe}"
    log_dir.mkdir(parents=True, exist_ok=True)
    processes, base, ws_base = start_recipe(args.recipe, args.port, log_dir)
    try:
        stats = asyncio.run(soak(args, base, ws_base, slug, tokens, cookie))
        connection.close()
        deadline = time.monotonic() + 120  # let the last runs finish
        while Run.objects.filter(pk__in=stats["runs"], status__in=["queued", "running"]).exists() and time.monotonic() < deadline:
            time.sleep(1)
        stuck = Run.objects.filter(pk__in=stats["runs"], status__in=["queued", "running"]).count()
        died = [name for name, p in processes.items() if p.poll() is not None]
    finally:
        for p in processes.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in processes.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    report(args, stats, slug, stuck, died)


def report(args, stats: dict, slug: str, stuck: int, died: list[str]) -> None:
    statuses = [status for status, *_ in Run.objects.filter(pk__in=stats["runs"]).values_list("status")]
    errors = stats["errors"]
    five_hundreds = sum(1 for _, status, _ in errors if status >= 500 and status != 503)
    problems = consistency(slug, stats["acknowledged"])
    print(f"recipe: {args.recipe}  labelers: {args.labelers}  minutes: {args.minutes}  kill every: {args.kill_every} s  think: {args.think} s  cpus: {os.cpu_count()}")
    print(f"judgements acknowledged: {len(stats['acknowledged'])} ({len(stats['acknowledged']) / (args.minutes * 60):.1f}/s)")
    print(f"500s: {five_hundreds}   other errors: {len(errors) - five_hundreds}   retries (503 or refused, then sent again): {stats['retries']}")
    print(f"connections killed: {sum(stats['killed'])} in {len(stats['killed'])} rounds")
    print("consistency: " + ("OK (lost 0, over-served 0, none served twice)" if not problems else "; ".join(problems)))
    print(f"runs started: {len(statuses)}  " + ", ".join(f"{s} {statuses.count(s)}" for s in sorted(set(statuses))) + f"  left queued/running: {stuck}")
    print(f"processes that died: {died or 'none'}")
    closes = stats["ws_closes"]
    print(f"dashboard websocket: {'closed ' + str(len(closes)) + ' times (second, code): ' + str(closes[:5]) if closes else 'open to the end'}"
          f" ({stats['ws_events']} events)")
    if errors:
        print("first errors:", errors[:5])
    if stats["bench_errors"]:
        print("the bench's own errors:", stats["bench_errors"][:3])


if __name__ == "__main__":
    main()
