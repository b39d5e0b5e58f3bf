"""Connection defaults by server kind: a pool under ASGI (a thread per request), a connection per thread under WSGI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import {module}; from django.conf import settings; db = settings.DATABASES['default'];"
    " print(__import__('json').dumps([db['CONN_MAX_AGE'], 'pool' in db.get('OPTIONS', {}), db['CONN_HEALTH_CHECKS']]))"
)


def settings_under(module: str) -> list:
    env = {k: v for k, v in os.environ.items() if k != "CONN_MAX_AGE"}
    env["DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/arbiter_probe"  # only parsed, never connected
    out = subprocess.run([sys.executable, "-c", PROBE.replace("{module}", module)], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("module", "expected"), [
    ("config.asgi", [0, True, True]),   # daphne: borrow from a bounded pool
    ("config.wsgi", [60, False, True]),  # granian/gunicorn: fixed threads, one checked connection each
])
def test_each_server_kind_gets_its_safe_connection_default(module, expected):
    assert settings_under(module) == expected
