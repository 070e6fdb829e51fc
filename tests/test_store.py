import pickle

import numpy as np
import pytest

from mirkit.data.store import StoreError, create_or_open, open_set, set_names


def frames(n, bins=4, value=1.0):
    return np.full((n, bins), value, np.float32) + np.arange(n)[:, None]


@pytest.mark.parametrize("url", ["file", "memory://store-test-a"])
def test_append_read_and_zero_padding(tmp_path, url):
    url = str(tmp_path / "s.zarr") if url == "file" else url
    fs, status = create_or_open(url, "mel", {"a": 1}, 4, 10.0, dtype="float32", chunk_frames=8, shard_chunks=2)
    assert status == "created"
    fs.append([("t0", "src0", "fp0", frames(5)), ("t1", "src1", "fp1", frames(20, value=100))])
    r = open_set(url, "mel")
    assert [t.track_id for t in r.tracks] == ["t0", "t1"] and r.n_frames(1) == 20
    np.testing.assert_array_equal(r.read(1), frames(20, value=100))
    crop = r.read(1, 18, 5)
    np.testing.assert_array_equal(crop[:2], frames(20, value=100)[18:20])
    assert not crop[2:].any()
    assert not r.read(0, -2, 3)[:2].any()
    assert set_names(url) == ["mel"]
    clone = pickle.loads(pickle.dumps(r))
    np.testing.assert_array_equal(clone.read(0), r.read(0))


def test_uncommitted_rows_are_invisible_and_truncated_on_reopen(tmp_path):
    url = str(tmp_path / "s.zarr")
    fs, _ = create_or_open(url, "mel", {"a": 1}, 4, 10.0, dtype="float32")
    fs.append([("t0", "s", "f", frames(5))])
    # simulate a writer killed after writing frames but before the commit point
    fs._frames.resize((9, 4))
    fs._frames[5:9] = 7.0
    fs._group["track_id"].resize((2,))
    assert len(open_set(url, "mel")) == 1
    fs2, status = create_or_open(url, "mel", {"a": 1}, 4, 10.0, dtype="float32")
    assert status == "resumed" and fs2._frames.shape[0] == 5 and fs2._group["track_id"].shape[0] == 1


def test_changed_spec_replaces_the_set(tmp_path):
    url = str(tmp_path / "s.zarr")
    fs, _ = create_or_open(url, "mel", {"a": 1}, 4, 10.0)
    fs.append([("t0", "s", "f", frames(5))])
    fs2, status = create_or_open(url, "mel", {"a": 2}, 4, 10.0)
    assert status == "replaced" and len(fs2) == 0


def test_missing_store_or_set_is_named(tmp_path):
    with pytest.raises(StoreError, match="no Zarr store"):
        open_set(str(tmp_path / "none.zarr"), "mel")
    url = str(tmp_path / "s.zarr")
    create_or_open(url, "mel", {}, 4, 10.0)
    with pytest.raises(StoreError, match="no set named 'cqt'.*mel"):
        open_set(url, "cqt")


def test_wrong_width_is_rejected(tmp_path):
    fs, _ = create_or_open(str(tmp_path / "s.zarr"), "mel", {}, 4, 10.0)
    with pytest.raises(StoreError, match="t9"):
        fs.append([("t9", "s", "f", np.zeros((3, 5)))])


def test_track_cache_returns_the_same_frames_and_respects_its_budget(tmp_path):
    url = str(tmp_path / "s.zarr")
    fs, _ = create_or_open(url, "mel", {}, 4, 10.0, dtype="float32", chunk_frames=8)
    fs.append([(f"t{i}", "s", "f", frames(30 + i, value=10 * i)) for i in range(6)])
    plain = open_set(url, "mel")
    budget = 2300                                      # tracks are 480-560 bytes: room for 4
    cached = open_set(url, "mel").cache_tracks(max_bytes=budget)
    reads = [(0, 0, 10), (0, 25, 10), (3, -2, 5), (5, 10, 40), (1, 3, 3), (2, 0, 30), (4, 1, 2), (0, 5, 5)]
    for track, start, length in reads:
        np.testing.assert_array_equal(cached.read(track, start, length), plain.read(track, start, length))
    assert cached._track_bytes <= budget and 3 <= len(cached._track_cache) <= 4   # evicted, never over budget
    assert list(cached._track_cache)[-1] == 0                                     # most recently used last
    clone = pickle.loads(pickle.dumps(cached))
    assert len(clone._track_cache) == 0 and np.array_equal(clone.read(2), plain.read(2))
