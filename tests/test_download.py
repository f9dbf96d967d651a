"""rnic-data download against a local HTTP server on 127.0.0.1 (never the internet): the sets land where
`data=` reads them, every file is checked by SHA-256 (published or trusted on first use), a stopped
download resumes with an HTTP Range request, and a corrupt file is refused by name."""

import dataclasses
import hashlib
import io
import json
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from rnic import download as dl
from tests.conftest import compose_config


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class Server:
    """Serves `files` (path -> bytes) with Range support; records each request's path and Range header."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match:
                    start = int(match[1])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(self, remote: dl.Remote, body: bytes) -> dl.Remote:
        """`remote` moved to this server (same path), serving `body`."""
        path = "/" + remote.url.split("/", 3)[3]
        self.files[path] = body
        return dataclasses.replace(remote, url=self.base + path)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_kodak_lands_where_data_kodak_reads_it_and_is_trusted_on_first_use(server, tmp_path, monkeypatch):
    folder, remotes = dl.DATASETS["kodak"]
    local = tuple(server.serve(r, png(i)) for i, r in enumerate(remotes))
    monkeypatch.setitem(dl.DATASETS, "kodak", (folder, local))
    monkeypatch.setenv("RNIC_DATA_DIR", str(tmp_path / "data"))
    dl.main(["download", "kodak"])

    cfg = compose_config(tmp_path / "run", "data=kodak", config_name="attack")
    val = instantiate(cfg.data.source).splits()["val"]
    assert [p.name for p in val] == [f"kodim{i:02d}.png" for i in range(1, 25)]
    manifest = json.loads((tmp_path / "data" / dl.MANIFEST).read_text())
    assert manifest[local[0].url]["sha256"] == hashlib.sha256(png(0)).hexdigest()

    # A later download of a file whose content changed since its first download is refused by name.
    (tmp_path / "data" / "kodak" / "kodim02.png").unlink()
    server.files["/graphics/kodak/kodak/kodim02.png"] = png(99)
    with pytest.raises(ValueError, match=r"kodim02\.png\.part: SHA-256 \w+ is not the expected"):
        dl.download("kodak")
    assert not (tmp_path / "data" / "kodak" / "kodim02.png").exists()


def test_an_archive_is_checked_and_only_its_images_are_extracted_flat(server, tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("DIV2K_train_HR/0001.png", png(1))
        z.writestr("DIV2K_train_HR/0002.png", png(2))
        z.writestr("DIV2K_train_HR/readme.txt", "not an image")
    body = buffer.getvalue()
    folder, (train, _) = dl.DATASETS["div2k"]
    train = dataclasses.replace(server.serve(train, body), sha256=hashlib.sha256(body).hexdigest())
    monkeypatch.setitem(dl.DATASETS, "div2k", (folder, (train,)))
    dl.download("div2k", tmp_path, remove_archives=True)
    assert sorted(p.name for p in (tmp_path / "div2k" / "DIV2K_train_HR").glob("*.png")) == [
        "0001.png",
        "0002.png",
    ]
    assert not (tmp_path / "div2k" / "DIV2K_train_HR" / "readme.txt").exists()
    assert not (tmp_path / "downloads" / "DIV2K_train_HR.zip").exists()
    assert not (tmp_path / dl.MANIFEST).exists()  # a published sum: nothing to trust on first use


def test_a_stopped_download_resumes_with_a_range_request(server, tmp_path):
    body = png(7) * 50
    remote = server.serve(dl.Remote("https://example.org/set/big.png"), body)
    remote = dataclasses.replace(remote, sha256=hashlib.sha256(body).hexdigest())
    dest = tmp_path / "big.png"
    dest.with_name("big.png.part").write_bytes(body[:1000])  # what the interrupted download left
    dl.fetch(remote, dest, dl.Manifest(tmp_path))
    assert dest.read_bytes() == body and server.requests == [("/set/big.png", "bytes=1000-")]


def test_a_corrupt_download_is_refused_naming_the_file(server, tmp_path, capsys):
    remote = server.serve(dl.Remote("https://example.org/set/photo.png"), b"truncated or tampered")
    remote = dataclasses.replace(remote, sha256=hashlib.sha256(png(3)).hexdigest())
    folder, _ = dl.DATASETS["kodak"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(dl.DATASETS, "kodak", (folder, (remote,)))
        with pytest.raises(SystemExit) as exit_info:
            dl.main(["download", "kodak", "--data-dir", str(tmp_path)])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert (
        f"error: {tmp_path / 'kodak' / 'photo.png.part'}: SHA-256 " in error
        and "is not the expected" in error
    )
    assert not list((tmp_path / "kodak").iterdir())  # neither the file nor its part is left
