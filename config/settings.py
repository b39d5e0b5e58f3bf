"""Arbiter settings: read from the environment once, fail loudly on a bad value.

Variables: DATABASE_URL, REDIS_URL, SECRET_KEY, DEBUG, ALLOWED_HOSTS, ARTIFACTS_DIR, MODEL_ROOTS; for a TLS deployment
TLS, SECURE_HSTS_SECONDS, SECURE_HSTS_INCLUDE_SUBDOMAINS, SECURE_HSTS_PRELOAD, SECURE_SSL_REDIRECT,
SECURE_PROXY_SSL_HEADER, CSP_REPORT_ONLY; LOGIN_FAILURES_ALLOWED, LOGIN_FAILURE_WINDOW_SECONDS.
Defaults are safe for the demo: SQLite under var/, DEBUG off, localhost only.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdigit()):
        raise ImproperlyConfigured(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def secret_key() -> str:
    """The configured key, or one kept in var/ so demo sessions survive restarts."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    key_file = VAR_DIR / "secret_key"
    VAR_DIR.mkdir(exist_ok=True)
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]
ARTIFACTS_DIR = Path(os.environ.get("ARTIFACTS_DIR", VAR_DIR / "artifacts"))
# Directories a model may be registered from (os.pathsep-separated): staff cannot make the server read other files.
HF_HUB_CACHE = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
MODEL_ROOTS = [Path(p) for p in os.environ.get("MODEL_ROOTS", "").split(os.pathsep) if p] or [ARTIFACTS_DIR, HF_HUB_CACHE]
REDIS_URL = os.environ.get("REDIS_URL", "")
# The queue that model work (generation, training) goes to; a GPU box runs `db_worker --queue-name gpu`.
ML_QUEUE = os.environ.get("ML_QUEUE", "default")
if ML_QUEUE not in ("default", "gpu"):
    raise ImproperlyConfigured(f"ML_QUEUE must be 'default' or 'gpu', got {ML_QUEUE!r}")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI from our own static files, not a CDN
    "csp",
    "django_filters",
    "django_htmx",
    "channels",
    "annotate",  # before django_tasks_db: its db_worker command shadows upstream's (reconnects)
    "django_tasks",
    "django_tasks_db",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "annotate.core.db.DatabaseUnavailableMiddleware",  # a lost database connection: 503, retry
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "annotate.core.middleware.RefuseBadTextMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database connections. On PostgreSQL each process keeps a pool (psycopg_pool, Django's "pool"
# option) that threads borrow a connection from for one request or job step and give back: right
# under daphne, which runs every request in a thread of its own (persistent per-thread connections
# piled up there until PostgreSQL refused clients), and under granian's threads alike. The pool
# checks a connection before lending it (CONN_HEALTH_CHECKS), so one that PostgreSQL dropped while
# idle is replaced instead of failing the next request.
#   CONN_MAX_AGE       unset or 0: the pool (PostgreSQL) or one connection per request (SQLite).
#                      N > 0: no pool; each thread keeps its own connection for N seconds (only for
#                      a WSGI server with a fixed set of threads; never under daphne). config/wsgi.py
#                      makes 60 the default under WSGI servers (cheaper per request than the pool).
#   DB_POOL_MAX_SIZE   connections per process at most (default 10); waiting longer than
#                      DB_POOL_TIMEOUT seconds (default 10) for one gives a 503, not a hang.
CONN_MAX_AGE = int(os.environ.get("CONN_MAX_AGE") or "0")
if CONN_MAX_AGE < 0:
    raise ImproperlyConfigured(f"CONN_MAX_AGE must be 0 or a number of seconds, got {CONN_MAX_AGE}")
DB_POOL_MAX_SIZE = int(os.environ.get("DB_POOL_MAX_SIZE") or "10")
DB_POOL_TIMEOUT = float(os.environ.get("DB_POOL_TIMEOUT") or "10")
if DB_POOL_MAX_SIZE < 1 or DB_POOL_TIMEOUT <= 0:
    raise ImproperlyConfigured("DB_POOL_MAX_SIZE must be at least 1 and DB_POOL_TIMEOUT above 0")
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'arbiter.sqlite3'}",
        conn_max_age=CONN_MAX_AGE,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["OPTIONS"] = {}
    if CONN_MAX_AGE == 0:
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": 1,
            "max_size": DB_POOL_MAX_SIZE,
            "timeout": DB_POOL_TIMEOUT,
            "max_idle": 300,
            "name": "arbiter",
        }
    if env_bool("PG_PREPARED_STATEMENTS", True):
        # Server-side parameters and prepared statements: PostgreSQL parses and plans each hot query
        # once per connection (a pooled connection keeps its prepared statements between borrowers).
        # Turn off (PG_PREPARED_STATEMENTS=0) behind a transaction-mode pooler such as PgBouncer.
        DATABASES["default"]["OPTIONS"].update({"server_side_binding": True, "prepare_threshold": 5})
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL and a busy timeout let the web server and the worker share the demo database.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not shared-cache memory: parallel connections then wait on locks instead of failing.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = True  # serve static/ without collectstatic (the demo runs with DEBUG off)

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# Request bodies: 10 MB is plenty for an import batch; larger bodies get a 413/400.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("DATA_UPLOAD_MAX_MEMORY_SIZE", str(10 * 1024 * 1024)))

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

