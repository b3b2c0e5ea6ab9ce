"""Download, resume, extract and verify the benchmark archives (standard library ``urllib`` only).

The official release is two zip archives (see docs/REFERENCE.md): ``xlsa17.zip`` holds CUB, SUN, AWA1,
AWA2 and APY under ``xlsa17/data/<NAME>/``; ``cvpr18xian.zip`` holds FLO and the CUB sentence
embeddings under ``cvpr18xian/data/<NAME>/``. ``download_dataset`` streams an archive to
``<dest>/<archive>.part`` (resuming a partial download with an HTTP Range request), renames it when
complete, extracts only the requested dataset's files into ``<dest>/<NAME>/`` and checks the known
sha256 checksums. An archive placed in ``<dest>/`` by hand is used as is.
"""

from __future__ import annotations

import http.client
import math
import os
import re
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from zsl_gen.data._io import atomic_write, files_as_one_set, sha256_file
from zsl_gen.errors import ConfigError, DownloadError


@dataclass(frozen=True)
class Archive:
    url: str
    root: str        # folder of the datasets inside the archive
    size: str        # for messages


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's files are: archive, folder inside ``<archive root>/``, target folder, files."""

    archive: str
    folder: str
    target: str
    files: tuple[str, ...]
    only: tuple[str, ...] | None = None         # extract only these file names (None: the whole folder)


ARCHIVES = {
    "xlsa17.zip": Archive("https://datasets.d2.mpi-inf.mpg.de/xian/xlsa17.zip", "xlsa17/data",
                          "about 879 MB"),
    "cvpr18xian.zip": Archive("http://datasets.d2.mpi-inf.mpg.de/xian/cvpr18xian.zip", "cvpr18xian/data",
                              "several hundred MB"),
}

_XLSA17_FILES = ("res101.mat", "att_splits.mat")
DATASETS = {
    **{n: DatasetSource("xlsa17.zip", n, n, _XLSA17_FILES) for n in ("CUB", "SUN", "AWA1", "AWA2", "APY")},
    "FLO": DatasetSource("cvpr18xian.zip", "FLO", "FLO", _XLSA17_FILES),
    # The sentence embeddings go beside the CUB features (conf/dataset/cub_sent.yaml reads data_dir/CUB).
    "CUB_SENT": DatasetSource("cvpr18xian.zip", "CUB", "CUB", ("sent_splits.mat",),
                              only=("sent_splits.mat",)),
}

# (target folder, file) -> sha256 of the official release (docs/REFERENCE.md).
KNOWN_SHA256 = {
    ("AWA2", "res101.mat"): "3592d2002a4e2d7ea4ef19069f9c35b8ad86c5e1a43b2d30257eba7018fd6dfa",
    ("AWA2", "att_splits.mat"): "8bb1527856c797dcd3bac981b25832bca8e7fe04f3fc2ab2322850a74e848df1",
    ("APY", "res101.mat"): "b4bae3b9964011d9d1848fb8db932daa1d8ddd16759f70a64ca2af5b63d82eca",
}

CHUNK = 1 << 20


def dataset_source(name: str) -> DatasetSource:
    """The ``DatasetSource`` of a dataset name (case-insensitive; ``CUB-SENT`` = ``CUB_SENT``)."""
    key = name.strip().upper().replace("-", "_")
    if key not in DATASETS:
        raise DownloadError(f"unknown dataset {name!r} for download; known: {', '.join(DATASETS)}")
    return DATASETS[key]


def archive_url(archive: str, url: str | None = None) -> str:
    """The URL of ``archive``: the official one, or ``url`` (a full ``.zip`` URL or a base URL)."""
    if url is None:
        return ARCHIVES[archive].url
    return url if url.lower().endswith(".zip") else url.rstrip("/") + "/" + archive


