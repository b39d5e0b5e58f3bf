"""Import throughput and memory: a preference JSONL of a million rows, streamed with COPY, against today's path.

    .venv/bin/python bench/import.py                              # 1M rows, the streaming path
    .venv/bin/python bench/import.py --rows 200000 --paths copy,whole
    .venv/bin/python bench/import.py --rows 20000 --json figures.json

Uses its own PostgreSQL database (created and migrated if missing; default arbiter_import_bench).
Writes a TRL-style preference JSONL of --rows rows (prompt, chosen, rejected, chosen_model,
rejected_model; about 180 bytes a row; the 200k-row file of issue 12 had 158), then imports
it into a fresh pairwise campaign once per path, each in a subprocess of its own, and reports rows/s
(file rows: each makes a prompt, two responses and a task), the subprocess's peak RSS (ru_maxrss), and
the CPU seconds of the subprocess and of its PostgreSQL backend (which a busy machine does not inflate
as it does the wall time):

- copy: what the background "import" run does now: open_source + import_source (on PostgreSQL the
  file is read a chunk at a time and written with COPY in one transaction)
- whole: today's path before the streaming change, the modules of annotate/campaigns/imports/ as they
  were in the commit before copying.py was added (git show), loaded under another package name:
  read_file (every row into memory), then import_records (every row checked, then bulk_create and
  build_tasks in one transaction)
- earlier: the copy path as of --earlier-commit (its annotate/campaigns/imports/, loaded the same way), for a
  before/after comparison in the same conditions (e.g. --paths earlier,copy,earlier,copy)
- baseline: a subprocess that only sets Django up and imports the import code (the floor of every RSS)

Between paths the imported rows are truncated, so each path starts from the same empty campaign.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_PACKAGE = "bench_old_imports"


def configure(database: str) -> None:
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{database}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def backend_cpu_s() -> float:
    """CPU seconds of this process's PostgreSQL backend so far (the server runs on this machine)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- database and data


def ensure_database(database: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
            conn.execute(f'CREATE DATABASE "{database}"')
            print(f"created database {database}")


def clear_imports() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE annotate_judgement, annotate_assignment, annotate_taskresponse, annotate_task, "
                       "annotate_response, annotate_prompt CASCADE")
        cursor.execute("DELETE FROM annotate_campaign WHERE slug LIKE 'import-bench-%%'")


WORDS = ("the starter keeps rising while flour water salt time heat bread crumb crust oven proof dough "
         "knead fold rest bake cool slice share recipe question answer model reply kind clear short").split()


def write_jsonl(path: Path, rows: int, seed: int = 0) -> None:
    """rows preference rows, about 160 bytes each; every prompt distinct."""
    rng = random.Random(seed)
    with open(path, "w") as out:
        for i in range(rows):
            prompt = f"Q{i}: " + " ".join(rng.choices(WORDS, k=5)) + "?"
            chosen = " ".join(rng.choices(WORDS, k=4)) + "."
            rejected = " ".join(rng.choices(WORDS, k=3)) + "."
            models = ("bench-a", "bench-b") if i % 2 else ("bench-b", "bench-a")
            out.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                                  "chosen_model": models[0], "rejected_model": models[1]}) + "\n")


# ---------------------------------------------------------------- the paths (each in its own subprocess)


def old_package(commit: str) -> Path:
    """annotate/campaigns/imports/ as of `commit`, under the package name bench_old_imports, in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="bench-import-old-"))
    package = folder / OLD_PACKAGE
    package.mkdir()
    names = subprocess.run(["git", "ls-tree", "--name-only", commit, "annotate/campaigns/imports/"],
                           cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    for name in names:
        source = subprocess.run(["git", "show", f"{commit}:{name}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
        (package / Path(name).name).write_text(source.replace("annotate.campaigns.imports.", f"{OLD_PACKAGE}."))
    return folder


def before_streaming() -> str:
    """The commit before copying.py was added: today's path."""
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "annotate/campaigns/imports/copying.py"],
                           cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    if not added:
        raise SystemExit("copying.py is not in this branch's history: name the old commit with --old-commit")
    return added[-1] + "^"


