"""GSM8K and BIG-Bench Hard files fetched from their upstream repositories, verified and cached.

When no data folder is given (neither ``data_dir=`` nor ``$TRICE_RL_DATA``), each file an
environment needs is downloaded once from the upstream commit the project was tested with,
checked against the sha256 in ``data_manifest.json`` and kept under
``$TRICE_RL_CACHE/data`` (default ``~/.cache/trice_rl/data``), laid out as a data folder.
``$TRICE_RL_DATA_URL`` replaces ``https://raw.githubusercontent.com`` (a mirror, or a test's
loopback server).
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from envs.data import DATA_LAYOUT, DataError, resolve_data_dir

DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
_CHUNK_BYTES = 1 << 16
_PROGRESS_MIN_BYTES = 1 << 20  # a bar for GSM8K's 4 MB train split, not for the small files
_TIMEOUT_SECONDS = 60
_NETWORK_ERRORS = (OSError, http.client.HTTPException)


@functools.cache
def manifest() -> dict:
    """The pinned upstream sources, and each file's upstream path, size and sha256."""
    return json.loads(Path(__file__).with_name("data_manifest.json").read_text(encoding="utf-8"))


def cache_root() -> Path:
    """The project's cache: ``$TRICE_RL_CACHE``, else ``~/.cache/trice_rl`` (downloaded data
    here, built-in models in :mod:`trice_rl.builtin_model`)."""
    return Path(os.environ.get("TRICE_RL_CACHE") or "~/.cache/trice_rl").expanduser()


def cache_dir() -> Path:
    return cache_root() / "data"


def url_for(relative: str) -> str:
    """The raw-file URL of ``relative`` (e.g. ``gsm8k/train.jsonl``) at its pinned commit."""
    source = manifest()["sources"][relative.split("/")[0]]
    base = (os.environ.get("TRICE_RL_DATA_URL") or DEFAULT_BASE_URL).rstrip("/")
    return f"{base}/{source['repo']}/{source['commit']}/{manifest()['files'][relative]['upstream']}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(relative: str) -> Path:
    """The cached, verified copy of ``relative``, downloaded first if it is missing or damaged
    (a cached file is re-checked on every use, so a damaged cache never passes for data)."""
    entry = manifest()["files"].get(relative)
    if entry is None:
        raise DataError(f"no data folder given for {relative}: pass data_dir=... or set TRICE_RL_DATA")
    path = cache_dir() / relative
    if path.is_file():
        if sha256_of(path) == entry["sha256"]:
            return path
        path.unlink(missing_ok=True)  # another process may have replaced it already
    _download(relative, path)
    return path


def _offline_help(relative: str, url: str, reason: object) -> str:
    return (
        f"could not download {relative} from {url} ({reason}); offline, or to use a copy, pass "
        f"data_dir=... or set TRICE_RL_DATA to {DATA_LAYOUT}"
    )


def _download(relative: str, path: Path) -> None:
    """Write the file through a temporary file in its folder, renamed into place only once it
    is complete and verified: an interrupted or corrupted transfer leaves no cache entry."""
    url, entry = url_for(relative), manifest()["files"][relative]
    try:
        response = urllib.request.urlopen(url, timeout=_TIMEOUT_SECONDS)
    except urllib.error.HTTPError as error:  # its text names the status, its reason does not
        raise DataError(_offline_help(relative, url, error)) from None
    except _NETWORK_ERRORS as error:
        raise DataError(_offline_help(relative, url, getattr(error, "reason", error))) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    part = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".part", delete=False)
    try:
        with response, part:
            length = response.headers.get("Content-Length")
            announced = int(length) if length else None
            digest, size = _copy(response, part, announced or entry["bytes"], relative, url)
        if announced is not None and size < announced:
            raise DataError(
                f"the download of {relative} from {url} ended after {size:,} of {announced:,} bytes "
                "(connection closed early); nothing was cached, try again"
            )
        if digest != entry["sha256"]:
            raise DataError(
                f"{relative} downloaded from {url} fails its checksum: expected sha256 "
                f"{entry['sha256']}, got {digest}; nothing was cached"
            )
        os.replace(part.name, path)
    finally:
        Path(part.name).unlink(missing_ok=True)


def _copy(response: IO[bytes], out: IO[bytes], total: int, relative: str, url: str) -> tuple[str, int]:
    """Stream the body into ``out``; its sha256 and length (a progress bar for large files)."""
    digest, size = hashlib.sha256(), 0
    with tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"downloading {relative}",
        disable=total < _PROGRESS_MIN_BYTES,
    ) as bar:
        while True:
            try:
                chunk = response.read(_CHUNK_BYTES)
            except _NETWORK_ERRORS as error:
                raise DataError(_offline_help(relative, url, f"transfer failed after {size:,} bytes: {error}")) from None
            if not chunk:
                return digest.hexdigest(), size
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
            bar.update(len(chunk))


def data_file(data_dir: str | os.PathLike | None, relative: str) -> Path:
    """The file ``relative`` in the user's data folder, or else the verified download cache's
    copy (:mod:`envs.download`); a DataError names a file the user's folder lacks."""
    folder = resolve_data_dir(data_dir)
    if folder is None:
        return fetch(relative)
    path = folder / relative
    if not path.is_file():
        raise DataError(f"missing data file {path}: data_dir (or TRICE_RL_DATA) must be {DATA_LAYOUT}")
    return path
