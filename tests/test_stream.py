"""The streaming loader (mirkit.data.stream): block reads, layout-independent schedule, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mirkit.data import store, stream
from mirkit.params import ParamsError
from mirkit.recipes.base import Sources
from mirkit.train.loop import PretrainParams, make_recipe

N_TRACKS, BINS = 40, 128
SETTINGS = stream.StreamSettings(block_mib=128 * BINS * 2 / stream.MIB, buffer=2, lanes=4, memory_gib=1.0,
                                 read_threads=1)


def write_store(url: str, n: int = N_TRACKS, seed: int = 0) -> None:
    """Tracks of 20..150 frames, 16-frame chunks, 64-frame shards: many blocks from a small store."""
    rng = np.random.default_rng(seed)
    from mirkit.data.features import PRESETS
    fs, _ = store.create_or_open(url, "mel16k", PRESETS["mel16k"].to_dict(), BINS, 31.25, dtype="float16",
                                 chunk_frames=16, shard_chunks=4)
    fs.append([(f"t{i:03d}", "src", "fp", rng.random((int(rng.integers(20, 150)), BINS), np.float32))
               for i in range(n)])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("stream") / "f.zarr")
    write_store(url)
    return url


def setup(url: str):
    p = PretrainParams(recipe="myna", recipe_params={"myna": {"preset": "myna-tiny", "crop_frames": 32}},
                       features=url, manifest=None)
    recipe = make_recipe(p)
    feats = store.open_set(url, "mel16k")
    return recipe, Sources(feats), list(range(len(feats)))


def run(url, *, start=0, steps=5, world=1, workers=0, batch=8, settings=SETTINGS) -> list[dict[str, torch.Tensor]]:
    """All ranks' batches of every step, concatenated in rank order (the global batch)."""
    recipe, sources, tracks = setup(url)
    per_rank = [list(stream.make_loader(recipe, sources, tracks, settings, batch=batch, seed=7, start=start,
                                        steps=steps, rank=r, world=world, workers=workers)) for r in range(world)]
    return [{k: torch.cat([per_rank[r][s][k] for r in range(world)]) for k in per_rank[0][s]}
            for s in range(steps - start)]


def same(a, b) -> bool:
    return len(a) == len(b) and all(set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b, strict=True))


