"""SogCLR (Myna's loss) and decoupled InfoNCE, against formulas written out here with loops."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mirkit.objectives.contrastive import decoupled_infonce
from mirkit.objectives.sogclr import SogCLR

TAU, GAMMA = 0.1, 0.9


def embeddings(n: int, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64).float().requires_grad_(),
            torch.randn(n, d, generator=g, dtype=torch.float64).float().requires_grad_())


def cosine_table(z1: torch.Tensor, z2: torch.Tensor) -> list[list[np.ndarray]]:
    """views[v][i] = unit vector of view v of item i (numpy float64)."""
    return [[(z / np.linalg.norm(z)) for z in view.detach().double().numpy()] for view in (z1, z2)]


def anchors(views):
    """For every anchor (v, i): its positive similarity and its 2N - 2 negative similarities."""
    n = len(views[0])
    for v in range(2):
        for i in range(n):
            a = views[v][i]
            negs = [float(a @ views[w][j]) for w in range(2) for j in range(n) if j != i]
            yield v, i, float(a @ views[1 - v][i]), np.array(negs)


def reference_decoupled(z1, z2, tau):
    total, count = 0.0, 0
    for _, _, pos, negs in anchors(cosine_table(z1, z2)):
        total += -pos / tau + math.log(np.exp(negs / tau).sum())
        count += 1
    return total / count


def reference_step(z1, z2, u, index, tau=TAU, gamma=GAMMA):
    """One SogCLR step by hand: the new u per anchor and the gradient weights c_aj = exp(s/tau)/((2N-2) u_a)."""
    views = cosine_table(z1, z2)
    n = len(views[0])
    u_anchor, weights = {}, {}
    for v, i, _, negs in anchors(views):
        g = np.exp(negs / tau).mean()                                   # mean over the 2N - 2 negatives
        old = u[index[i]]
        u_anchor[v, i] = g if old == 0 else (1 - gamma) * old + gamma * g
        weights[v, i] = np.exp(negs / tau) / ((2 * n - 2) * u_anchor[v, i])
    new_u = dict(u)
    for i in range(n):
        new_u[index[i]] = (u_anchor[0, i] + u_anchor[1, i]) / 2
    return new_u, weights


def surrogate_with_constants(z1, z2, weights):
    """sum over anchors of -s_pos + sum_j c_aj s_aj, divided by N, with c held constant (torch, for autograd)."""
    v1, v2 = torch.nn.functional.normalize(z1, dim=-1), torch.nn.functional.normalize(z2, dim=-1)
    views, n = (v1, v2), len(z1)
    total = z1.new_zeros(())
    for v in range(2):
        for i in range(n):
            a = views[v][i]
            negs = torch.stack([a @ views[w][j] for w in range(2) for j in range(n) if j != i])
            total = total - a @ views[1 - v][i] + (torch.from_numpy(weights[v, i]).float() * negs).sum()
    return total / n


def test_decoupled_infonce_matches_its_formula():
    z1, z2 = embeddings(5)
    assert float(decoupled_infonce(z1, z2, 0.2).detach()) == pytest.approx(reference_decoupled(z1, z2, 0.2), rel=1e-5)


def test_first_step_gradient_is_two_tau_times_decoupled_infonce():
    """At a fresh item u_a is the batch mean of exp(s/tau), so SogCLR's gradient per anchor is
    -grad s+ + sum_j softmax_j grad s_j = tau * grad(decoupled InfoNCE of that anchor); SogCLR sums the
    two views' anchors and averages over N items, decoupled InfoNCE averages over the 2N anchors:
    grad SogCLR = 2 * tau * grad decoupled InfoNCE."""
    z1, z2 = embeddings(6)
    SogCLR(10, TAU, GAMMA)(z1, z2, torch.tensor([3, 1, 7, 0, 9, 4])).backward()
    g_sog = (z1.grad.clone(), z2.grad.clone())
    z1.grad = z2.grad = None
    decoupled_infonce(z1, z2, TAU).backward()
    for a, b in zip(g_sog, (z1.grad, z2.grad), strict=True):
        torch.testing.assert_close(a, 2 * TAU * b, rtol=1e-4, atol=1e-6)
    cos = torch.nn.functional.cosine_similarity(torch.cat(g_sog).flatten(), torch.cat([z1.grad, z2.grad]).flatten(), 0)
    assert float(cos) == pytest.approx(1.0, abs=1e-5)


def test_moving_average_and_gradient_follow_the_update_rule_over_steps():
    loss = SogCLR(8, TAU, GAMMA)
    u = {k: 0.0 for k in range(8)}
    steps = [[0, 1, 2, 3], [2, 3, 4, 5], [0, 5, 6, 2]]          # items come back with their history
    for step, index in enumerate(steps):
        z1, z2 = embeddings(4, seed=step + 1)
        u, weights = reference_step(z1, z2, u, index)
        value = loss(z1, z2, torch.tensor(index))
        value.backward()
        got = (z1.grad.clone(), z2.grad.clone())
        z1.grad = z2.grad = None
        expected = surrogate_with_constants(z1, z2, weights)
        expected.backward()
        assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=1e-4, abs=1e-5)
        torch.testing.assert_close(got[0], z1.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got[1], z2.grad, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(loss.u.numpy(), [u[k] for k in range(8)], rtol=1e-5)
    assert loss.u[7] == 0 and all(loss.u[k] > 0 for k in range(7))


def test_eval_mode_leaves_the_state_alone_and_repeats_are_averaged():
    loss = SogCLR(4, TAU, GAMMA).eval()
    z1, z2 = embeddings(3)
    loss(z1, z2, torch.tensor([0, 1, 2]))
    assert float(loss.u.abs().sum()) == 0
    # eval mode uses this batch's estimate only (no state), so it needs no index either
    assert torch.isfinite(loss(z1, z2, None))
    loss.train()
    u, _ = reference_step(z1, z2, {k: 0.0 for k in range(4)}, [1, 1, 2])
    loss(z1, z2, torch.tensor([1, 1, 2]))
    views = cosine_table(z1, z2)
    per_anchor = [np.exp(negs / TAU).mean() for _, _, _, negs in anchors(views)]   # v=0 rows, then v=1 rows
    item1 = np.mean([(per_anchor[0] + per_anchor[3]) / 2, (per_anchor[1] + per_anchor[4]) / 2])
    assert float(loss.u[1]) == pytest.approx(item1, rel=1e-5)
    assert float(loss.u[2]) == pytest.approx(u[2], rel=1e-5)


def test_bad_indices_are_named():
    z1, z2 = embeddings(2)
    with pytest.raises(ValueError, match="batch\\['index'\\]"):
        SogCLR(4)(z1, z2, None)
    with pytest.raises(ValueError, match="n_items=4"):
        SogCLR(4)(z1, z2, torch.tensor([0, 4]))


def test_state_is_in_the_checkpoint_and_resume_is_exact(tmp_path, tiny_corpus):
    """The moving averages live in the model's buffers, so the checkpoint carries them (with the
    training heads, in the run folder's ``training/heads.safetensors``)."""
    from train_helpers import train_until

    from mirkit.train import checkpoint
    from mirkit.train.loop import PretrainParams, train

    def weights(out):
        folder = checkpoint.model_dir(out)
        return {**{f"encoder.{k}": v for k, v in load_file(str(folder / "model.safetensors")).items()},
                **checkpoint.read_heads(out)}

    def params(out):
        return PretrainParams(recipe="myna", recipe_params={"myna": {"preset": "myna-tiny", "mask_ratio": 0.5,
                                                                       "crop_frames": 32}},
                              features=tiny_corpus["features"], out=str(out), log=str(out / "log.tsv"),
                              summary=str(out / "s.json"), steps=4, batch_size=4, warmup_steps=1, log_every=1,
                              checkpoint_every=2, lr=1e-3)

    full = params(tmp_path / "full")
    train(full)
    u_full = weights(tmp_path / "full")["sogclr.u"]
    assert u_full.shape == (6,) and bool((u_full > 0).all())           # 6 tracks, all seen in 4 x 4 examples
    interrupted = params(tmp_path / "cut")
    train_until(interrupted, stop_after=2)
    at_2 = weights(tmp_path / "cut")["sogclr.u"]
    assert not torch.equal(at_2, u_full)
    train(interrupted, resume=True)
    resumed = weights(tmp_path / "cut")
    full_weights = weights(tmp_path / "full")
    assert resumed.keys() == full_weights.keys() and "sogclr.u" in resumed
    for k in full_weights:
        torch.testing.assert_close(resumed[k], full_weights[k], rtol=0, atol=0)