def _by_hand(src: DatasetSource, url: str, dest_dir: Path) -> str:
    arc = ARCHIVES[src.archive]
    members = ", ".join(f"{arc.root}/{src.folder}/{f}" for f in src.files)
    return (
        f"to install it by hand, download {url} ({arc.size}) with a browser or another tool, save it as "
        f"{dest_dir / src.archive} and rerun this command (it extracts and verifies the archive), or unzip "
        f"it and copy {members} into {dest_dir / src.target}/"
    )


def _total_from_content_range(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(?:\*|\d+-\d+)/(\d+)", value or "")
    return int(m.group(1)) if m else None


def _fetch(url: str, archive: Path, src: DatasetSource, *, progress: bool, timeout: float) -> None:
    """Stream ``url`` to ``<archive>.part`` (resuming it when present), then rename it to ``archive``."""
    part = archive.with_name(archive.name + ".part")
    by_hand = _by_hand(src, url, archive.parent)
    for _attempt in range(2):
        offset = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": "zsl-gen"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset:
                total = _total_from_content_range(err.headers.get("Content-Range"))
                if total == offset:  # the .part already holds the whole archive
                    os.replace(part, archive)
                    return
                part.unlink()  # a .part longer than the archive cannot be resumed
                continue
            raise DownloadError(f"download of {url} failed: HTTP {err.code} {err.reason}; {by_hand}") from err
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            raise DownloadError(f"cannot download {url} ({type(err).__name__}: {reason}); the server is "
                                f"unreachable or this machine is offline; {by_hand}") from err
        with resp:
            status = getattr(resp, "status", None) or resp.getcode()
            resumed = bool(offset) and status == 206
            if resumed and (_range_start(resp.headers.get("Content-Range")) not in (None, offset)):
                raise DownloadError(f"server for {url} answered the resume request with a different byte "
                                    f"range; delete {part} and rerun")
            if not resumed:
                offset = 0  # the server ignored the Range request and sends the whole archive again
            length = resp.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            show = progress and sys.stderr.isatty()
            received = offset
            try:
                with open(part, "ab" if resumed else "wb") as fh, tqdm(
                    total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=archive.name, disable=not show, mininterval=0.5,
                ) as bar:
                    while True:
                        block = resp.read(CHUNK)
                        if not block:
                            break
                        fh.write(block)
                        received += len(block)
                        bar.update(len(block))
            except (OSError, http.client.HTTPException) as err:
                raise DownloadError(
                    f"download of {url} was interrupted after {received} bytes ({type(err).__name__}: "
                    f"{err}); the partial file is kept at {part}: rerun the command to resume"
                ) from err
        if total is not None and received != total:
            raise DownloadError(
                f"download of {url} ended after {received} of {total} bytes; the partial file is kept at "
                f"{part}: rerun the command to resume"
            )
        os.replace(part, archive)
        return
    raise DownloadError(f"cannot resume {url} from {part}; delete it and rerun")


def _range_start(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(\d+)-", value or "")
    return int(m.group(1)) if m else None


def _unsafe(name: str) -> bool:
    norm = name.replace("\\", "/")
    return norm.startswith("/") or bool(re.match(r"^[A-Za-z]:", norm)) or ".." in PurePosixPath(norm).parts


def _extract(archive: Path, src: DatasetSource) -> list[Path]:
    """Extract the dataset's members of ``archive`` into ``<archive dir>/<target>/``, prefix stripped."""
    target = archive.parent / src.target
    root = ARCHIVES[src.archive].root
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise DownloadError(
            f"{archive} is not a readable zip archive ({err}); it is incomplete or corrupt: delete it and "
            "rerun the download"
        ) from err
    written = []
    with zf:
        members = zf.infolist()
        unsafe = [m.filename for m in members if _unsafe(m.filename)]
        if unsafe:
            raise DownloadError(
                f"{archive} contains a member with an absolute path or '..' ({unsafe[0]!r}); refusing to "
                "extract it: this is not the official archive, delete it and download it again"
            )
        prefixes = [f"{root}/{src.folder}/", f"data/{src.folder}/"]
        chosen = next((p for p in prefixes if any(m.filename.replace("\\", "/").startswith(p)
                                                  for m in members)), None)
        if chosen is None:
            raise DownloadError(
                f"{archive} has no files under {prefixes[0]!r}; it is not the expected archive "
                f"({src.archive}): delete it and rerun the download"
            )
        with files_as_one_set():  # a dataset's files replace an earlier extraction's together
            for m in members:
                name = m.filename.replace("\\", "/")
                if m.is_dir() or not name.startswith(chosen):
                    continue
                rel = PurePosixPath(name[len(chosen):])
                if src.only is not None and rel.name not in src.only:
                    continue
                dest = target.joinpath(*rel.parts)
                with zf.open(m) as fin:
                    atomic_write(dest, lambda fh: shutil.copyfileobj(fin, fh, CHUNK))
                written.append(dest)
    return written


def _verify(target: Path, src: DatasetSource, archive: Path | None) -> None:
    keep = f" (the archive is at {archive})" if archive is not None and archive.exists() else ""
    for fname in src.files:
        if not (target / fname).is_file():
            raise DownloadError(
                f"{src.archive} did not provide {fname} for {src.target}: {target / fname} is missing; the "
                "archive is not the official one: delete it and rerun, or place the file by hand"
            )
    for (ds, fname), expected in KNOWN_SHA256.items():
        path = target / fname
        if ds != src.target or not path.is_file():
            continue
        actual = sha256_file(path)
        if actual != expected:
            raise DownloadError(
                f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}; the file is left "
                f"in place for inspection{keep}; it is corrupt or from another release revision (old "
                "mirrors hold different splits): delete it and the archive and rerun, or pass --url for "
                "another mirror"
            )


def download_dataset(
    name: str,
    dest_dir: str | Path,
    *,
    url: str | None = None,
    progress: bool = True,
    timeout: float = 30,
    keep_archive: bool = True,
) -> Path:
    """Download (or resume), extract and verify one benchmark dataset.

    Args:
        name: ``CUB``, ``SUN``, ``AWA1``, ``AWA2``, ``APY``, ``FLO`` or ``CUB_SENT`` (the CUB sentence
            embeddings ``sent_splits.mat``, placed beside CUB's ``res101.mat``).
        dest_dir: where the archive is kept and ``<NAME>/`` is created.
        url: replaces the official location: a full ``.zip`` URL or a base URL the archive name is
            appended to (a mirror, or a test server).
        progress: show a progress bar (only when stderr is a terminal).
        timeout: socket timeout in seconds.
        keep_archive: keep ``<dest_dir>/<archive>`` after extraction (other datasets share it).

    Returns:
        ``dest_dir/<NAME>``, holding ``res101.mat`` and ``att_splits.mat`` (or ``sent_splits.mat``).
        Files already there are only verified, not downloaded again.
    """
    src = dataset_source(name)
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"timeout={timeout!r}: the socket timeout must be a number of seconds > 0, e.g. 30")
    if url is not None and urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https", "ftp", "file"):
        raise ConfigError(f"url={url!r} is not a URL urllib can fetch; give a full http(s):// address of the "
                          f"archive or of a directory holding {src.archive}")
    dest_dir = Path(dest_dir)
    target = dest_dir / src.target
    if all((target / f).is_file() for f in src.files):
        _verify(target, src, None)
        return target
    created = not dest_dir.exists()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create the download directory {dest_dir} ({err}); pass --dir with a "
                            "writable directory") from err
    archive = dest_dir / src.archive
    if not archive.is_file():
        try:
            _fetch(archive_url(src.archive, url), archive, src, progress=progress, timeout=timeout)
        except BaseException:
            if created and not any(dest_dir.iterdir()):  # nothing fetched (offline): leave no empty directory
                dest_dir.rmdir()
            raise
    _extract(archive, src)
    _verify(target, src, archive)
    if not keep_archive:
        archive.unlink()
    return target
