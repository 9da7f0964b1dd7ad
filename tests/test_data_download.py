"""GSM8K and BBH download themselves: served here by a loopback HTTP server laid out as the
upstream repositories are, so the URLs the code builds are checked, with no network."""

import functools
import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from envs import BBHTask, DataError, GSM8KTask
from envs.download import data_file
from envs.download import manifest, url_for

GSM8K_COMMIT = "3101c7d5072418e28b9008a6636bde82a006892c"
BBH_COMMIT = "9ee07bd481feebf959a6b59d61ea57bdcf30964d"


def _upstream_path(relative: str) -> str:
    """Where the upstream repositories keep a file of the data folder (shared/data/README.md)."""
    name = relative.rsplit("/", 1)[1]
    if relative.startswith("gsm8k/"):
        return f"openai/grade-school-math/{GSM8K_COMMIT}/grade_school_math/data/{name}"
    if relative.startswith("bbh/cot-prompts/"):
        return f"suzgunmirac/BIG-Bench-Hard/{BBH_COMMIT}/cot-prompts/{name}"
    return f"suzgunmirac/BIG-Bench-Hard/{BBH_COMMIT}/bbh/{name}"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files; with ``server.truncate`` set it announces the full length, sends 1,000
    bytes and closes the connection (an interrupted transfer)."""

    def copyfile(self, source, outputfile):
        if self.server.truncate:
            outputfile.write(source.read(1000))
        else:
            super().copyfile(source, outputfile)

    def log_message(self, *args):
        pass


class Upstream:
    def __init__(self, root: Path, cache: Path):
        self.root, self.cache = root, cache
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
        self.server.truncate = False
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def served(self, relative: str) -> Path:
        return self.root / _upstream_path(relative)

    def cached_files(self) -> list[Path]:
        return sorted(path for path in self.cache.rglob("*") if path.is_file())


@pytest.fixture
def upstream(tmp_path, monkeypatch, data_dir):
    """A loopback server holding a copy of the data folder in the upstream layout; the cache
    in tmp_path and no data folder configured."""
    for relative in manifest()["files"]:
        target = tmp_path / "upstream" / _upstream_path(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / relative, target)
    server = Upstream(tmp_path / "upstream", tmp_path / "cache" / "data")
    monkeypatch.delenv("TRICE_RL_DATA", raising=False)
    monkeypatch.setenv("TRICE_RL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TRICE_RL_DATA_URL", server.url)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    yield server
    server.stop()


def test_manifest_holds_the_shared_checksums_of_every_data_file(data_dir):
    sums = dict(reversed(line.split()) for line in (data_dir / "SHA256SUMS").read_text().splitlines())
    data_files = {relative: sha for relative, sha in sums.items() if not relative.endswith("LICENSE")}
    assert {relative: entry["sha256"] for relative, entry in manifest()["files"].items()} == data_files
    for relative, entry in manifest()["files"].items():
        assert entry["bytes"] == (data_dir / relative).stat().st_size


def test_default_url_is_the_raw_file_at_the_pinned_commit(monkeypatch):
    monkeypatch.delenv("TRICE_RL_DATA_URL", raising=False)
    assert url_for("gsm8k/train.jsonl") == f"https://raw.githubusercontent.com/{_upstream_path('gsm8k/train.jsonl')}"
    assert url_for("bbh/cot-prompts/navigate.txt") == (
        f"https://raw.githubusercontent.com/{_upstream_path('bbh/cot-prompts/navigate.txt')}"
    )


def test_first_fetch_then_cached_use_without_the_server(upstream, data_dir):
    assert GSM8KTask().examples("test") == GSM8KTask(data_dir).examples("test")
    fetched = BBHTask("navigate", few_shot=True)
    offline = BBHTask("navigate", data_dir, few_shot=True)
    assert fetched.examples("test") == offline.examples("test")
    assert fetched.few_shot_prefix == offline.few_shot_prefix
    cached = ["bbh/cot-prompts/navigate.txt", "bbh/navigate.json", "gsm8k/test.jsonl"]
    assert upstream.cached_files() == [upstream.cache / relative for relative in cached]  # no temporary files

    upstream.stop()
    assert GSM8KTask().examples("test") == GSM8KTask(data_dir).examples("test")
    assert BBHTask("navigate", few_shot=True).few_shot_prefix == offline.few_shot_prefix


def test_every_manifest_file_downloads_and_verifies(upstream, data_dir):
    for relative in manifest()["files"]:
        assert data_file(None, relative).read_bytes() == (data_dir / relative).read_bytes()
    assert len(upstream.cached_files()) == len(manifest()["files"])


def test_corrupted_file_is_rejected_by_checksum_and_not_cached(upstream):
    served = upstream.served("gsm8k/test.jsonl")
    corrupted = served.read_bytes().replace(b"Janet", b"Jenny", 1)
    served.write_bytes(corrupted)
    expected = manifest()["files"]["gsm8k/test.jsonl"]["sha256"]
    actual = hashlib.sha256(corrupted).hexdigest()
    with pytest.raises(DataError) as error:
        GSM8KTask().examples("test")
    message = str(error.value)
    assert "gsm8k/test.jsonl" in message and url_for("gsm8k/test.jsonl") in message
    assert f"expected sha256 {expected}, got {actual}" in message
    assert upstream.cached_files() == []


def test_interrupted_transfer_leaves_no_cache_entry(upstream, data_dir):
    upstream.server.truncate = True
    with pytest.raises(DataError, match=r"gsm8k/test\.jsonl from http://127\.0\.0\.1:\d+/\S+ ended after 1,000 of 749,738 bytes"):
        GSM8KTask().examples("test")
    assert upstream.cached_files() == []

    upstream.server.truncate = False  # trying again succeeds
    assert GSM8KTask().examples("test") == GSM8KTask(data_dir).examples("test")


def test_damaged_cache_entry_is_downloaded_again(upstream, data_dir):
    path = data_file(None, "bbh/navigate.json")
    path.write_bytes(path.read_bytes()[:-10])
    assert data_file(None, "bbh/navigate.json").read_bytes() == (data_dir / "bbh/navigate.json").read_bytes()


def test_offline_error_names_file_url_and_both_ways_to_supply_the_data(upstream):
    upstream.stop()
    with pytest.raises(DataError) as error:
        GSM8KTask().examples("train")
    message = str(error.value)
    assert "gsm8k/train.jsonl" in message and url_for("gsm8k/train.jsonl") in message
    assert "data_dir=" in message and "TRICE_RL_DATA" in message
    assert len(message.splitlines()) == 1
    assert not upstream.cache.exists()


def test_a_file_missing_upstream_is_reported_with_its_url(upstream):
    upstream.served("bbh/cot-prompts/navigate.txt").unlink()
    with pytest.raises(DataError, match=r"navigate\.txt from \S+/cot-prompts/navigate\.txt \(HTTP Error 404"):
        BBHTask("navigate", few_shot=True)


def test_data_dir_and_trice_rl_data_win_over_the_download(upstream, data_dir, monkeypatch):
    upstream.stop()
    assert len(GSM8KTask(data_dir).examples("test")) == 1319
    monkeypatch.setenv("TRICE_RL_DATA", str(data_dir))
    assert len(BBHTask("navigate", few_shot=True).examples("test")) == 100
    assert upstream.cached_files() == []


def test_a_file_no_upstream_holds_needs_a_data_folder(upstream):
    with pytest.raises(DataError, match=r"mine/items\.json: pass data_dir=\.\.\. or set TRICE_RL_DATA"):
        data_file(None, "mine/items.json")
