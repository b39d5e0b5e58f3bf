"""An export that fails is never a 200 with an empty or short file that looks complete.

Before the first byte: a JSON error. After it: the connection ends without HTTP's final chunk.
"""
from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from annotate.exports import export
from tests.annotate.test_exports import URL, judged  # noqa: F401  (fixture)
from tests.conftest import api_client


def failing_lines(after: int):
    def build_lines(*args, **kwargs):
        for i in range(after):
            yield f'{{"row": {i}}}'
        raise RuntimeError("the database went away")
    return build_lines


def test_a_failure_before_the_first_byte_is_a_json_500(judged, rita, monkeypatch):  # noqa: F811
    monkeypatch.setattr(export, "build_lines", failing_lines(after=0))
    response = api_client(rita).get(URL)
    assert response.status_code == 500
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["code"] == "export_failed"
    assert "Traceback" not in response.json()["detail"]


def test_a_failure_mid_stream_aborts_the_download(judged, rita, monkeypatch):  # noqa: F811
    monkeypatch.setattr(export, "FLUSH_BYTES", 10)
    monkeypatch.setattr(export, "build_lines", failing_lines(after=5))
    response = api_client(rita).get(URL)
    assert response.status_code == 200
    chunks = iter(response.streaming_content)
    assert b'{"row": 0}' in next(chunks)
    with pytest.raises(RuntimeError):
        list(chunks)  # the WSGI server sees the error and cuts the connection


def test_an_empty_selection_is_still_a_valid_empty_file(judged, rita):  # noqa: F811
    response = api_client(rita).get(URL, {"models": "nobody"})
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b""


# The real ASGI app (config.asgi) with one extra URL: an export response whose rows fail after the first chunk.
FAILING_URLS = '''
from django.urls import path

from annotate.api.exports import ExportResponse
from config.urls import urlpatterns


def rows():
    yield b'{"row": 0}\\n'
    raise RuntimeError("the database went away")


urlpatterns = [path("broken-export/", lambda request: ExportResponse(rows(), content_type="application/jsonl")), *urlpatterns]
'''


def test_under_daphne_a_stream_that_fails_ends_without_its_final_chunk(tmp_path):
    (tmp_path / "failing_urls.py").write_text(FAILING_URLS)
    (tmp_path / "failing_settings.py").write_text('from config.settings import *  # noqa: F403\nROOT_URLCONF = "failing_urls"\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{root}", "DJANGO_SETTINGS_MODULE": "failing_settings"}
    daphne = subprocess.Popen(
        [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/broken-export/")
        response = connection.getresponse()
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead) as broken:
            response.read()  # without annotate/core/aborting.py: no end at all, a read timeout
        assert broken.value.partial == b'{"row": 0}\n'
    finally:
        daphne.terminate()
        daphne.wait(timeout=10)