# ---------------------------------------------------------------- security (TLS, CSP, login)
# TLS=1: the site is served over HTTPS (usually by a proxy in front of granian/daphne). Off by default
# so the demo works on http://localhost; on, cookies are Secure and browsers are told to use HTTPS only.
TLS = env_bool("TLS", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = TLS
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if TLS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)  # the proxy usually redirects; on, Django does
# The header by which the proxy says the client used HTTPS; trust it only behind a proxy that sets it.
_proxy_header = os.environ.get("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto" if TLS else "").strip()
SECURE_PROXY_SSL_HEADER = ("HTTP_" + _proxy_header.upper().replace("-", "_"), "https") if _proxy_header else None

# Content-Security-Policy (django-csp): scripts, styles, images and connections from this site only.
# Inline styles stay allowed: matplotlib's inline SVG figures and the progress bars carry style attributes.
# The two inline scripts (a select's onchange, a "Back" link) are allowed by their hashes.
_CSP: dict[str, list[str] | bool] = {
    "default-src": ["'self'"],
    "script-src": [
        "'self'",
        "'unsafe-hashes'",
        "'sha256-osjxnKEPL/pQJbFk1dKsF7PYFmTyMWGmVSiL9inhxJY='",  # onchange="this.form.submit()" (labelers page)
        "'sha256-LdlORHyUW/rwezK0l13nW+IwcZmi78eWOCBjewMWRr4='",  # href="javascript:history.back()" (admin messages)
    ],
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:"],  # data: for Swagger UI's icons
    "connect-src": ["'self'"],  # 'self' covers the dashboard's same-host websocket
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}
if TLS:
    _CSP["upgrade-insecure-requests"] = True
# CSP_REPORT_ONLY=1 sends the policy as Content-Security-Policy-Report-Only (try it before enforcing it).
CONTENT_SECURITY_POLICY = None if env_bool("CSP_REPORT_ONLY", False) else {"DIRECTIVES": _CSP}
CONTENT_SECURITY_POLICY_REPORT_ONLY = {"DIRECTIVES": _CSP} if env_bool("CSP_REPORT_ONLY", False) else None

# The cache holds failed logins (annotate/web/login.py) and dashboard statistics. With REDIS_URL set
# every process shares it: per-process memory would give each API worker its own count of failures.
# Short socket timeouts: a stalled Redis must not hold a login for long.
CACHES = {
    "default": (
        {
            "BACKEND": "annotate.core.cache.TolerantRedisCache",  # Redis down: a miss, not a 500
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "arbiter",
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# Login throttling (annotate/web/login.py): the 6th failed password for one username within a minute is refused.
LOGIN_FAILURES_ALLOWED = env_int("LOGIN_FAILURES_ALLOWED", 5)
LOGIN_FAILURE_WINDOW_SECONDS = env_int("LOGIN_FAILURE_WINDOW_SECONDS", 60)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "annotate.api.authentication.FastTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # DRF's parsers plus a 400 for NUL, lone surrogates and deep nesting (annotate/api/parsers.py)
    "DEFAULT_PARSER_CLASSES": [
        "annotate.api.parsers.JSONParser",
        "annotate.api.parsers.FormParser",
        "annotate.api.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "annotate.api.errors.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Arbiter API",
    "DESCRIPTION": "Human-feedback annotation and RLHF: campaigns, ranking tasks, judgements.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and Redoc from drf-spectacular-sidecar's static files (the machine may be offline)
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Each websocket waits for its next event in a blocking Redis read of 5 s (channels_redis's
# brpop_timeout); the client must wait longer than that for the reply, or every quiet websocket
# is closed with 1011 when its first wait ends (redis-py 8's default read timeout is 5 s).
REDIS_READ_TIMEOUT = 30
CHANNEL_LAYERS = {
    "default": (
        {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": REDIS_READ_TIMEOUT}]},
        }
        if REDIS_URL
        else {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    )
}

TASKS = {
    "default": {
        "BACKEND": "django_tasks_db.DatabaseBackend",
        "QUEUES": ["default", "gpu"],
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"refusal_without_traceback": {"()": "config.log_filters.RefusalWithoutTraceback"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["refusal_without_traceback"]}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
