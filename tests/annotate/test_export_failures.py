"""An export that fails is never a 200 with an empty or short file that looks complete.

Before the first byte: a JSON error. After it: the connection ends without HTTP's final chunk.
"""
from __future__ import annotations

import http.client
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


FAILING_APP = '''
from annotate.core.aborting import abort_failed_responses

async def broken(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/jsonl")]})
    await send({"type": "http.response.body", "body": b'{"row": 0}\\n', "more_body": True})
    raise RuntimeError("the database went away")

application = abort_failed_responses(broken)
'''


def test_under_daphne_a_stream_that_fails_ends_without_its_final_chunk(tmp_path):
    (tmp_path / "failing_app.py").write_text(FAILING_APP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    daphne = subprocess.Popen(
        [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port), "failing_app:application"],
        cwd=tmp_path, env={"PYTHONPATH": f"{tmp_path}:{root}", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead) as broken:
            response.read()  # without the wrapper: no end at all, a read timeout
        assert broken.value.partial == b'{"row": 0}\n'
    finally:
        daphne.terminate()
        daphne.wait(timeout=10)