def child(path: str, file: str, old_folder: str) -> dict:
    from annotate.campaigns.imports import files
    from annotate.models import Campaign, Prompt, Response, Task

    if path in ("whole", "earlier"):
        sys.path.insert(0, old_folder)
        from bench_old_imports import files as old_files  # re-registers the "import" kind, in this process only
    baseline = peak_rss_mb()
    if path == "baseline":
        return {"path": path, "peak_rss_mb": baseline}
    campaign = Campaign.objects.create(name="Import bench", slug=f"import-bench-{path}", task_type="pairwise", responses_per_task=2, overlap=1)
    started, cpu, server_cpu = time.perf_counter(), time.process_time(), backend_cpu_s()
    if path in ("copy", "earlier"):
        module = files if path == "copy" else old_files
        with module.open_source(Path(file), "bench.jsonl") as source:
            summary = module.import_source(campaign, source, module.import_options({"kind": "preferences", "create_models": True}))
    else:
        fmt, records, errors = old_files.read_file(Path(file), "bench.jsonl")
        summary = old_files.import_records(campaign, fmt, records, errors, old_files.import_options({"kind": "preferences", "create_models": True}))
    seconds, cpu, server_cpu = time.perf_counter() - started, time.process_time() - cpu, backend_cpu_s() - server_cpu
    counts = (Prompt.objects.filter(campaign=campaign).count(), Response.objects.filter(prompt__campaign=campaign).count(),
              Task.objects.filter(campaign=campaign).count())
    return {"path": path, "rows": summary["rows"], "seconds": round(seconds, 1), "rows_per_s": round(summary["rows"] / seconds),
            "cpu_s": round(cpu, 1), "postgres_cpu_s": round(server_cpu, 1), "load_average": round(os.getloadavg()[0], 1),
            "prompts": counts[0], "responses": counts[1], "tasks": counts[2],
            "baseline_rss_mb": round(baseline), "peak_rss_mb": round(peak_rss_mb())}


def run_child(args, path: str, file: Path, old_folders: dict[str, Path]) -> dict:
    old_folder = old_folders.get(path, "")
    command = [sys.executable, __file__, "--database", args.database, "--child", path, "--file", str(file), "--old-folder", str(old_folder)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        print(done.stdout, done.stderr, file=sys.stderr)
        raise SystemExit(f"the {path} path failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="arbiter_import_bench")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--paths", default="baseline,copy", help="baseline, copy (streaming, COPY), whole (today's path), earlier (copy as of --earlier-commit)")
    parser.add_argument("--old-commit", help="the commit whose imports/ is today's path (default: the one before copying.py)")
    parser.add_argument("--earlier-commit", default="HEAD", help="the commit whose copy path is 'earlier' (default: HEAD, against the working tree)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--old-folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        configure(args.database)
        print(json.dumps(child(args.child, args.file, args.old_folder)))
        return
    ensure_database(args.database)
    configure(args.database)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    paths = args.paths.split(",")
    old_folders = {}
    if "whole" in paths:
        old_folders["whole"] = old_package(args.old_commit or before_streaming())
    if "earlier" in paths:
        old_folders["earlier"] = old_package(args.earlier_commit)
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        file = Path(tmp) / "preferences.jsonl"
        write_jsonl(file, args.rows)
        print(f"{args.rows:,} preference rows, {file.stat().st_size / 1024 / 1024:.1f} MB of JSONL; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        figures = []
        for path in paths:
            clear_imports()
            figure = run_child(args, path, file, old_folders)
            figures.append(figure)
            print(json.dumps(figure))
        clear_imports()
    print(f"\n{'path':<10}{'rows':>10}{'seconds':>9}{'rows/s':>9}{'CPU s':>7}{'PG CPU s':>10}{'peak RSS MB':>13}{'(baseline)':>11}")
    for f in figures:
        print(f"{f['path']:<10}{f.get('rows', ''):>10}{f.get('seconds', ''):>9}{f.get('rows_per_s', ''):>9}{f.get('cpu_s', ''):>7}"
              f"{f.get('postgres_cpu_s', ''):>10}{round(f['peak_rss_mb']):>13}{f.get('baseline_rss_mb', ''):>11}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
