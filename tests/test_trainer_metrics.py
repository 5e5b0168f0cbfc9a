"""trainer.metrics on inputs whose answers can be worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.metrics import (
    PSNR_CAP_DB,
    ab_histogram,
    ab_mae,
    colorfulness,
    histogram_intersection,
    psnr,
)


def _constant_ab(a: float, b: float, n: int = 1, size: int = 4) -> torch.Tensor:
    ab = torch.empty(n, 2, size, size)
    ab[:, 0] = a
    ab[:, 1] = b
    return ab


def test_histogram_bins_and_counts() -> None:
    # limit 128, bins of 8 -> 32 x 32; a = 20 is bin (20 + 128) // 8 = 18, b = -30 is bin 12.
    hist = ab_histogram(_constant_ab(20.0, -30.0, n=2, size=3))
    assert hist.shape == (32, 32)
    assert hist.dtype == torch.float64
    assert hist[18, 12] == 18  # 2 images x 9 pixels, pooled
    assert hist.sum() == 18


def test_histogram_accepts_single_image_and_clamps_out_of_range() -> None:
    hist = ab_histogram(torch.tensor([[[500.0]], [[-500.0]]]))
    assert hist[31, 0] == 1 and hist.sum() == 1


def test_histogram_ignores_pixels_at_or_below_chroma_min() -> None:
    ab = torch.zeros(1, 2, 1, 3)
    ab[0, 0, 0] = torch.tensor([3.0, 5.0, 5.1])  # chroma 3, 5 (not > 5), 5.1
    assert ab_histogram(ab).sum() == 1
    assert ab_histogram(ab, chroma_min=0.0).sum() == 3


def test_histogram_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="ab_histogram"):
        ab_histogram(torch.zeros(1, 3, 4, 4))


def test_intersection_identical_is_one_and_disjoint_is_zero() -> None:
    red = ab_histogram(_constant_ab(60.0, 40.0))
    blue = ab_histogram(_constant_ab(10.0, -60.0))
    assert histogram_intersection(red, red) == pytest.approx(1.0)
    assert histogram_intersection(red, blue) == 0.0


def test_intersection_is_scale_free_and_partial() -> None:
    # One side half red half blue, the other all red (four times as many pixels): 0.5.
    mixed = torch.cat((_constant_ab(60.0, 40.0), _constant_ab(10.0, -60.0)))
    red = ab_histogram(_constant_ab(60.0, 40.0, n=4))
    assert histogram_intersection(ab_histogram(mixed), red) == pytest.approx(0.5)


def test_intersection_with_empty_histogram_is_zero() -> None:
    gray = ab_histogram(torch.zeros(1, 2, 4, 4))
    assert gray.sum() == 0
    assert histogram_intersection(gray, ab_histogram(_constant_ab(60.0, 40.0))) == 0.0
    assert histogram_intersection(gray, gray) == 0.0


def test_colorfulness_of_gray_is_zero() -> None:
    gray = torch.rand(2, 1, 8, 8).expand(2, 3, 8, 8)
    assert torch.equal(colorfulness(gray), torch.zeros(2))
    assert colorfulness(torch.full((3, 5, 5), 77, dtype=torch.uint8)).item() == 0.0


def test_colorfulness_of_flat_red_by_hand() -> None:
    # Pure red (255, 0, 0): rg = 255, yb = 127.5, no spread -> 0.3 * sqrt(255^2 + 127.5^2).
    red = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    red[:, 0] = 255
    expected = 0.3 * math.hypot(255.0, 127.5)
    assert colorfulness(red).item() == pytest.approx(expected, rel=1e-5)
    # The same colour as float in [0, 1] gives the same 0..255-scale figure.
    assert colorfulness(red.float() / 255).item() == pytest.approx(expected, rel=1e-5)


def test_colorfulness_spread_term_by_hand() -> None:
    # Half the pixels (255, 0, 0), half (0, 255, 0): rg = +-255 (sd 255, mean 0),
    # yb = 127.5 everywhere (sd 0, mean 127.5) -> 255 + 0.3 * 127.5.
    img = torch.zeros(3, 2, 2)
    img[0, 0] = 1.0
    img[1, 1] = 1.0
    assert colorfulness(img).item() == pytest.approx(255 + 0.3 * 127.5, rel=1e-5)


def test_psnr_identical_is_capped_and_known_error() -> None:
    x = torch.rand(2, 3, 6, 6)
    assert torch.equal(psnr(x, x), torch.full((2,), PSNR_CAP_DB))
    # Every value off by 0.1 -> MSE 0.01 -> 20 dB.
    y = torch.full((3, 4, 4), 0.5)
    assert psnr(y + 0.1, y).item() == pytest.approx(20.0, abs=1e-4)


def test_psnr_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="psnr: shapes differ"):
        psnr(torch.zeros(3, 4, 4), torch.zeros(3, 4, 5))


def test_ab_mae_by_hand() -> None:
    pred = torch.zeros(2, 3, 3)
    true = torch.zeros(2, 3, 3)
    true[0] = 10.0  # a off by 10 everywhere, b exact -> mean over both channels 5
    assert ab_mae(pred, true) == pytest.approx(5.0)
    assert ab_mae(true, true) == 0.0
    with pytest.raises(ValueError, match="ab_mae"):
        ab_mae(pred, true[:1])


def test_metrics_run_on_cuda_when_present() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    ab = _constant_ab(60.0, 40.0).cuda()
    assert histogram_intersection(ab_histogram(ab), ab_histogram(ab)) == pytest.approx(1.0)
    assert colorfulness(torch.zeros(1, 3, 2, 2, device="cuda")).device.type == "cuda"
