"""The losses stay off the host on an accelerator: ranks' sample counts are exchanged once per loss call, and the
NaN check reads nothing back from a device tensor (on CPU it still names the tensor)."""

from __future__ import annotations

import pytest
import torch

from affectclip.losses.contrastive import ClipLoss, check_no_nan
from affectclip.losses.global_local import GlobalLocalLoss


def _count_exchanges(monkeypatch) -> list[int]:
    calls = [0]
    original = ClipLoss.rank_sizes

    def counted(self, local):
        calls[0] += 1
        return original(self, local)

    monkeypatch.setattr(ClipLoss, "rank_sizes", counted)
    return calls


@pytest.mark.parametrize("local_mode", ["attn_pool", "off"])
def test_global_local_loss_exchanges_rank_sizes_once_per_call(monkeypatch, local_mode):
    g = torch.Generator().manual_seed(0)
    n, p, k, d = 4, 9, 3, 8
    image, text = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    patches, sentences = torch.randn(n, p, d, generator=g), torch.randn(n, k, d, generator=g)
    mask = torch.ones(n, k, dtype=torch.bool)
    loss_fn = GlobalLocalLoss(local_mode=local_mode)
    expected = loss_fn(image, patches, text, sentences, mask, 10.0)["loss"]
    calls = _count_exchanges(monkeypatch)
    out = loss_fn(image, patches, text, sentences, mask, 10.0)
    assert calls == [1]
    torch.testing.assert_close(out["loss"], expected, rtol=0, atol=0)
    sizes = ClipLoss().rank_sizes(image)
    calls[0] = 0
    loss_fn(image, patches, text, sentences, mask, 10.0, sizes=sizes)
    assert calls == [0]  # a caller that already exchanged them this step passes `sizes`: no second exchange


def test_nan_check_names_a_host_tensor_and_never_reads_a_device_tensor():
    with pytest.raises(FloatingPointError, match="patches"):
        check_no_nan(patches=torch.tensor([0.0, float("nan")]))
    # a tensor that is not on the host cannot be read back without a sync; `meta` has no data at all, so reading it
    # would raise: the check must leave it alone
    check_no_nan(patches=torch.full((2,), float("nan"), device="meta"))
