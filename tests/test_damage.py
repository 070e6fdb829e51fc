"""Stores damaged on disk are named as damaged, never read as data (issue 13 item 4), and `mirkit verify`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_runner import invoke

from mirkit.data.store import StoreError, create_or_open, open_set


def make(tmp_path: Path, n: int = 6) -> Path:
    url = tmp_path / "s.zarr"
    fs, _ = create_or_open(str(url), "mel", {"a": 1}, 4, 10.0, dtype="float32", chunk_frames=8, shard_chunks=2)
    fs.append([(f"t{i}", f"t{i}.wav", "fp", np.full((10 + i, 4), i + 1.0, np.float32)) for i in range(n)])
    return url


def set_attr(url: Path, **values) -> None:
    meta = url / "mel" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"].update(values)
    meta.write_text(json.dumps(doc))


def damage(url: Path, how: str) -> None:
    g = url / "mel"
    if how == "frames chunk deleted":
        (g / "frames" / "c" / "2" / "0").unlink()
    elif how == "start chunk deleted":
        (g / "start" / "c" / "0").unlink()
    elif how == "track_id chunk deleted":
        (g / "track_id" / "c" / "0").unlink()
    elif how == "negative n_tracks":
        set_attr(url, n_tracks=-3)
    elif how == "smaller n_tracks":
        set_attr(url, n_tracks=4)
    elif how == "larger n_tracks":
        set_attr(url, n_tracks=60)
    elif how == "total_frames past the array":
        set_attr(url, total_frames=10_000)
    elif how == "n_bins changed":
        set_attr(url, n_bins=5)
    elif how == "spec removed":
        doc = json.loads((g / "zarr.json").read_text())
        del doc["attributes"]["spec"]
        (g / "zarr.json").write_text(json.dumps(doc))
    elif how == "frames array removed":
        shutil.rmtree(g / "frames")
    elif how == "start values tampered":
        import zarr
        zarr.open_group(str(url), mode="a")["mel"]["start"][2] = 0
    else:
        raise AssertionError(how)


CASES = {
    "frames chunk deleted": "chunk file.*'frames' missing",
    "start chunk deleted": "chunk file.*'start' missing",
    "track_id chunk deleted": "chunk file.*'track_id' missing",
    "negative n_tracks": "n_tracks=-3",
    "smaller n_tracks": "damaged index",
    "larger n_tracks": "n_tracks=60 but",
    "total_frames past the array": "total_frames=10000 but",
    "n_bins changed": "shape",
    "spec removed": "damaged attributes",
    "frames array removed": "frames missing",
    "start values tampered": "damaged index.*track 2",
}


@pytest.mark.parametrize("how", CASES)
def test_damaged_store_is_named_on_open_and_by_verify(tmp_path, how):
    url = make(tmp_path)
    assert invoke("verify", str(url)).exit_code == 0
    damage(url, how)
    with pytest.raises(StoreError, match=CASES[how]) as info:
        open_set(str(url), "mel")
    assert str(url) in str(info.value)
    r = invoke("verify", str(url))
    assert r.exit_code == 2 and "DAMAGED" in r.text and "Traceback" not in r.text, r.text


def test_corrupt_chunk_bytes_are_named_when_read_and_by_verify(tmp_path):
    url = make(tmp_path)
    shard = url / "mel" / "frames" / "c" / "1" / "0"
    shard.write_bytes(b"\x00garbage" * 20)
    fs = open_set(str(url), "mel")     # present chunks pass the cheap check; decoding them fails by name
    with pytest.raises(StoreError, match=r"s\.zarr/mel: frames of track 't1' unreadable"):
        for i in range(len(fs)):
            fs.read(i)
    r = invoke("verify", str(url))
    assert r.exit_code == 2 and "unreadable" in r.text, r.text


def test_a_resume_never_deletes_committed_work_of_a_damaged_set(tmp_path):
    url = make(tmp_path)
    damage(url, "start chunk deleted")
    with pytest.raises(StoreError, match="missing"):
        create_or_open(str(url), "mel", {"a": 1}, 4, 10.0, dtype="float32")
    assert (url / "mel" / "frames" / "c" / "0" / "0").exists()


def test_a_set_left_half_created_is_rebuilt(tmp_path):
    """Before: attrs without arrays (two writers racing) failed every later run with KeyError 'frames'."""
    url = tmp_path / "s.zarr"
    create_or_open(str(url), "mel", {"a": 1}, 4, 10.0, dtype="float32")
    shutil.rmtree(url / "mel" / "frames")
    fs, status = create_or_open(str(url), "mel", {"a": 1}, 4, 10.0, dtype="float32")
    assert status == "replaced" and len(fs) == 0


def test_verify_embeddings_and_nonfinite_values(tmp_path):
    from mirkit.eval.embeddings import Embeddings, EmbeddingsError, EmbeddingsWriter
    url = str(tmp_path / "e.zarr")
    with EmbeddingsWriter(url, 3, frames=False) as w:
        for i in range(3):
            w.append({"track_id": f"t{i}"}, np.ones((2, 3)) * i)
        with pytest.raises(EmbeddingsError, match="NaN"):
            w.append({"track_id": "bad"}, np.full((2, 3), np.nan))
    assert invoke("verify", url).exit_code == 0
    import zarr
    zarr.open_group(url, mode="a")["chunks"][1] = np.inf
    r = invoke("verify", url)
    assert r.exit_code == 2 and "NaN/inf" in r.text
    (Path(url) / "chunk_track" / "c" / "0").unlink()
    with pytest.raises(EmbeddingsError, match="chunk_track"):
        Embeddings(url)


def test_verify_names_what_is_not_an_artifact(tmp_path):
    r = invoke("verify", str(tmp_path / "nothing"))
    assert r.exit_code == 2 and "nothing here" in r.text


# -- checksums (issue 18 item 3) -------------------------------------------------------------------
def flip(path: Path, at: int = 5) -> None:
    """Flip one bit of one byte: the hostile case a checksum exists for (zstd still decodes most)."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("dtype", ["float32", "int32"])   # a feature set and a token set
