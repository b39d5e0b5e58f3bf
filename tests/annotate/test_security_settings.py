"""Secrets and transport: login throttling, the CSP header, Swagger UI from local files, TLS settings."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

from django.test import Client

from tests.conftest import make_user

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


def test_the_sixth_bad_password_in_a_minute_is_refused_even_if_right(db):
    make_user("alice")
    client = Client()
    for _ in range(5):
        response = client.post("/login/", {"username": "alice", "password": "wrong"})
        assert response.status_code == 200
        assert b"didn&#x27;t match" in response.content or b"didn't match" in response.content
    refused = client.post("/login/", {"username": "alice", "password": "pw-alice"})
    assert refused.status_code == 429
    assert b"Too many failed attempts" in refused.content
    assert "_auth_user_id" not in client.session
    # another account is not held up
    make_user("bob")
    assert Client().post("/login/", {"username": "bob", "password": "pw-bob"}).status_code == 302


def test_a_good_password_within_the_limit_logs_in(db):
    make_user("alice")
    client = Client()
    for _ in range(4):
        client.post("/login/", {"username": "alice", "password": "wrong"})
    assert client.post("/login/", {"username": "alice", "password": "pw-alice"}).status_code == 302


def test_pages_carry_a_content_security_policy(db):
    policy = Client().get("/login/")["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]


def test_the_api_docs_load_only_local_files(db):
    client = Client()
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls and all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    assert "<script>" not in html  # the init script is a file too (the CSP allows no inline script)
    assert "cdn" not in html.lower()
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200 and b"SwaggerUIBundle" in script.content
    for url in urls:
        if url.startswith("/static/"):
            assert client.get(url).status_code == 200, url


def test_tls_turns_on_secure_cookies_hsts_and_the_proxy_header():
    code = ("from django.conf import settings as s; print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
            "s.SECURE_HSTS_SECONDS, s.SECURE_PROXY_SSL_HEADER)")
    def run(env):
        return subprocess.run(
            [sys.executable, "-c", f"import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); django.setup(); {code}"],
            env={**__import__("os").environ, **env}, capture_output=True, text=True, check=True,
        ).stdout.strip()
    assert run({"TLS": "1"}) == "True True 31536000 ('HTTP_X_FORWARDED_PROTO', 'https')"
    assert run({"TLS": "0"}) == "False False 0 None"


def test_with_redis_every_process_counts_the_same_failed_logins():
    """Two processes (two API workers) see one count: per-process memory would allow 5 tries each."""
    username = f"guess-{uuid.uuid4().hex}"
    def run(code):
        return subprocess.run(
            [sys.executable, "-c", "import django, os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); "
             f"django.setup(); from annotate.web.login import recent_failures, record_failure; {code}", username],
            env={**os.environ, "REDIS_URL": REDIS_URL}, capture_output=True, text=True, check=True,
        ).stdout.strip()
    run("[record_failure(sys.argv[1]) for _ in range(3)]")
    run("record_failure(sys.argv[1])")
    assert run("print(recent_failures(sys.argv[1]))") == "4"


def test_with_redis_unreachable_logging_in_still_works_and_failures_are_not_counted(db, settings):
    """The cache is a brake, not data: Redis down must not turn the login page into a 500."""
    settings.CACHES = {"default": {"BACKEND": "annotate.core.cache.TolerantRedisCache", "LOCATION": "redis://127.0.0.1:1/0",
                                   "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}}}
    make_user("alice")
    client = Client()
    assert client.post("/login/", {"username": "alice", "password": "wrong"}).status_code == 200
    assert client.post("/login/", {"username": "alice", "password": "pw-alice"}).status_code == 302
