"""Download and unpack the official Speech Commands archive: resumable, checksum-verified, atomic.

The archive is fetched into `<root>/.download/<name>.part` (an interrupted download continues with an HTTP Range
request), verified against its SHA-256, and unpacked (regular files and folders only, without owners or special
permission bits) into a temporary folder that is renamed into place only when complete: a root is either absent or
whole.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

# SHA-256 of the official archives (the same values torchaudio's SPEECHCOMMANDS verifies).
RELEASES = {
    "0.02": ("http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
             "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"),
    "0.01": ("http://download.tensorflow.org/data/speech_commands_v0.01.tar.gz",
             "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d"),
}
CHUNK = 1 << 20


class DownloadError(OSError):
    """The archive could not be fetched, verified or unpacked; the message says which and what to do."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, part: Path, log=print, timeout: float = 60) -> None:
    """Download url into `part`, continuing from its current size when the server accepts a Range request."""
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch
            return
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}: cannot connect ({e})") from None
    with response:
        resumed = response.status == 206
        if have and not resumed:
            log(f"{url}: server ignored the Range request, starting over")
        expected = int(response.headers.get("Content-Length") or -1)
        received = 0
        with open(part, "ab" if resumed else "wb") as f:
            while block := response.read(CHUNK):
                f.write(block)
                received += len(block)
    if 0 <= received < expected:
        raise DownloadError(f"{url}: connection closed after {received} of {expected} bytes; "
                            f"run the command again to resume ({part} is kept)")


def safe_extract(archive: Path, destination: Path) -> None:
    """Unpack a tar archive into `destination` (absent, or an empty folder), all or nothing.

    Only regular files and folders are unpacked; a member that would land outside `destination`, a link or a device
    is refused before anything is written. Members go into a temporary folder beside `destination` that is renamed
    into place only when complete: on any failure nothing is left behind. Files and folders are created by the
    running user with the archive's permission bits less setuid, setgid and sticky (as root too: an archive's owners
    and special bits are never kept)."""
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise DownloadError(f"{destination}: exists and is not an empty folder; cannot unpack {archive} into it")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:  # every member checked before any is written
                target = (partial / member.name).resolve()
                if not (member.isfile() or member.isdir()) or not target.is_relative_to(partial.resolve()):
                    raise DownloadError(f"{archive}: refusing unsafe archive member {member.name!r}")
            for member in members:
                _unpack(tar, member, partial, archive)
        if destination.exists():
            destination.rmdir()
        os.rename(partial, destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _unpack(tar: tarfile.TarFile, member: tarfile.TarInfo, folder: Path, archive: Path) -> None:
    """One checked member (a regular file or a folder) into `folder`; its mode without special bits."""
    target = folder / member.name
    mode = member.mode & 0o777  # no setuid, setgid or sticky bit
    try:
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(mode | 0o700)  # the files below it must still be writable by us
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise IsADirectoryError(f"an earlier member made {member.name!r} a folder")
        with tar.extractfile(member) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK)
        target.chmod(mode)
        os.utime(target, (member.mtime, member.mtime))
    except (OSError, tarfile.TarError) as e:
        # e.g. a file "a" followed by "a/b": "a" cannot be both a file and a folder
        raise DownloadError(f"{archive}: cannot unpack member {member.name!r} ({type(e).__name__}: {e}); "
                            "nothing was unpacked") from None


def download(root, version: str = "0.02", url: str | None = None, sha256: str | None = None, log=print) -> Path:
    """Make `root` a complete Speech Commands release. Returns root. Does nothing if root is already complete."""
    if version not in RELEASES:
        raise DownloadError(f"unknown Speech Commands version {version!r}; expected one of {sorted(RELEASES)}")
    default_url, default_sha = RELEASES[version]
    url, sha256 = url or default_url, sha256 or default_sha
    root = Path(root)
    if (root / "testing_list.txt").is_file() and (root / "validation_list.txt").is_file():
        log(f"{root}: already unpacked")
        return root
    staging = root.parent / f".{root.name}.download"
    part = staging / (url.rsplit("/", 1)[-1] + ".part")
    log(f"downloading {url} -> {part}")
    fetch(url, part, log=log)
    digest = sha256_of(part)
    if digest != sha256:
        bad = part.with_suffix(".corrupt")
        os.replace(part, bad)
        raise DownloadError(f"{part}: SHA-256 {digest} does not match the expected {sha256}; moved to {bad}, "
                            "run the command again to download afresh")
    unpacked = staging / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    log(f"checksum ok, unpacking into {unpacked}")
    safe_extract(part, unpacked)
    if not (unpacked / "testing_list.txt").is_file():
        raise DownloadError(f"{part}: archive has no testing_list.txt; not a Speech Commands release")
    if root.exists() and any(root.iterdir()):
        raise DownloadError(f"{root}: exists and is not empty; choose an empty or new folder")
    if root.exists():
        root.rmdir()
    os.replace(unpacked, root)
    shutil.rmtree(staging, ignore_errors=True)
    log(f"{root}: Speech Commands v{version} ready")
    return root