def test_a_flipped_byte_in_a_frame_chunk_is_named_by_array_and_track(tmp_path, dtype):
    url = tmp_path / "s.zarr"
    fs, _ = create_or_open(str(url), "mel", {"a": 1}, 4, 10.0, dtype=dtype, chunk_frames=8, shard_chunks=2)
    fs.append([(f"t{i}", f"t{i}.wav", "fp", np.full((10 + i, 4), i + 1, dtype)) for i in range(6)])
    flip(url / "mel" / "frames" / "c" / "0" / "0")        # first chunk: frames 0..8 of t0
    fs = open_set(str(url), "mel")
    with pytest.raises(StoreError, match=r"frames of track 't0' unreadable \(checksum mismatch"):
        fs.read(0)
    np.testing.assert_array_equal(fs.read(2), np.full((12, 4), 3, dtype))   # other chunks still read
    r = invoke("verify", str(url))
    assert r.exit_code == 2 and "checksum mismatch" in r.text and "'frames' rows 0..8 of track(s) 't0'" in r.text, r.text


def test_a_flipped_byte_in_an_index_array_is_named(tmp_path):
    url = make(tmp_path)
    flip(url / "mel" / "track_id" / "c" / "0", at=3)
    with pytest.raises(StoreError, match=r"damaged index: 'track_id' unreadable \(checksum mismatch"):
        open_set(str(url), "mel")
    assert invoke("verify", str(url)).exit_code == 2


def test_a_flipped_byte_in_embeddings_is_named_by_array_and_track(tmp_path):
    from mirkit.eval.embeddings import Embeddings, EmbeddingsError, EmbeddingsWriter
    url = str(tmp_path / "e.zarr")
    with EmbeddingsWriter(url, 3, frames=True) as w:
        for i in range(3):
            w.append({"track_id": f"t{i}"}, np.ones((2, 3)) * i, np.ones((4, 3)) * i, np.arange(4.0))
    flip(Path(url) / "frames" / "c" / "0" / "0")
    emb = Embeddings(url)
    np.testing.assert_array_equal(emb.chunks(1), np.ones((2, 3)))
    with pytest.raises(EmbeddingsError, match=r"'frames' of track 't0' unreadable \(checksum mismatch"):
        emb.frames(0)
    with pytest.raises(EmbeddingsError, match=r"'frames' rows 0..12 of track\(s\) 't0', 't1', 't2' unreadable"):
        emb.load_frames()
    r = invoke("verify", url)
    assert r.exit_code == 2 and "checksum mismatch" in r.text and "'t0'" in r.text, r.text


