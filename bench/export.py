"""Export throughput and memory: a million judgements to JSONL, streamed, against the naive way.

    .venv/bin/python bench/export.py                      # 1M judgements, every path
    .venv/bin/python bench/export.py --paths command,naive --json figures.json

Uses its own PostgreSQL database (created and migrated if missing; default arbiter_export_bench).
Seeds a pairwise campaign once, straight in SQL (INSERT ... SELECT generate_series): --judgements
judgements over judgements/overlap tasks, 100 labelers, 5% ties, 3% flagged. Then each path runs
in a fresh subprocess (or server) and reports rows/s and its peak RSS (VmHWM); the in-process
paths also report their CPU time and their PostgreSQL backend's, which the load of a shared
machine does not inflate (the load average is printed too):

- command: `manage.py export_preferences SLUG --shape pairs --format jsonl --out FILE`
- gunicorn / granian / daphne: GET /api/v1/campaigns/SLUG/export/ through a real WSGI / WSGI / ASGI
  server, read to the end by curl; the RSS is the server's, and the first byte's wait is reported
  (under WSGI the export is written to a temporary file before its first byte: api/exports.py)
- naive: what an export usually does: every judgement (with its task and prompt) and every
  response as ORM objects, the same pairs rows built into one list, then written; on the first
  --naive-judgements judgements (200k by default: it holds them all, about 3.5 GB)
- baseline: a process that only imports Django and the export code (the floor of every RSS)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLUG = "export-bench"
LABELERS = 100


def configure(database: str) -> None:
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{database}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak resident memory (VmHWM) of a process, in MB."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


# ---------------------------------------------------------------- database and data


def ensure_database(database: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
            conn.execute(f'CREATE DATABASE "{database}"')
            print(f"created database {database}")


def seed(judgements: int, overlap: int) -> str:
    """The bench campaign with exactly `judgements` judgements (seeded once; reseeded if the count differs)."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from annotate.models import Campaign, Judgement, Membership, ModelVersion

    campaign = Campaign.objects.filter(slug=SLUG).first()
    if campaign and Judgement.objects.filter(task__campaign=campaign).count() == judgements:
        return token_for_admin(campaign)
    if campaign:
        with connection.cursor() as cursor:  # cascade by hand: judgements and assignments PROTECT/bypass
            cursor.execute("TRUNCATE annotate_judgement, annotate_assignment, annotate_taskresponse, annotate_task, "
                           "annotate_response, annotate_prompt, annotate_snapshot CASCADE")
        campaign.delete()
    tasks = judgements // overlap
    assert tasks * overlap == judgements, "judgements must be a multiple of overlap"
    started = time.perf_counter()
    with transaction.atomic():
        campaign = Campaign.objects.create(name="Export bench", slug=SLUG, task_type="pairwise", responses_per_task=2, overlap=overlap)
        models = [ModelVersion.objects.get_or_create(name=f"bench-export-{m}", defaults={"round": i})[0] for i, m in enumerate("ab")]
        User = get_user_model()
        labelers = [User.objects.get_or_create(username=f"bench-export-labeler-{i}")[0] for i in range(LABELERS)]
        Membership.objects.bulk_create(Membership(campaign=campaign, user=u, role="labeler") for u in labelers)
        params = {"c": campaign.pk, "tasks": tasks, "overlap": overlap, "m1": models[0].pk, "m2": models[1].pk,
                  "labelers": [u.pk for u in labelers], "n": LABELERS}
        with connection.cursor() as cursor:
            for statement in SEED_SQL:
                cursor.execute(statement, params)
            cursor.execute("ANALYZE")
    print(f"seeded {judgements:,} judgements on {tasks:,} tasks in {time.perf_counter() - started:.0f} s")
    return token_for_admin(campaign)