@pytest.mark.slow
def test_two_ddp_processes_update_the_same_state_as_one(tmp_path):
    """gloo, 2 ranks x 3 items == 1 process x 6 items over two steps: same loss, same gradients (up to
    DDP's 1/world averaging), and both ranks hold the single process's moving averages."""
    worker = Path(__file__).parent / "sogclr_ddp_worker.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                    str(31500 + os.getpid() % 1000), str(worker), str(tmp_path)], check=True, env=env,
                   timeout=300, stdout=subprocess.DEVNULL)
    sys.path.insert(0, str(Path(__file__).parent))
    from sogclr_ddp_worker import run_steps
    single = run_steps(rank=0, world=1)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["u"], single["u"], rtol=1e-6, atol=0)
        for step in range(2):
            rows = slice(3 * rank, 3 * rank + 3)
            for v in range(2):
                torch.testing.assert_close(got["grads"][step][v] / 2, single["grads"][step][v][rows],
                                           rtol=1e-4, atol=1e-7)
    losses = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["loss"] for r in range(2)]
    for step in range(2):
        assert (losses[0][step] + losses[1][step]) / 2 == pytest.approx(single["loss"][step], rel=1e-5)


def libauc_step(z1, z2, u, index, first_epoch, tau=TAU, gamma=GAMMA):
    """LibAUC GCLoss_v1's rule per item: u = g when the item is unseen in epoch 0, else (1 - gamma) u + gamma g
    (so an item first seen after epoch 0, as Myna's drop_last can leave, starts at gamma * g = 0.9 g)."""
    views = cosine_table(z1, z2)
    n = len(views[0])
    u_anchor = {}
    for v, i, _, negs in anchors(views):
        g = np.exp(negs / tau).mean()
        old = u[index[i]]
        u_anchor[v, i] = g if (first_epoch[i] and old == 0) else (1 - gamma) * old + gamma * g
    new_u = dict(u)
    for i in range(n):
        new_u[index[i]] = (u_anchor[0, i] + u_anchor[1, i]) / 2
    return new_u


