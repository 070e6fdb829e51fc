"""Scale-out by shards (docs/architecture.md, "Scale-out"): ``mels --shard i/n`` and reading a shard folder as one store."""

from __future__ import annotations

import csv
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import tone
from cli_runner import invoke

from mirkit.data import store
from mirkit.data.mels import MelsParams
from mirkit.data.mels import run as run_mels
from mirkit.data.store import ShardedSet, StoreError, create_or_open, open_set, set_names, shard_of
from mirkit.data.tokens import TokensParams
from mirkit.data.tokens import run as run_tokens
from mirkit.params import ParamsError
from mirkit.recipes.base import Sources
from mirkit.train.loop import PretrainParams, make_recipe, open_sources

ROOT = Path(__file__).parent.parent
N = 3
SETS = ["mel16k", "mel24k"]
CLIPS = [f"clip{i}.wav" for i in range(8)]   # shards 2,0,0,0,0,1,0,1: every shard holds a track
BAD = "clip8.wav"                           # not decodable; its shard alone reports it


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The same clips computed once unsharded (``ref``) and as 3 shards (``folder``) through the CLI."""
    root = tmp_path_factory.mktemp("shards")
    audio = root / "audio"
    audio.mkdir()
    for i, name in enumerate(CLIPS):
        sf.write(audio / name, tone(1.0 + 0.25 * (i % 3), 22050, 110.0 * (1 + i % 5), seed=i), 22050)
    (audio / BAD).write_bytes(b"RIFF not really audio")
    ref = str(root / "ref.zarr")
    run_mels(MelsParams(input=str(audio), store=ref, feature_sets=SETS, num_workers=0,
                        failures=str(root / "ref.failures.tsv"), summary=str(root / "ref.summary.json")))
    folder = str(root / "features")
    outputs = []
    for i in range(N):
        result = invoke("mels", "--params", "none", "--input", str(audio), "--store", folder,
                        "--shard", f"{i}/{N}", "--set", "num_workers=0", "--set", f"feature_sets=[{', '.join(SETS)}]",
                        "--set", f"failures={root / 'failures.tsv'}", "--set", f"summary={root / 'summary.json'}")
        assert result.exit_code == 0, result.text
        outputs.append(result.text)
    return {"root": root, "audio": audio, "ref": ref, "folder": folder, "outputs": outputs}


def test_shard_of_is_a_stable_partition():
    ids = [f"artist{i % 17}/track{i}.mp3" for i in range(2000)]
    for n in (1, 2, 3, 8):
        shards = [shard_of(t, n) for t in ids]
        assert all(0 <= s < n for s in shards)
        counts = np.bincount(shards, minlength=n)
        assert counts.sum() == len(ids) and counts.min() > 0.8 * len(ids) / n   # roughly balanced
    # the same in a fresh process with another hash seed (Python's str hash would differ)
    code = "from mirkit.data.store import shard_of; print([shard_of(f'artist{i % 17}/track{i}.mp3', 8) for i in range(50)])"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == str([shard_of(t, 8) for t in ids[:50]])
    assert [shard_of(t, 4) for t in ("a", "b", "track-0")] == [0, 1, 2]   # pinned: changing the hash re-shards stores


def test_mels_shards_partition_the_tracks(corpus):
    all_ids = set(CLIPS)
    seen: list[str] = []
    for i in range(N):
        part = open_set(store.shard_url(corpus["folder"], i, N), "mel16k")
        ids = [t.track_id for t in part.tracks]
        assert ids and all(shard_of(t, N) == i for t in ids)
        assert part.attrs["shard"] == f"{i}/{N}"
        seen += ids
    assert sorted(seen) == sorted(all_ids)   # every good track in exactly one shard
    # failures and summary are per shard; the bad file is reported by its own shard only
    bad_shard = shard_of(BAD, N)
    for i in range(N):
        tag = f"shard-{i}-of-{N}"
        with open(corpus["root"] / f"failures.{tag}.tsv") as f:
            rows = list(csv.reader(f, delimiter="\t"))[1:]
        assert [Path(r[0]).name for r in rows] == ([BAD] if i == bad_shard else [])
        assert (corpus["root"] / f"summary.{tag}.json").exists()
        assert f"{tag}.zarr" in corpus["outputs"][i]
    assert not (corpus["root"] / "failures.tsv").exists()


@pytest.mark.parametrize("name", SETS)
def test_shard_folder_reads_like_the_unsharded_store(corpus, name):
    ref, merged = open_set(corpus["ref"], name), open_set(corpus["folder"], name)
    assert isinstance(merged, ShardedSet) and len(merged) == len(ref) == len(CLIPS)
    assert sorted(t.track_id for t in merged.tracks) == sorted(t.track_id for t in ref.tracks)
    order = [shard_of(t.track_id, N) for t in merged.tracks]
    assert order == sorted(order)   # shard 0 first, then 1, then 2
    assert merged.spec == ref.spec and merged.n_bins == ref.n_bins and merged.frame_rate == ref.frame_rate
    assert merged.total_frames == ref.total_frames == merged.attrs["total_frames"]
    assert merged.attrs["n_tracks"] == len(ref) and merged.attrs["shards"] == N and "shard" not in merged.attrs
    for k, t in enumerate(merged.tracks):
        j = ref.index_of(t.track_id)
        assert merged.index_of(t.track_id) == k and merged.n_frames(k) == ref.n_frames(j)
        assert np.array_equal(merged.read(k), ref.read(j))
        assert np.array_equal(merged.read(k, -3, 20), ref.read(j, -3, 20))        # padding as a plain set
        assert np.array_equal(merged.read(k, t.n_frames - 5, 9), ref.read(j, t.n_frames - 5, 9))
    assert merged.index_of("nope.wav") is None
    # starts count frames in the concatenation that iter_frames yields
    blocks = np.concatenate(list(merged.iter_frames(block=7)))
    assert blocks.shape == (merged.total_frames, merged.n_bins)
    last = merged.tracks[-1]
    assert np.array_equal(blocks[last.start: last.start + last.n_frames], merged.read(len(merged) - 1))
    # picklable (DataLoader workers) and loadable into memory, with identical reads
    clone = pickle.loads(pickle.dumps(merged))
    in_memory = open_set(corpus["folder"], name).load_into_memory()
    for k in range(len(merged)):
        assert np.array_equal(clone.read(k), merged.read(k)) and np.array_equal(in_memory.read(k), merged.read(k))
    assert set_names(corpus["folder"]) == sorted(SETS)


def test_rerunning_a_shard_resumes_it(corpus):
    p = MelsParams(input=str(corpus["audio"]), store=corpus["folder"], feature_sets=SETS, num_workers=0, shard=f"1/{N}",
                   failures=str(corpus["root"] / "again.tsv"), summary=str(corpus["root"] / "again.json"))
    report = run_mels(p)
    assert report.n_tracks == sum(shard_of(t, N) == 1 for t in CLIPS + [BAD])
    assert all(r.status == "resumed" and r.stored == 0 for r in report.sets.values())


def test_missing_shards_and_mixed_splits_are_named(corpus, tmp_path):
    folder = tmp_path / "features"
    shutil.copytree(corpus["folder"], folder)
    shutil.rmtree(folder / f"shard-1-of-{N}.zarr")
    with pytest.raises(StoreError, match=rf"missing 1 of {N} shard.*shard-1-of-{N}\.zarr"):
        open_set(str(folder), "mel16k")
    shutil.copytree(folder / f"shard-0-of-{N}.zarr", folder / f"shard-1-of-{N}.zarr")
    with pytest.raises(StoreError, match=rf"shard-1-of-{N}\.zarr: holds shard 0/{N}"):
        open_set(str(folder), "mel16k")   # a shard copied under the wrong name
    shutil.rmtree(folder / f"shard-1-of-{N}.zarr")
    shutil.copytree(corpus["folder"] + f"/shard-1-of-{N}.zarr", folder / f"shard-1-of-{N}.zarr")
    assert len(open_set(str(folder), "mel16k")) == len(CLIPS)
    (folder / "shard-0-of-2.zarr").mkdir()   # a stale split left behind
    with pytest.raises(StoreError, match="different splits"):
        open_set(str(folder), "mel16k")
    with pytest.raises(StoreError, match="no set named 'cqt22k'"):
        open_set(corpus["folder"], "cqt22k")
    with pytest.raises(StoreError, match="no Zarr store"):
        open_set(str(tmp_path / "nothing"), "mel16k")


def test_shards_with_different_parameters_are_refused(tmp_path):
    folder = str(tmp_path / "f")
    for i, hop in enumerate((160, 160, 320)):
        fs, _ = create_or_open(store.shard_url(folder, i, 3), "mel", {"hop": hop, "bins": 4}, 4, 100.0,
                               dtype="float32", attrs={"shard": f"{i}/3"})
        fs.append([(f"t{i}", "src", "fp", np.full((5, 4), i, np.float32))])
    with pytest.raises(StoreError, match=r"shard-2-of-3\.zarr/mel: computed with other parameters.*differs in hop"):
        open_set(folder, "mel")


def test_the_two_layouts_are_never_mixed(corpus, tmp_path):
    common = dict(input=str(corpus["audio"]), feature_sets=["mel16k"], num_workers=0,
                  failures=str(tmp_path / "f.tsv"), summary=str(tmp_path / "s.json"))
    with pytest.raises(StoreError, match="holds shard stores"):
        run_mels(MelsParams(store=corpus["folder"], **common))
    with pytest.raises(StoreError, match="unsharded feature store"):
        run_mels(MelsParams(store=corpus["ref"], shard="0/2", **common))


def test_tokens_and_pretraining_sources_work_on_a_shard_folder(corpus, tmp_path):
    root = corpus["root"]

    def tokens_of(features: str, tag: str) -> str:
        out = str(tmp_path / f"{tag}.tokens.zarr")
        run_tokens(TokensParams(features=features, feature_set="mel24k", out=out, codebook_size=16,
                                quantizer=str(tmp_path / f"{tag}.q.safetensors"), metrics=str(tmp_path / f"{tag}.json")))
        return out

    ref_tokens, tokens = tokens_of(corpus["ref"], "ref"), tokens_of(corpus["folder"], "sharded")
    merged, codes = open_set(corpus["folder"], "mel24k"), open_set(tokens, "mel24k")
    assert [t.track_id for t in codes.tracks] == [t.track_id for t in merged.tracks]
    ref_codes = open_set(ref_tokens, "mel24k")
    same = [np.mean(codes.read(k) == ref_codes.read(ref_codes.index_of(t.track_id)))
            for k, t in enumerate(codes.tracks)]
    assert np.mean(same) > 0.99   # global stats summed in another order: equal up to float rounding

    p = PretrainParams(recipe="muse-lq", recipe_params={"muse-lq": {"preset": "brn-sum-tiny", "crop_frames": 80}},
                       features=corpus["folder"], tokens=tokens, out=str(root / "ckpt"))
    recipe = make_recipe(p)
    sources, chosen = open_sources(p, recipe)
    assert isinstance(sources.features, ShardedSet) and chosen == list(range(len(CLIPS)))
    ref = Sources(open_set(corpus["ref"], "mel24k"), ref_codes)
    for k, t in enumerate(sources.features.tracks):   # the recipe reads the same crops through either store
        j = ref.features.index_of(t.track_id)
        mine, theirs = (recipe.sample(src, i, np.random.default_rng(k)) for src, i in ((sources, k), (ref, j)))
        assert np.array_equal(mine["mel"], theirs["mel"]) and np.array_equal(mine["valid"], theirs["valid"])
        assert mine["tokens"].shape == theirs["tokens"].shape


@pytest.mark.parametrize("value", ["3/3", "-1/2", "1/0", "a/b", "1", "1/2/3"])
def test_bad_shard_values_are_rejected(tmp_path, value):
    result = invoke("mels", "--params", "none", "--input", str(tmp_path),
                    "--store", str(tmp_path / "f"), "--shard", value)
    assert result.exit_code == 2 and "mels.shard" in result.text and "0 <= i < n" in result.text
    assert not (tmp_path / "f").exists()


def test_shard_param_is_validated_on_resolve():
    from mirkit.params import resolve
    assert resolve(MelsParams, {"shard": "2/5"}, section="mels").shard_index() == (2, 5)
    assert resolve(MelsParams, {}, section="mels").out_store == "data/features.zarr"
    p = resolve(MelsParams, {"shard": "0/4"}, section="mels")
    assert (p.out_store, p.out_failures, p.out_summary) == (
        "data/features.zarr/shard-0-of-4.zarr", "data/features.failures.shard-0-of-4.tsv",
        "data/features.summary.shard-0-of-4.json")
    with pytest.raises(ParamsError, match="mels.shard"):
        resolve(MelsParams, {"shard": "4/4"}, section="mels")


@pytest.mark.slow
def test_concurrent_shard_processes_read_back_as_the_single_process_store(corpus, tmp_path):
    """n `mirkit mels --shard i/n` processes started together into one folder (a Slurm array, docs/scale.md) give a
    store that reads, track by track, exactly as the single-process store; `mirkit verify` checks the folder, then
    one `tokens` run over the shard folder reads it as one store."""
    folder = tmp_path / "features"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "mirkit", "mels", "--params", "none", "--input", str(corpus["audio"]),
                               "--store", str(folder), "--shard", f"{i}/{N}", "--set", "num_workers=0",
                               "--set", f"feature_sets=[{', '.join(SETS)}]",
                               "--set", f"failures={tmp_path / 'failures.tsv'}", "--set", f"summary={tmp_path / 'summary.json'}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(N)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    for name in SETS:
        ref, merged = open_set(corpus["ref"], name), open_set(str(folder), name)
        assert isinstance(merged, ShardedSet) and len(merged.shards) == N
        assert sorted(t.track_id for t in merged.tracks) == sorted(t.track_id for t in ref.tracks)
        for k, t in enumerate(merged.tracks):
            assert np.array_equal(merged.read(k), ref.read(ref.index_of(t.track_id))), (name, t.track_id)
    check = subprocess.run([sys.executable, "-m", "mirkit", "verify", str(folder)], env=env, capture_output=True,
                           text=True, timeout=600)
    assert check.returncode == 0 and "sound" in check.stderr, check.stderr[-2000:]
    codes = tmp_path / "tokens.zarr"
    run_tokens(TokensParams(features=str(folder), out=str(codes), feature_set="mel24k", metrics=str(tmp_path / "tokens.json")))
    assert len(open_set(str(codes), "mel24k")) == len(CLIPS)
