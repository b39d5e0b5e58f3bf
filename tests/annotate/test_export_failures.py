"""An export that fails is never a 200 with an empty or short file that looks complete.

Before the first byte: a JSON error. After it (ASGI only: under WSGI the export is written whole
first): the connection ends without HTTP's final chunk.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

from annotate.exports import export
from tests.annotate.test_dashboard_browser import database_url, free_port
from tests.annotate.test_exports import URL, judged  # noqa: F401  (fixture)
from tests.conftest import api_client, api_key


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


def test_under_asgi_a_failure_mid_stream_aborts_the_download(judged, rita, monkeypatch):  # noqa: F811
    monkeypatch.setattr(export, "FLUSH_BYTES", 10)
    monkeypatch.setattr(export, "build_lines", failing_lines(after=5))
    token = api_key(rita)

    async def fetch():
        response = await AsyncClient().get(URL, headers={"Authorization": f"Token {token}"})
        chunks = aiter(response)
        first = await anext(chunks)
        with pytest.raises(RuntimeError):  # the ASGI server sees the error and cuts the connection
            async for _ in chunks:
                pass
        return response.status_code, first

    status, first = async_to_sync(fetch)()
    assert status == 200 and b'{"row": 0}' in first


def test_under_wsgi_a_failure_mid_export_is_still_a_json_500(judged, rita, monkeypatch):  # noqa: F811
    """Under WSGI the export is written whole before its first byte, so any failure can still change the status."""
    monkeypatch.setattr(export, "FLUSH_BYTES", 10)
    monkeypatch.setattr(export, "build_lines", failing_lines(after=5))
    response = api_client(rita).get(URL)
    assert response.status_code == 500
    assert response.json()["code"] == "export_failed"


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


# The real WSGI app (config.wsgi) whose JSONL exports fail after a thousand rows, well past the first chunk.
FAILING_EXPORTS = '''
from annotate.exports import export
from config.urls import urlpatterns  # noqa: F401


def build_lines(*args, **kwargs):
    for i in range(1000):
        yield f'{{"row": {i}}}'
    raise RuntimeError("the database went away")


export.build_lines = build_lines
export.FLUSH_BYTES = 100
'''


@pytest.mark.django_db(transaction=True)
def test_under_granian_wsgi_an_export_that_fails_half_way_is_a_500_not_a_short_file(judged, rita, tmp_path):  # noqa: F811
    """granian's WSGI interface ends a body that raises with HTTP's final chunk: streamed, this was a 200 with a
    complete-looking file of the first thousand rows."""
    (tmp_path / "failing_exports.py").write_text(FAILING_EXPORTS)
    (tmp_path / "failing_settings.py").write_text('from config.settings import *  # noqa: F403\nROOT_URLCONF = "failing_exports"\n')
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{root}", "DJANGO_SETTINGS_MODULE": "failing_settings", "DATABASE_URL": database_url()}
    log = tmp_path / "granian.log"
    granian = subprocess.Popen(
        [str(Path(sys.executable).parent / "granian"), "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
         "config.wsgi:application"],
        cwd=root, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    try:
        wait_for(port, granian, log)
        failed = get(port, URL, api_key(rita))
        assert failed.status == 500, failed.read()[-200:]
        assert json.loads(failed.read())["code"] == "export_failed"
        parquet = get(port, URL + "?format=parquet", api_key(rita))  # no JSON lines: this one succeeds
        data = parquet.read()  # http.client raises IncompleteRead if fewer bytes than Content-Length arrive
        assert parquet.status == 200 and int(parquet.headers["Content-Length"]) == len(data)
        assert len(pq.read_table(io.BytesIO(data))) == 10
    finally:
        granian.terminate()
        granian.wait(timeout=30)


def wait_for(port: int, server: subprocess.Popen, log: Path) -> None:
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert server.poll() is None, log.read_text()
            time.sleep(0.1)
    pytest.fail(f"the server did not start:\n{log.read_text()}")


def get(port: int, path: str, token: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", path, headers={"Authorization": f"Token {token}"})
    return connection.getresponse()