@pytest.mark.parametrize("n_tracks, batch", [(7, 3), (5, 4), (6, 6)])
def test_every_first_visit_is_in_epoch_0_so_mirkit_equals_libauc(n_tracks, batch):
    """Issue 18.7: LibAUC gives u = 0.9 g to an item first seen after epoch 0; mirkit gives u = g at a first
    visit. mirkit's loader (a permutation per epoch addressed by a global counter, batches crossing epochs, no
    drop_last) draws every item inside epoch 0, so the two rules agree: replay LibAUC's rule on the loader's
    draws (straddling batches included) and compare the state after every step."""
    from mirkit.train.loop import ExampleStream, batch_indices
    stream = ExampleStream.__new__(ExampleStream)
    stream.tracks, stream.seed = list(range(n_tracks)), 3
    draws = batch_indices(0, 4 * n_tracks, batch, 0, 1)
    first = {}
    for k in (k for step in draws for k in step):
        first.setdefault(stream.track_of(k), k)
    assert sorted(first) == list(range(n_tracks)) and max(first.values()) < n_tracks   # all first visits in epoch 0
    loss, u = SogCLR(n_tracks, TAU, GAMMA), {k: 0.0 for k in range(n_tracks)}
    for step, ks in enumerate(draws[:8]):
        index = [stream.track_of(k) for k in ks]
        if len(set(index)) < len(index):
            continue            # a repeat inside one batch is averaged (tested above), not LibAUC's case
        z1, z2 = embeddings(len(ks), seed=step + 1)
        u = libauc_step(z1, z2, u, index, [k < n_tracks for k in ks])
        loss(z1, z2, torch.tensor(index))
        np.testing.assert_allclose(loss.u.numpy(), [u[k] for k in range(n_tracks)], rtol=1e-5)
