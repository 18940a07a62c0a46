"""Distributed ClipLoss on 2 CPU processes (gloo) equals the single-process loss and DDP-averaged gradients.

Relation checked (open_clip issue #616): with ``gather_with_grad`` the differentiable all-gather sums feature
gradients over ranks, so each rank's encoder gradient is world_size × its shard's share; DDP's average over ranks
is then exactly the one-process gradient of the full-batch loss — for both the global and the local loss.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from affectclip.core.distributed import DistInfo, cleanup
from affectclip.losses import ClipLoss, GlobalLocalLoss, SentimentGuidedClipLoss

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)

N, D_IN, D = 8, 5, 4
WORLD = 2
CONFIGS = [(False, True), (True, True)]


def _setup():
    torch.manual_seed(0)
    image_in, text_in = torch.randn(N, D_IN, dtype=torch.float64), torch.randn(N, D_IN, dtype=torch.float64)
    encoder = torch.nn.Linear(D_IN, D).double()
    log_scale = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    targets = torch.softmax(torch.randn(N, N, dtype=torch.float64) * 2, dim=-1).float()
    sentiment = torch.softmax(torch.randn(N, 7) * 2, dim=-1)
    return image_in, text_in, encoder, log_scale, targets, sentiment


def _global_local_inputs():
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(N, 3, dtype=torch.bool)
    mask[::3, 1:] = False
    return (
        torch.randn(N, D, generator=g),
        torch.randn(N, 6, D, generator=g),
        torch.randn(N, D, generator=g),
        torch.randn(N, 3, D, generator=g),
        mask,
    )


def _step(loss_fn, encoder, log_scale, image_in, text_in, **kwargs):
    encoder.zero_grad()
    log_scale.grad = None
    image = F.normalize(encoder(image_in), dim=-1)
    text = F.normalize(encoder(text_in * 0.5), dim=-1)
    loss = loss_fn(image, text, log_scale.exp(), **kwargs)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in (*encoder.parameters(), log_scale)]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    image_in, text_in, encoder, log_scale, targets, sentiment = _setup()
    shard = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    results = {}
    for local_loss, with_grad in CONFIGS:
        for name, kwargs in (("hard", {}), ("soft", {"targets": targets})):
            loss_fn = ClipLoss(local_loss=local_loss, gather_with_grad=with_grad, rank=rank, world_size=WORLD)
            loss, grads = _step(loss_fn, encoder, log_scale, image_in[shard], text_in[shard], **kwargs)
            for g in grads:  # what DistributedDataParallel does: average over ranks
                dist.all_reduce(g)
                g /= WORLD
            dist.all_reduce(loss)
            results[(local_loss, with_grad, name)] = (loss / WORLD, grads)
    # uneven shards (a rank dropped unreadable samples): 5 + 3 rows; sample-weighted, the ranks' losses add up to
    # the one-process loss only if every shard is gathered whole, without padding, and each rank's rows are offset
    uneven = slice(0, 5) if rank == 0 else slice(5, N)
    for local_loss, with_grad in [*CONFIGS, (True, False)]:
        for name, kwargs in (("hard", {}), ("soft", {"targets": targets})):
            loss_fn = ClipLoss(local_loss=local_loss, gather_with_grad=with_grad, rank=rank, world_size=WORLD)
            loss = _step(loss_fn, encoder, log_scale, image_in[uneven], text_in[uneven], **kwargs)[0]
            weighted = loss * (uneven.stop - uneven.start) / N
            dist.all_reduce(weighted)
            results[("uneven", local_loss, with_grad, name)] = weighted
    # EmotionCLIP's released setting: global loss, no gradient through the gather, sentiment gathered too.
    reweighted = SentimentGuidedClipLoss(lam=10.0, rank=rank, world_size=WORLD)
    results["sentiment"] = _step(
        reweighted, encoder, log_scale, image_in[shard], text_in[shard], sentiment_probs=sentiment[shard]
    )[0]
    local = _global_local_inputs()
    for local_loss in (False, True):
        loss_fn = GlobalLocalLoss(local_loss=local_loss, gather_with_grad=True, rank=rank, world_size=WORLD)
        loss = loss_fn(*(t[shard] for t in local), 10.0)["loss"].detach()
        dist.all_reduce(loss)
        results[("global_local", local_loss)] = loss / WORLD
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    cleanup(DistInfo(rank=rank, world_size=WORLD))  # barrier, then destroy (seen: SIGABRT at exit in CI)


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("local_loss,with_grad", CONFIGS)
@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_distributed_loss_and_grads_equal_single_process(distributed_results, local_loss, with_grad, targets):
    image_in, text_in, encoder, log_scale, soft, _ = _setup()
    kwargs = {"targets": soft} if targets == "soft" else {}
    ref_loss, ref_grads = _step(ClipLoss(), encoder, log_scale, image_in, text_in, **kwargs)
    for rank_results in distributed_results:
        loss, grads = rank_results[(local_loss, with_grad, targets)]
        assert torch.allclose(loss, ref_loss, atol=1e-6)
        for got, want in zip(grads, ref_grads, strict=True):
            assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()


@pytest.mark.parametrize("local_loss,with_grad", [*CONFIGS, (True, False)])
@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_ranks_holding_different_sample_counts_give_the_one_process_loss(distributed_results, local_loss, with_grad,
                                                                           targets):
    image_in, text_in, encoder, log_scale, soft, _ = _setup()
    kwargs = {"targets": soft} if targets == "soft" else {}
    ref_loss = _step(ClipLoss(), encoder, log_scale, image_in, text_in, **kwargs)[0]
    for rank_results in distributed_results:
        assert torch.allclose(rank_results[("uneven", local_loss, with_grad, targets)], ref_loss, atol=1e-6)


def test_distributed_sentiment_loss_uses_the_global_batch(distributed_results):
    image_in, text_in, encoder, log_scale, _, sentiment = _setup()
    loss_fn = SentimentGuidedClipLoss(lam=10.0)
    ref_loss = _step(loss_fn, encoder, log_scale, image_in, text_in, sentiment_probs=sentiment)[0]
    for rank_results in distributed_results:
        assert torch.allclose(rank_results["sentiment"], ref_loss, atol=1e-6)


@pytest.mark.parametrize("local_loss", [False, True])
def test_distributed_global_local_loss_equals_single_process(distributed_results, local_loss):
    want = GlobalLocalLoss()(*_global_local_inputs(), 10.0)["loss"]
    for rank_results in distributed_results:
        assert torch.allclose(rank_results[("global_local", local_loss)], want, atol=1e-5)
