"""Plain ``http(s)://`` inputs against a small HTTP server on 127.0.0.1 written here (http.server with byte
ranges, a request log, and switches: ignore ``Range``, publish ``Content-MD5``, redirect to a second port,
corrupt bytes in transit, report another length). Jobs run as the console command in a subprocess whose
proxies point at a closed local port (``_run`` of test_remote_sources.py); results are compared with the same
job on the local files, and the server's log shows every byte fetched once.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from common import only_error_line
from test_remote_sources import _left, _model, _run

UNVERIFIED = "read unverified (the server publishes no digest)"


class Site:
    """Files served at ``url``/NAME; ``log``: (method, name, start, end) of every answer with bytes."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.log: list[tuple[str, str, int, int]] = []
        self.requests: list[tuple[str, str]] = []
        self.ignore_range = False
        self.md5 = False
        self.corrupt: dict[str, bytes] = {}  # name -> the bytes sent instead (same length)
        self.total: dict[str, int] = {}  # name -> the length Content-Range reports instead
        self.redirect: str | None = None  # every request answered 302 to this base URL
        self._lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                site.answer(self, body=False)

            def do_GET(self) -> None:
                site.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        name = urlsplit(h.path).path.lstrip("/")
        with self._lock:
            self.requests.append((h.command, name))
        if self.redirect is not None:
            h.send_response(302)
            h.send_header("Location", f"{self.redirect}/{name}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if name not in self.files:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        data = self.files[name]
        sent = self.corrupt.get(name, data)
        start, end, status = 0, len(data), 200
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", h.headers.get("Range", ""))
        if m and not self.ignore_range:
            start, end, status = int(m.group(1)), min(int(m.group(2)) + 1, len(data)), 206
        h.send_response(status)
        h.send_header("Content-Length", str(end - start))
        h.send_header("Accept-Ranges", "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{self.total.get(name, len(data))}")
        if self.md5:
            h.send_header("Content-MD5", base64.b64encode(hashlib.md5(data).digest()).decode())
        h.end_headers()
        if body:
            with self._lock:
                self.log.append((h.command, name, start, end))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that refuses the answer
                h.wfile.write(sent[start:end])

    def fetched_once(self) -> dict[str, bool]:
        """Per file fetched: its ranges cover it exactly, no byte twice."""
        spans: dict[str, list[tuple[int, int]]] = {}
        for _method, name, start, end in self.log:
            spans.setdefault(name, []).append((start, end))
        out = {}
        for name, ranges in spans.items():
            ranges.sort()
            pos, ok = 0, True
            for a, b in ranges:
                ok = ok and a == pos
                pos = b
            out[name] = ok and pos == len(self.files[name])
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site({})
    yield s
    s.close()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    w = tmp_path / "work"
    w.mkdir()
    return w


def _serve(site: Site, tmp_path: Path, prefix: str, layout: str) -> tuple[Path, dict[str, bytes]]:
    folder, files = _model(tmp_path / prefix, layout)
    site.files.update({f"{prefix}/{n}": d for n, d in files.items()})
    return folder, files


def _tensors(r) -> dict:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["tensors"]


@pytest.mark.slow
def test_one_file_and_a_sharded_folder_match_the_local_run_each_byte_once(site, tmp_path, work):
    one, _ = _serve(site, tmp_path, "one", "safetensors")
    sharded, files = _serve(site, tmp_path, "sharded", "safetensors-sharded")
    for url, local in (
        (f"{site.url}/one/model.safetensors", one / "model.safetensors"),
        (f"{site.url}/sharded/", sharded),
    ):
        site.log.clear()
        remote = _run(["checksum", "--tensors", url, "--json"], {}, work)
        assert _tensors(remote) == _tensors(_run(["checksum", "--tensors", str(local), "--json"], {}, work))
        warnings = [n["text"] for n in json.loads(remote.stdout)["notices"] if n["level"] == "warning"]
        assert len(warnings) == 1 and UNVERIFIED in warnings[0] and "model" in warnings[0]
        assert all(site.fetched_once().values()) and site.fetched_once()

        site.log.clear()
        r = _run(["to-ckpt", url, "-o", str(work / "remote.ckpt")], {}, work)
        assert r.returncode == 0, r.stderr
        assert UNVERIFIED in r.stderr and "warning:" in r.stderr  # said, not hidden, on a run that exits 0
        assert _run(["to-ckpt", str(local), "-o", str(work / "local.ckpt")], {}, work).returncode == 0
        assert (work / "remote.ckpt").read_bytes() == (work / "local.ckpt").read_bytes()
        assert all(site.fetched_once().values())
        (work / "remote.ckpt").unlink()
        (work / "local.ckpt").unlink()
    # the sharded folder: every file it has, by name, fetched whole once (weights, index, config, tokenizer)
    assert set(site.fetched_once()) == {f"sharded/{n}" for n in files}
    assert _left(work) == []


@pytest.mark.slow
def test_dry_run_shows_the_url_and_the_bytes_from_head_fetching_headers_only(site, tmp_path, work):
    folder, files = _serve(site, tmp_path, "m", "safetensors-sharded")
    dry = ["--dry-run", "--json", "-o", str(work / "x.ckpt")]
    r = _run(["to-ckpt", f"{site.url}/m", *dry], {}, work)
    local = _run(["to-ckpt", str(folder), *dry], {}, work)
    assert r.returncode == 0 and local.returncode == 0, r.stderr + local.stderr
    remote_plan, local_plan = json.loads(r.stdout), json.loads(local.stdout)
    assert remote_plan["source"] == f"{site.url}/m"
    assert remote_plan["plan"]["input_bytes"] == local_plan["plan"]["input_bytes"]
    heads = {n for m, n in site.requests if m == "HEAD"}
    assert {f"m/{n}" for n in files} <= heads  # each file's size from its HEAD
    for _method, name, _start, end in site.log:  # headers only: no shard's data
        data = files[name.split("/", 1)[1]]
        if name.endswith(".safetensors"):
            assert end <= 8 + int.from_bytes(data[:8], "little")
    assert not (work / "x.ckpt").exists()


@pytest.mark.slow
def test_content_md5_is_checked_and_corruption_keeps_nothing(site, tmp_path, work):
    folder, files = _serve(site, tmp_path, "m", "safetensors-sharded")
    site.md5 = True
    r = _run(["checksum", "--tensors", f"{site.url}/m", "--json"], {}, work)
    assert _tensors(r) == _tensors(_run(["checksum", "--tensors", str(folder), "--json"], {}, work))
    assert UNVERIFIED not in r.stdout + r.stderr

    shard = "model-00003-of-00012.safetensors"
    data = bytearray(files[shard])
    data[-5] ^= 0xFF  # a byte of tensor data, same length
    site.corrupt[f"m/{shard}"] = bytes(data)
    r = _run(["to-ckpt", f"{site.url}/m", "-o", str(work / "x.ckpt")], {}, work)
    assert r.returncode == 1
    line = only_error_line(r.stderr)
    assert shard in line and "md5" in line and "nothing was kept" in line
    assert _left(work) == []


def test_a_server_that_ignores_range_is_refused_in_one_line(site, tmp_path, work):
    _serve(site, tmp_path, "one", "safetensors")
    site.ignore_range = True
    url = f"{site.url}/one/model.safetensors"
    r = _run(["checksum", "--tensors", url], {}, work)
    assert r.returncode == 2
    assert only_error_line(r.stderr) == (
        f"error: the server at {url} ignores Range requests (llmkit reads remote files by byte ranges; "
        "download the files and pass the local copy)"
    )
    assert sum(1 for m, _n in site.requests if m == "GET") == 1  # refused at once, not retried


def test_a_folder_without_weights_and_a_missing_file_are_one_line(site, work):
    site.files["empty/config.json"] = b"{}"
    r = _run(["inspect", f"{site.url}/empty/"], {}, work)
    assert r.returncode == 2
    line = only_error_line(r.stderr)
    assert f"{site.url}/empty" in line and "model.safetensors" in line and "pytorch_model.bin" in line
    r = _run(["checksum", "--tensors", f"{site.url}/nothing/model.safetensors"], {}, work)
    assert r.returncode == 2
    assert "HTTP 404" in only_error_line(r.stderr)


def test_a_length_changed_while_read_is_an_error(site, tmp_path, work):
    _folder, files = _serve(site, tmp_path, "one", "safetensors")
    site.total["one/model.safetensors"] = len(files["model.safetensors"]) + 1
    r = _run(["checksum", "--tensors", f"{site.url}/one/model.safetensors"], {}, work)
    assert r.returncode == 2
    assert "changed while read" in only_error_line(r.stderr)


@pytest.mark.slow
def test_redirects_to_another_port_are_followed(site, tmp_path, work):
    folder, files = _serve(site, tmp_path, "m", "safetensors-sharded")
    front = Site({})
    try:
        front.redirect = site.url
        url = f"{front.url}/m/"
        r = _run(["checksum", "--tensors", url, "--json"], {}, work)
        assert _tensors(r) == _tensors(_run(["checksum", "--tensors", str(folder), "--json"], {}, work))
        assert front.requests and not front.log  # the front only redirects
        assert site.fetched_once() == {f"m/{n}": True for n in files}
    finally:
        front.close()


def test_decrypt_without_a_digest_and_an_https_output_are_refused(site, tmp_path, work):
    site.files["enc/consolidated.00.pth.enc"] = bytes(range(256)) * 4
    key = tmp_path / "consolidated.00.pth"
    key.write_bytes(bytes(1024))
    r = _run(
        ["decrypt", f"{site.url}/enc/consolidated.00.pth.enc", "--key", str(key), "-o", str(work / "out")], {}, work
    )
    assert r.returncode == 2
    line = only_error_line(r.stderr)
    assert "consolidated.00.pth.enc" in line and "publishes no digest" in line
    _serve(site, tmp_path, "one", "safetensors")
    r = _run(["to-ckpt", f"{site.url}/one/model.safetensors", "-o", f"{site.url}/out.ckpt"], {}, work)
    assert r.returncode == 2
    assert "cannot write to" in only_error_line(r.stderr)
    assert not [n for m, n in site.requests if m not in ("GET", "HEAD")]  # nothing sent to be written