SEED_SQL = [
    """INSERT INTO annotate_prompt (campaign_id, external_id, messages, context, metadata, created_at)
       SELECT %(c)s, 'p' || g, jsonb_build_array(jsonb_build_object('role', 'user', 'content',
              'Question ' || g || ': how do I keep a sourdough starter alive while travelling?')), '[]', '{}', now()
       FROM generate_series(0, %(tasks)s - 1) g""",
    """INSERT INTO annotate_response (prompt_id, model_version_id, text, generation_params, created_at)
       SELECT p.id, m.id, 'Answer of model ' || m.id || ' to ' || p.external_id || '. '
              || repeat('Feed it flour and water, keep it cool, and refresh it when you can. ', 6), '{}', now()
       FROM annotate_prompt p CROSS JOIN (VALUES (%(m1)s::bigint), (%(m2)s::bigint)) AS m(id)
       WHERE p.campaign_id = %(c)s""",
    """INSERT INTO annotate_task (campaign_id, prompt_id, priority, is_gold, judgements_needed, judgements_received, remaining, created_at)
       SELECT %(c)s, p.id, 0, false, %(overlap)s, %(overlap)s, 0, now() FROM annotate_prompt p WHERE p.campaign_id = %(c)s""",
    """INSERT INTO annotate_taskresponse (task_id, response_id, position)
       SELECT t.id, r.id, (row_number() OVER (PARTITION BY t.id ORDER BY r.id)) - 1
       FROM annotate_task t JOIN annotate_response r ON r.prompt_id = t.prompt_id WHERE t.campaign_id = %(c)s""",
    """INSERT INTO annotate_assignment (task_id, labeler_id, campaign_id, state, leased_at, leased_until, finished_at)
       SELECT t.id, (%(labelers)s::bigint[])[1 + ((t.id * %(overlap)s + s) %% %(n)s)], %(c)s, 'submitted', now(), now(), now()
       FROM annotate_task t CROSS JOIN generate_series(0, %(overlap)s - 1) s WHERE t.campaign_id = %(c)s""",
    """INSERT INTO annotate_judgement (assignment_id, task_id, labeler_id, ranking, rationale, flags, ratings, time_spent_ms,
                                      is_surplus, created_at)
       SELECT a.id, a.task_id, a.labeler_id,
              CASE WHEN x < 0.05 THEN jsonb_build_array(jsonb_build_array(r.lo, r.hi))
                   WHEN x < 0.6 THEN jsonb_build_array(jsonb_build_array(r.lo), jsonb_build_array(r.hi))
                   ELSE jsonb_build_array(jsonb_build_array(r.hi), jsonb_build_array(r.lo)) END,
              CASE WHEN x < 0.2 THEN 'The first one answers the question.' ELSE '' END,
              CASE WHEN y < 0.03 THEN '["unsafe"]'::jsonb ELSE '[]'::jsonb END,
              '{}', (1000 + y * 60000)::int, false, now() - y * interval '30 days'
       FROM (SELECT a.*, random() AS x, random() AS y FROM annotate_assignment a WHERE a.campaign_id = %(c)s) a
       JOIN (SELECT task_id, min(response_id) AS lo, max(response_id) AS hi FROM annotate_taskresponse GROUP BY task_id) r
         ON r.task_id = a.task_id""",
]


def token_for_admin(campaign) -> str:
    from django.contrib.auth import get_user_model

    from annotate.api.tokens import issue_token
    from annotate.models import Membership

    admin, _ = get_user_model().objects.get_or_create(username="bench-export-admin")
    Membership.objects.get_or_create(campaign=campaign, user=admin, defaults={"role": "admin"})
    return issue_token(admin)  # keys are stored hashed: a fresh one per run


# ---------------------------------------------------------------- the paths (each in its own process)


def child(path: str, out: str, limit: int | None) -> dict:
    """Run one path in this (fresh) process; returns rows, seconds and peak RSS."""
    started = time.perf_counter()
    if path == "baseline":
        import annotate.exports.export  # noqa: F401

        rows = 0
    elif path == "command":
        from io import StringIO

        from django.core.management import call_command

        err = StringIO()
        call_command("export_preferences", SLUG, "--shape", "pairs", "--format", "jsonl", "--out", out, stderr=err)
        rows = json.loads(err.getvalue().split(": ", 1)[1])["rows"]
    elif path == "naive":
        rows = naive_export(out, limit)
    else:
        raise ValueError(path)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"rows": rows, "seconds": seconds, "peak_rss_mb": peak_rss_mb(), "cpu_s": usage.ru_utime + usage.ru_stime, "db_cpu_s": db_cpu_seconds()}


def db_cpu_seconds() -> float:
    """CPU time of this process's PostgreSQL backend so far (the server runs on this machine)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def naive_export(out: str, limit: int | None) -> int:
    """The obvious export: every judgement and response as ORM objects in memory, the rows in one list."""
    from annotate.exports.rows import LabelerNames
    from annotate.models import Campaign, Judgement, Response
    from training.preferences import ranking_to_pairs

    campaign = Campaign.objects.get(slug=SLUG)
    qs = Judgement.objects.filter(task__campaign=campaign, task__is_gold=False).select_related("task__prompt").order_by("task_id", "id")
    judgements = list(qs[:limit] if limit else qs)
    # (prefetch_related("task__slots") would pass one parameter per task: over 65,535 PostgreSQL refuses)
    responses = {r.pk: r for r in Response.objects.filter(prompt__campaign=campaign).select_related("model_version")}
    names = LabelerNames(campaign)
    rows = []
    for j in judgements:
        for better, worse in ranking_to_pairs(j.ranking):
            chosen, rejected = responses[better], responses[worse]
            rows.append({
                "prompt": j.task.prompt.messages,
                "chosen": [{"role": "assistant", "content": chosen.text}],
                "rejected": [{"role": "assistant", "content": rejected.text}],
                "prompt_id": j.task.prompt.external_id, "chosen_id": better, "rejected_id": worse,
                "chosen_model": chosen.model_version.name, "rejected_model": rejected.model_version.name,
                "task_id": j.task_id, "judgement_id": j.pk, "labeler": names(j.labeler_id),
            })
    with open(out, "w") as f:
        f.write("".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in rows))
    return len(rows)


def run_child(path: str, database: str, limit: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--database", database, "--child", path, "--out", f"{tmp}/out.jsonl"]
        if limit is not None:
            cmd += ["--naive-judgements", str(limit)]
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"{path} failed:\n{result.stderr[-3000:]}")
        report = json.loads(result.stdout.strip().splitlines()[-1])
        report["bytes"] = Path(f"{tmp}/out.jsonl").stat().st_size if path != "baseline" else 0
    return report


def run_server(kind: str, database: str, token: str, port: int) -> dict:
    """Serve with gunicorn (1 sync worker), granian (WSGI, 1 worker) or daphne, download the export to the end, read the server's VmHWM."""
    env = {**os.environ, "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database}", "LOG_LEVEL": "WARNING"}
    if kind == "gunicorn":
        cmd = [sys.executable, "-m", "gunicorn", "config.wsgi:application", "-b", f"127.0.0.1:{port}", "-w", "1", "--timeout", "900", "--log-level", "warning"]
    elif kind == "granian":
        cmd = [str(Path(sys.executable).parent / "granian"), "--interface", "wsgi", "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "config.wsgi:application"]
    else:
        cmd = [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port), "-v", "0", "config.asgi:application"]
    server = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        url = f"http://127.0.0.1:{port}/api/v1/campaigns/{SLUG}/export/?shape=pairs&format=jsonl"
        wait_for(f"http://127.0.0.1:{port}/login/")
        started = time.perf_counter()
        rows, size, first_byte = download(url, token)
        seconds = time.perf_counter() - started
        pids = [server.pid] + [int(p) for p in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()]
        return {"rows": rows, "seconds": seconds, "peak_rss_mb": max(peak_rss_mb(pid) for pid in pids), "bytes": size, "first_byte_s": first_byte}
    finally:
        server.terminate()
        server.wait(timeout=30)