def test_blocks_are_chunk_aligned_and_cover_every_track_once(corpus):
    _, sources, tracks = setup(corpus)
    blocks = stream.plan_blocks(sources.features, tracks, SETTINGS.block_mib)
    assert sorted(t for b in blocks for t in b.tracks) == tracks and len(blocks) >= 8
    for b in blocks:   # every track of a block starts in the same 128-frame (two-shard) range
        assert len({sources.features.tracks[t].start // 128 for t in b.tracks}) == 1
    big = stream.plan_blocks(sources.features, tracks, 1000.0)   # larger than the store: one block
    assert len(big) == 1 and big[0].frames == sources.features.total_frames


def test_streamed_examples_are_the_recipes_crops_of_the_scheduled_tracks(corpus):
    recipe, sources, tracks = setup(corpus)
    sched = stream.Schedule(stream.plan_blocks(sources.features, tracks, SETTINGS.block_mib), 4, 2, 8, 7)
    got = run(corpus, steps=3)
    for step, batch in enumerate(got):
        for slot in range(8):
            track = sched.track(step, slot)
            ref = recipe.sample(sources, track, np.random.default_rng([7, 1, step * 8 + slot]))
            assert int(batch["index"][slot]) == track
            for k, v in ref.items():
                assert np.array_equal(batch[k][slot].numpy(), v), (step, slot, k)


def test_each_lane_visits_all_its_tracks_once_per_epoch(corpus):
    _, sources, tracks = setup(corpus)
    sched = stream.Schedule(stream.plan_blocks(sources.features, tracks, SETTINGS.block_mib), 4, 2, 8, 7)
    for lane in range(4):
        n = sched.lane_tracks[lane]
        seen = [sched.track(s, lane * 2 + i) for s in range(n) for i in range(2)][:2 * n]
        own = sorted(t for b in sched.lane_blocks[lane] for t in sched.blocks[b].tracks)
        assert sorted(seen[:n]) == own and sorted(seen[n:]) == own and seen[:n] != seen[n:]
    assert sum(sched.lane_tracks) == N_TRACKS
    twice = stream.Schedule(sched.blocks, 4, 2, 8, 7, repeat=2)   # each read track feeds two examples per pass
    n = twice.lane_tracks[0]
    seen = [twice.track(s, i) for s in range(n // 2) for i in range(2)]
    assert n == 2 * sched.lane_tracks[0] and sorted(seen) == sorted(2 * [t for b in twice.lane_blocks[0]
                                                                        for t in twice.blocks[b].tracks])


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_examples_do_not_depend_on_ranks_workers_or_resume(corpus):
    one = run(corpus, steps=6)
    assert same(run(corpus, steps=6, world=2, workers=2), one)       # 2 ranks × 2 loader workers each
    assert same(run(corpus, steps=6, world=4, workers=3), one)       # more workers than lanes: some idle
    assert same(run(corpus, start=4, steps=6, world=2), one[4:])     # a resumed run starts mid-epoch exactly


def test_an_fsspec_url_streams_the_same_batches(corpus, tmp_path):
    import fsspec
    fsspec.filesystem("memory").put(corpus, "/stream-test/f.zarr", recursive=True)
    assert same(run("memory://stream-test/f.zarr", steps=3), run(corpus, steps=3))


def test_memory_bound_and_lane_counts_are_checked_with_one_line_errors(corpus):
    tight = stream.StreamSettings(SETTINGS.block_mib, 2, 4, memory_gib=1e-5)
    with pytest.raises(ParamsError, match=r"pretrain.stream_memory_gib=1e-05: this rank's 4 lane\(s\) need"):
        run(corpus, settings=tight)
    with pytest.raises(ParamsError, match="stream_lanes=4: must divide pretrain.batch_size=6"):
        run(corpus, batch=6)
    with pytest.raises(ParamsError, match="multiple of the 3 DDP processes"):
        run(corpus, world=3, batch=12)
    with pytest.raises(ParamsError, match="only 1 block"):
        run(corpus, settings=stream.StreamSettings(1000.0, 2, 4))


def test_in_memory_refuses_a_set_larger_than_ram_and_advises_streaming(corpus, monkeypatch):
    from mirkit.train import loop
    p = PretrainParams(features=corpus, manifest=None)
    feats = store.open_set(corpus, "mel16k")
    monkeypatch.setattr(stream, "available_ram", lambda: stream.estimated_bytes(feats))
    with pytest.raises(ParamsError, match=r"in_memory=true: the feature set is ~.*set pretrain.stream: true"):
        loop.choose_in_memory(p, feats)
    p.stream = True
    assert loop.choose_in_memory(p, feats) is False


def test_training_streams_and_resumes_exactly(tmp_path, corpus, one_thread):
    from test_train import run_weights
    from train_helpers import interrupted_then_resumed

    from mirkit.train.loop import train
    common = dict(recipe="myna", recipe_params={"myna": {"preset": "myna-tiny", "crop_frames": 32, "mask_ratio": 0.5}},
                  features=corpus, manifest=None, steps=4, batch_size=8, warmup_steps=1, log_every=1,
                  checkpoint_every=2, stream=True, stream_block_mib=SETTINGS.block_mib, stream_buffer=2,
                  stream_lanes=4, stream_memory_gib=1.0)
    whole = PretrainParams(**common, out=str(tmp_path / "a"), log=str(tmp_path / "la"), summary=str(tmp_path / "a.json"))
    train(whole)
    part = PretrainParams(**common, out=str(tmp_path / "b"), log=str(tmp_path / "lb"), summary=str(tmp_path / "b.json"))
    assert interrupted_then_resumed(part, stop_after=2).resumed_from == 2   # cut right after the step-2 checkpoint
    a, b = run_weights(whole.out), run_weights(part.out)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_gpu_check_says_no_cuda_device_and_exits_0_on_cpu():
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).parent.parent
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(root)}
    run = subprocess.run([sys.executable, str(root / "bench" / "gpu_check.py")], capture_output=True, text=True,
                         env=env, timeout=120)
    assert run.returncode == 0 and "no CUDA device" in run.stdout, run.stderr[-2000:]
