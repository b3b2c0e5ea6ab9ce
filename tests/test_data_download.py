"""Download against a loopback HTTP server: full download, resume, 200-instead-of-206, checksums, offline."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from zsl_gen.data import download_dataset
from zsl_gen.data import download as dl
from zsl_gen.errors import DownloadError

try:
    from data_helpers import assert_user_error
except ImportError:  # tests/ turned into a package
    from tests.data_helpers import assert_user_error

RES = np.random.default_rng(0).bytes(150_000)
ATT = np.random.default_rng(1).bytes(40_000)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


ARCHIVE = _zip({
    "xlsa17/data/AWA2/res101.mat": RES,
    "xlsa17/data/AWA2/att_splits.mat": ATT,
    "xlsa17/data/AWA2/testclasses.txt": b"zebra\n",
    "xlsa17/data/CUB/res101.mat": b"not ours",
    "xlsa17/README.txt": b"readme",
})


class Server:
    """A loopback HTTP server with byte-range support, recording the Range header of each request."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges: list[str | None] = []
        self.honour_range = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                data = server.files.get(self.path)
                server.ranges.append(self.headers.get("Range"))
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                rng = self.headers.get("Range")
                if rng and server.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    body = data[start:]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    body = data
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    s.files["/mirror/xlsa17.zip"] = ARCHIVE
    yield s
    s.close()


@pytest.fixture(autouse=True)
def known_checksums(monkeypatch):
    table = {("AWA2", "res101.mat"): hashlib.sha256(RES).hexdigest(),
             ("AWA2", "att_splits.mat"): hashlib.sha256(ATT).hexdigest()}
    monkeypatch.setattr(dl, "KNOWN_SHA256", table)
    return table


def test_full_download_extracts_only_that_dataset(tmp_path, server):
    out = download_dataset("awa2", tmp_path, url=server.url + "/mirror", progress=False)
    assert out == tmp_path / "AWA2"
    assert (out / "res101.mat").read_bytes() == RES and (out / "att_splits.mat").read_bytes() == ATT
    assert (out / "testclasses.txt").exists()
    assert not (tmp_path / "CUB").exists() and not (tmp_path / "xlsa17").exists()
    assert (tmp_path / "xlsa17.zip").read_bytes() == ARCHIVE  # kept by default
    assert not (tmp_path / "xlsa17.zip.part").exists()
    assert server.ranges == [None]
    # second call: files present and verified, no network
    assert download_dataset("AWA2", tmp_path, url=server.url + "/mirror", progress=False) == out
    assert len(server.ranges) == 1


def test_full_url_and_archive_removal(tmp_path, server):
    download_dataset("AWA2", tmp_path, url=server.url + "/mirror/xlsa17.zip", progress=False,
                     keep_archive=False)
    assert not (tmp_path / "xlsa17.zip").exists()
    assert (tmp_path / "AWA2" / "res101.mat").read_bytes() == RES


def test_resume_from_partial_download(tmp_path, server):
    (tmp_path / "xlsa17.zip.part").write_bytes(ARCHIVE[:50_000])
    out = download_dataset("AWA2", tmp_path, url=server.url + "/mirror", progress=False)
    assert server.ranges == ["bytes=50000-"]
    assert (tmp_path / "xlsa17.zip").read_bytes() == ARCHIVE
    assert (out / "res101.mat").read_bytes() == RES


def test_server_ignoring_range_restarts(tmp_path, server):
    server.honour_range = False
    (tmp_path / "xlsa17.zip.part").write_bytes(b"stale bytes from another file")
    download_dataset("AWA2", tmp_path, url=server.url + "/mirror", progress=False)
    assert server.ranges == ["bytes=29-"]
    assert (tmp_path / "xlsa17.zip").read_bytes() == ARCHIVE


def test_complete_part_file_answered_416(tmp_path, server):
    (tmp_path / "xlsa17.zip.part").write_bytes(ARCHIVE)
    download_dataset("AWA2", tmp_path, url=server.url + "/mirror", progress=False)
    assert (tmp_path / "xlsa17.zip").read_bytes() == ARCHIVE