def download(url: str, token: str) -> tuple[int, int, float]:
    """(lines, bytes, seconds to the first byte) of the response, read by curl | wc (C tools: the client should not be the bottleneck)."""
    if shutil.which("curl"):
        shell = f"set -o pipefail; curl -sSf -w '%{{stderr}}%{{time_starttransfer}}' -H 'Authorization: Token {token}' '{url}' | wc -lc"
        done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, check=True)
        lines, size = done.stdout.split()
        return int(lines), int(size), float(done.stderr)
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
    rows = size = 0
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=900) as response:
        first_byte = time.perf_counter() - started
        while chunk := response.read(1 << 20):
            rows, size = rows + chunk.count(b"\n"), size + len(chunk)
    return rows, size, first_byte


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except Exception:
            time.sleep(0.5)
    raise RuntimeError(f"server did not answer at {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="arbiter_export_bench")
    parser.add_argument("--judgements", type=int, default=1_000_000)
    parser.add_argument("--overlap", type=int, default=2, help="judgements per task")
    parser.add_argument("--paths", default="baseline,command,gunicorn,granian,daphne,naive")
    parser.add_argument("--naive-judgements", type=int, default=200_000,
                        help="judgements the naive path exports (it holds them all: about 3.5 GB at 200k; 0 for all)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        configure(args.database)
        print(json.dumps(child(args.child, args.out, args.naive_judgements)))
        return
    ensure_database(args.database)
    configure(args.database)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    token = seed(args.judgements, args.overlap)
    load_before, figures = os.getloadavg()[0], {}
    for path in args.paths.split(","):
        if path in ("gunicorn", "granian", "daphne"):
            report = run_server(path, args.database, token, args.port)
        else:
            report = run_child(path, args.database, args.naive_judgements if path == "naive" else None)
        report["rows_per_s"] = report["rows"] / report["seconds"] if report["rows"] else 0.0
        figures[path] = report
        cpu = f"  CPU {report['cpu_s']:5.1f} s + database {report['db_cpu_s']:5.1f} s" if "cpu_s" in report else ""
        cpu += f"  first byte after {report['first_byte_s']:.2f} s" if "first_byte_s" in report else ""
        print(f"{path:9} {report['rows']:>9,} rows  {report['seconds']:7.1f} s  {report['rows_per_s']:>9,.0f} rows/s  "
              f"peak RSS {report['peak_rss_mb']:6.0f} MB  {report['bytes'] / 1e6:7.1f} MB out{cpu}", flush=True)
    load_after = os.getloadavg()[0]
    print(f"load average (1 min) before: {load_before:.1f}, after: {load_after:.1f} on {os.cpu_count()} cores")
    if "naive" in figures and "command" in figures:
        naive, ours = figures["naive"], figures["command"]
        per_cpu = [r["rows"] / (r["cpu_s"] + r["db_cpu_s"]) for r in (ours, naive)]
        print(f"command vs naive: {ours['rows_per_s'] / naive['rows_per_s']:.1f}x the rows/s, {per_cpu[0] / per_cpu[1]:.1f}x the rows "
              f"per CPU second, {naive['peak_rss_mb'] / ours['peak_rss_mb']:.1f}x less peak memory (naive on {naive['rows']:,} rows)")
    if args.json:
        meta = {"judgements": args.judgements, "overlap": args.overlap, "cores": os.cpu_count(), "load_average": [load_before, load_after]}
        Path(args.json).write_text(json.dumps(meta | {"paths": figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
