import hashlib
import http.server
import io
import os
import tarfile
import threading

import pytest

from mrconv_audio.cli import main
from mrconv_audio.data import SpeechCommands
from mrconv_audio.data.download import DownloadError, download, safe_extract
from speech_tree import make_speech_commands


def build_archive(tmp_path):
    tree = make_speech_commands(tmp_path / "src", words=["yes", "no", "bed"], speakers=3, noise_files=1)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(tree.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(tree)), recursive=False)
    return buffer.getvalue()


class ArchiveServer:
    """Serves one file on 127.0.0.1 with HTTP Range support; can cut the first response short."""

    def __init__(self, payload: bytes, cut_first_at: int | None = None):
        self.payload, self.cut_first_at, self.requests = payload, cut_first_at, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.headers.get("Range"))
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                body = server.payload[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_first_at is not None and len(server.requests) == 1:
                    self.wfile.write(body[: server.cut_first_at])  # the connection drops mid-download
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/speech_commands_test.tar.gz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def archive(tmp_path):
    payload = build_archive(tmp_path)
    return payload, hashlib.sha256(payload).hexdigest()


def test_download_verifies_and_unpacks_atomically(tmp_path, archive):
    payload, digest = archive
    server = ArchiveServer(payload)
    try:
        root = download(tmp_path / "sc", url=server.url, sha256=digest, log=lambda *a: None)
    finally:
        server.close()
    data = SpeechCommands(root)
    assert set(data.words) == {"yes", "no", "bed"}
    assert not (tmp_path / ".sc.download").exists()  # staging removed
    assert download(root, url="http://127.0.0.1:9/never", sha256=digest, log=lambda *a: None) == root  # complete


def test_interrupted_download_resumes_with_a_range_request(tmp_path, archive):
    payload, digest = archive
    server = ArchiveServer(payload, cut_first_at=len(payload) // 3)
    try:
        with pytest.raises(Exception):
            download(tmp_path / "sc", url=server.url, sha256=digest, log=lambda *a: None)
        assert not (tmp_path / "sc").exists()  # nothing half-unpacked at the destination
        part = tmp_path / ".sc.download" / "speech_commands_test.tar.gz.part"
        assert 0 < part.stat().st_size < len(payload)
        download(tmp_path / "sc", url=server.url, sha256=digest, log=lambda *a: None)
    finally:
        server.close()
    assert server.requests[-1] == f"bytes={len(payload) // 3}-"
    assert (tmp_path / "sc" / "testing_list.txt").is_file()


def test_corrupted_archive_is_rejected_and_set_aside(tmp_path, archive):
    payload, digest = archive
    corrupted = bytearray(payload)
    corrupted[len(corrupted) // 2] ^= 0xFF
    server = ArchiveServer(bytes(corrupted))
    try:
        with pytest.raises(DownloadError, match="SHA-256 .* does not match"):
            download(tmp_path / "sc", url=server.url, sha256=digest, log=lambda *a: None)
    finally:
        server.close()
    assert not (tmp_path / "sc").exists()
    assert (tmp_path / ".sc.download" / "speech_commands_test.tar.gz.corrupt").exists()


def test_unsafe_archive_members_are_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    (tmp_path / "a.tar.gz").write_bytes(buffer.getvalue())
    (tmp_path / "out").mkdir()
    with pytest.raises(DownloadError, match="unsafe archive member '../escape.txt'"):
        safe_extract(tmp_path / "a.tar.gz", tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_cli_reports_an_unreachable_server(tmp_path, capsys, monkeypatch):
    from mrconv_audio.data import download as module

    monkeypatch.setitem(module.RELEASES, "0.02", ("http://127.0.0.1:9/none.tar.gz", "0" * 64))
    assert main(["data", "download", "--root", str(tmp_path / "sc")]) == 2
    assert "cannot connect" in capsys.readouterr().err


def make_tar(path, members):
    """members: [(name, kind "file" | "dir", mode, uid)] -> a .tar.gz at path."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, mode, uid in members:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.uname, info.gname = mode, uid, uid, "someone", "others"
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = 5
                tar.addfile(info, io.BytesIO(b"audio"))
    return path


def test_a_member_that_needs_a_file_to_be_a_folder_fails_whole_and_names_it(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", [("yes", "dir", 0o755, 0), ("yes/a.wav", "file", 0o644, 0),
                                               ("x", "file", 0o644, 0), ("x/b.wav", "file", 0o644, 0)])
    with pytest.raises(DownloadError, match=r"cannot unpack member 'x/b.wav'"):
        safe_extract(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]  # no partial folder, no temporary one


def test_special_bits_and_foreign_owners_are_dropped(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", [("d", "dir", 0o3777, 4321), ("d/run.wav", "file", 0o4755, 4321),
                                               ("d/g.wav", "file", 0o2640, 4321)])
    safe_extract(archive, tmp_path / "out")
    for rel, mode in [("d", 0o777), ("d/run.wav", 0o755), ("d/g.wav", 0o640)]:
        st = (tmp_path / "out" / rel).stat()
        assert st.st_mode & 0o7777 == mode, rel  # permissions kept, setuid/setgid/sticky gone
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), rel
    assert (tmp_path / "out" / "d" / "run.wav").read_bytes() == b"audio"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "out"]