def test_archive_placed_by_hand_is_used(tmp_path):
    (tmp_path / "xlsa17.zip").write_bytes(ARCHIVE)
    out = download_dataset("AWA2", tmp_path, url="http://127.0.0.1:9/never-contacted", progress=False)
    assert (out / "att_splits.mat").read_bytes() == ATT


def test_checksum_mismatch(tmp_path, server, known_checksums):
    known_checksums[("AWA2", "res101.mat")] = "0" * 64
    with pytest.raises(DownloadError) as ei:
        download_dataset("AWA2", tmp_path, url=server.url + "/mirror", progress=False)
    path = tmp_path / "AWA2" / "res101.mat"
    assert_user_error(ei, "checksum mismatch", str(path), "0" * 64, hashlib.sha256(RES).hexdigest(),
                      "left in place", str(tmp_path / "xlsa17.zip"))
    assert path.exists() and (tmp_path / "xlsa17.zip").exists()  # nothing deleted


def test_offline_error_says_how_to_install_by_hand(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there: connection refused
    url = f"http://127.0.0.1:{port}/base"
    with pytest.raises(DownloadError) as ei:
        download_dataset("AWA2", tmp_path, url=url, progress=False, timeout=5)
    assert_user_error(ei, f"{url}/xlsa17.zip", "refused", "by hand", str(tmp_path / "xlsa17.zip"),
                      "xlsa17/data/AWA2/res101.mat", "xlsa17/data/AWA2/att_splits.mat",
                      str(tmp_path / "AWA2"))
    with pytest.raises(DownloadError):  # a download directory it had to create is not left behind, empty
        download_dataset("AWA2", tmp_path / "data", url=url, progress=False, timeout=5)
    assert not (tmp_path / "data").exists()


def test_http_error(tmp_path, server):
    with pytest.raises(DownloadError) as ei:
        download_dataset("AWA2", tmp_path, url=server.url + "/elsewhere", progress=False)
    assert_user_error(ei, server.url + "/elsewhere/xlsa17.zip", "HTTP 404", "by hand")


def test_unsafe_member_is_refused(tmp_path, server):
    server.files["/evil/xlsa17.zip"] = _zip({"xlsa17/data/AWA2/res101.mat": RES,
                                             "xlsa17/data/AWA2/../../../escape.txt": b"x"})
    with pytest.raises(DownloadError) as ei:
        download_dataset("AWA2", tmp_path / "d", url=server.url + "/evil", progress=False)
    assert_user_error(ei, "'..'", "escape.txt", "refusing")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "d" / "AWA2").exists()


def test_corrupt_archive_and_unknown_dataset(tmp_path):
    (tmp_path / "xlsa17.zip").write_bytes(b"PK but not really a zip")
    with pytest.raises(DownloadError) as ei:
        download_dataset("AWA2", tmp_path, progress=False)
    assert_user_error(ei, str(tmp_path / "xlsa17.zip"), "not a readable zip", "delete it")
    with pytest.raises(DownloadError) as ei:
        download_dataset("ImageNet", tmp_path)
    assert_user_error(ei, "'ImageNet'", "CUB", "FLO")


def test_flo_and_cub_sentences_come_from_cvpr18xian(tmp_path, server):
    server.files["/m/cvpr18xian.zip"] = _zip({
        "cvpr18xian/data/FLO/res101.mat": b"flo features",
        "cvpr18xian/data/FLO/att_splits.mat": b"flo att",
        "cvpr18xian/data/CUB/sent_splits.mat": b"cub sentences",
        "cvpr18xian/data/CUB/res101.mat": b"cub feats",
    })
    assert download_dataset("FLO", tmp_path, url=server.url + "/m", progress=False) == tmp_path / "FLO"
    out = download_dataset("CUB_SENT", tmp_path, url=server.url + "/m", progress=False)
    assert out == tmp_path / "CUB"
    assert [p.name for p in out.iterdir()] == ["sent_splits.mat"]
    assert server.ranges == [None]  # the archive was fetched once
