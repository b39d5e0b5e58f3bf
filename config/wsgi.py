import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# A WSGI server (granian, gunicorn) runs a fixed set of threads, so a connection kept per thread is
# bounded (workers × threads) and costs no pool checkout per request: 1.4× the judgements/s of the
# pool in bench/labeling.py (docs/benchmarks.md). Health checks still replace a dropped connection
# before a request uses it. Under ASGI (daphne: a thread per request) the pool stays the default.
os.environ.setdefault("CONN_MAX_AGE", "60")
application = get_wsgi_application()