def test_readers_never_return_nan(tmp_path):
    """A NaN written with a valid checksum (a buggy writer, a hand edit) is still refused on read."""
    import zarr

    from mirkit.eval.embeddings import Embeddings, EmbeddingsError, EmbeddingsWriter
    url = make(tmp_path)
    zarr.open_group(str(url), mode="a")["mel"]["frames"][12] = np.nan      # row 2 of track t1
    fs = open_set(str(url), "mel")
    with pytest.raises(StoreError, match=r"frames of track 't1': 4 NaN/inf value\(s\)"):
        fs.read(1)
    with pytest.raises(StoreError, match=r"frames 0..75 \('t0', 't1', 't2'\): 4 NaN"):
        fs.load_into_memory()
    assert "'frames' of track(s) 't1': 4 NaN/inf" in invoke("verify", str(url)).text
    emb_url = str(tmp_path / "e.zarr")
    with EmbeddingsWriter(emb_url, 3) as w:
        for i in range(3):
            w.append({"track_id": f"t{i}"}, np.ones((2, 3)) * i)
    zarr.open_group(emb_url, mode="a")["chunks"][5] = np.nan
    emb = Embeddings(emb_url)
    with pytest.raises(EmbeddingsError, match=r"'chunks' of track 't2': 3 NaN"):
        emb.chunks(2)
    with pytest.raises(EmbeddingsError, match=r"'chunks' of track\(s\) 't2': 3 NaN"):
        emb.chunk_rows([0, 1])


def test_a_store_written_without_checksums_reads_with_a_warning(tmp_path, monkeypatch):
    """Stores of earlier versions (zstd only) stay readable; the warning and `verify` say to rebuild."""
    from zarr.codecs import ZstdCodec

    from mirkit.data import store
    monkeypatch.setattr(store, "CHECKSUM_CODECS", (ZstdCodec(level=0),))
    with pytest.warns(UserWarning, match="without chunk checksums.*rebuild"):   # once per store
        url = make(tmp_path)
    monkeypatch.undo()
    fs = open_set(str(url), "mel")
    assert not fs.checksums and fs.read(0).shape == (10, 4)
    r = invoke("verify", str(url))
    assert r.exit_code == 0 and "written before checksums" in r.text, r.text


# -- extract on damaged stores (issue 18 items 2 and 3) ---------------------------------------------
@pytest.fixture(scope="module")
def extract_ws(tmp_path_factory) -> Path:
    """3 clips, their mel16k features and an untrained myna-tiny checkpoint."""
    from test_extract import build_features, make_checkpoint, write_dataset
    tmp = tmp_path_factory.mktemp("extract_damage")
    write_dataset(tmp / "data", [("a", 4.0, 220.0), ("b", 3.5, 330.0), ("c", 5.0, 440.0)])
    build_features(tmp / "data" / "manifest.csv", tmp / "features.zarr")
    make_checkpoint(tmp / "ckpt")
    return tmp


def test_extract_rebuilds_a_damaged_embeddings_store_instead_of_resuming_it(extract_ws, tmp_path):
    """Before: a resume into a damaged store said "3 already there" and left it damaged."""
    from test_extract import all_rows, params

    from mirkit.eval.extract import run
    p = params(extract_ws, out=tmp_path / "emb.zarr")
    assert run(p).embedded == 3
    clean = all_rows(p.out)
    flip(Path(p.out) / "chunks" / "c" / "0" / "0")
    report = run(p)
    assert report.status == "repaired" and "checksum mismatch" in report.damage and "'chunks'" in report.damage
    assert report.embedded == 3 and report.skipped == 0
    for key, value in all_rows(p.out).items():
        np.testing.assert_array_equal(value, clean[key], err_msg=key)
    assert invoke("verify", p.out).exit_code == 0
    again = run(p)                                   # sound now: a plain resume
    assert again.status == "resumed" and again.skipped == 3 and not again.damage


def test_extract_recomputes_a_nan_feature_chunk_from_audio(extract_ws, tmp_path):
    """Before: a NaN feature chunk made extract drop the track with a wrong reason."""
    import zarr
    from test_extract import all_rows, params

    from mirkit.eval.extract import run
    features = tmp_path / "features.zarr"
    shutil.copytree(extract_ws / "features.zarr", features)
    fs = open_set(str(features), "mel16k")
    zarr.open_group(str(features), mode="a")["mel16k"]["frames"][fs.tracks[1].start + 3] = np.nan
    report = run(params(extract_ws, features=features, out=tmp_path / "emb.zarr"))
    assert report.embedded == 3 and not report.failures
    assert report.recomputed == {"damaged in the feature store": 1} and report.from_store == 2
    reference = run(params(extract_ws, features="", out=tmp_path / "audio.zarr"))   # everything from audio
    assert reference.computed == 3
    for key, value in all_rows(str(tmp_path / "audio.zarr")).items():
        np.testing.assert_array_equal(all_rows(str(tmp_path / "emb.zarr"))[key], value, err_msg=key)
