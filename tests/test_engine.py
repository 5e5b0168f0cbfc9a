import warnings

import numpy as np
import pytest
import torch
from helpers import max_lightness_error, textured_gray

from semwatch.engine import (
    CANVAS_STEPS,
    Colorizer,
    EngineError,
    GrayImage,
    Refinement,
    plan_image,
    resolve_device,
)
from semwatch.model import ModelError, load_generator


@pytest.fixture
def colorizer(tiny_colorizer) -> Colorizer:
    return tiny_colorizer  # the session's (conftest): CPU, chroma 128, batches of 3


class Strong(torch.nn.Module):
    """Wraps a generator so its colours are saturated: makes gamut mapping do real work."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.tanh(self.inner(x) * 50)


class Blotchy(torch.nn.Module):
    """Predicts colour blotches that ignore the image (what the filter has to clean up)."""

    def forward(self, x):
        gen = torch.Generator().manual_seed(7)
        n, _, h, w = x.shape
        noise = torch.randn(n, 2, h // 8 + 1, w // 8 + 1, generator=gen)
        noise = torch.nn.functional.interpolate(noise, size=(h, w), mode="bilinear")
        return torch.tanh(noise * 0.4)


def test_plan_long_side_and_canvas_buckets():
    plan = plan_image(1920, 2560, 512)
    assert plan.small == (384, 512) and plan.canvas == (384, 512)
    plan = plan_image(1024, 1536, 512)
    assert plan.small == (341, 512) and plan.canvas == (384, 512)
    plan = plan_image(100, 60, 512)  # never up-scaled
    assert plan.small == (100, 60) and plan.canvas == (128, 128)
    shapes = {plan_image(h, w, 512).canvas for h in range(50, 3000, 97) for w in range(40, 3000, 131)}
    assert len(shapes) <= CANVAS_STEPS**2
    assert all(h % 32 == 0 and w % 32 == 0 and h <= 512 and w <= 512 for h, w in shapes)


def test_output_size_lightness_and_databar(colorizer):
    gray = textured_gray(300, 420)
    out = colorizer.colorize([GrayImage(gray, databar_row=260)])[0]
    assert out.shape == (300, 420, 3) and out.dtype == np.uint8
    assert max_lightness_error(out, gray) <= 1.0
    bar = out[260:]
    assert np.array_equal(bar[..., 0], gray[260:]) and np.array_equal(bar[..., 2], gray[260:])


def test_saturated_prediction_keeps_lightness(tiny_model):
    generator = load_generator(tiny_model)
    generator.model = Strong(generator.model).eval()
    colorizer = Colorizer(generator, device="cpu", chroma_size=64)
    gray = textured_gray(97, 131, seed=5)
    out = colorizer.colorize([GrayImage(gray)])[0]
    assert max_lightness_error(out, gray) <= 1.0
    chroma = np.ptp(out.astype(int), axis=2)
    assert chroma.mean() > 20  # really coloured, not gray


def test_mixed_sizes_in_one_call_match_single_calls(colorizer):
    images = [
        GrayImage(textured_gray(200, 300, 1)),
        GrayImage(textured_gray(180, 256, 2), databar_row=150),
        GrayImage(textured_gray(40, 700, 3)),
        GrayImage(textured_gray(17, 9, 4)),
        GrayImage(textured_gray(210, 290, 5)),
    ]
    together = colorizer.colorize(images)
    for image, out in zip(images, together):
        alone = colorizer.colorize([image])[0]
        assert out.shape == image.gray.shape + (3,)
        assert np.abs(out.astype(int) - alone.astype(int)).max() <= 1


def test_batches_use_static_canvas_shapes(colorizer, monkeypatch):
    seen = []
    original = colorizer.backend.__class__.__call__

    def spy(self, batch):
        seen.append(tuple(batch.shape))
        return original(self, batch)

    monkeypatch.setattr(colorizer.backend.__class__, "__call__", spy)
    colorizer.colorize(
        [
            GrayImage(textured_gray(h, w))
            for h, w in [(200, 300), (190, 310), (300, 200), (50, 50), (210, 300)]
        ]
    )
    allowed = set(colorizer.canvas_shapes())
    assert all(shape[2:] in allowed for shape in seen)
    assert all(shape[0] <= colorizer.batch_size for shape in seen)
    assert len(seen) < 5  # some images shared a forward pass


def test_all_databar_image_is_gray(colorizer):
    gray = textured_gray(50, 60)
    out = colorizer.colorize([GrayImage(gray, databar_row=0)])[0]
    assert np.array_equal(out, np.repeat(gray[..., None], 3, axis=2))


def test_predict_ab_full_resolution(colorizer):
    ab = colorizer.predict_ab([GrayImage(textured_gray(150, 200), databar_row=120)])[0]
    assert ab.shape == (2, 150, 200)
    assert torch.count_nonzero(ab[:, 120:]) == 0


def test_read_only_input_is_fine(colorizer):
    gray = textured_gray(64, 64)
    gray.setflags(write=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        colorizer.colorize([GrayImage(gray)])
    assert not [w for w in caught if issubclass(w.category, UserWarning)]


def test_rejects_non_uint8(colorizer):
    with pytest.raises(ValueError, match="uint8"):
        colorizer.colorize([GrayImage(np.zeros((10, 10), np.float32))])


def test_device_and_backend_errors(tiny_model):
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="no CUDA"):
            resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(EngineError, match="unknown backend"):
        Colorizer.from_file(tiny_model, device="cpu", backend="onnx", chroma_size=64)
    with pytest.raises(EngineError, match="multiple of 32"):
        Colorizer.from_file(tiny_model, device="cpu", chroma_size=100)


def test_missing_bundled_model_says_what_to_do(monkeypatch, tmp_path):
    import semwatch.model

    # The one place that says "no model" (semwatch.model_file) asks semwatch.model for it.
    monkeypatch.setattr(semwatch.model, "default_model_path", lambda: tmp_path / "default.safetensors")
    with pytest.raises(ModelError, match="--model"):
        Colorizer.from_file(None, device="cpu")


def test_model_identity_exposed(colorizer, tiny_model):
    assert colorizer.model_name == "tiny-random"
    assert len(colorizer.model_sha256) == 64
    assert colorizer.backend_name == "eager" and colorizer.device == "cpu"


def test_guided_smoothing_flattens_colour_inside_flat_regions(tiny_model):
    generator = load_generator(tiny_model)
    generator.model = Blotchy().eval()
    rng = np.random.default_rng(0)
    gray = np.full((128, 160), 60, np.uint8)
    gray[:, 80:] = 190  # two flat objects with one sharp edge
    gray = np.clip(gray + rng.normal(0, 3, gray.shape), 0, 255).astype(np.uint8)
    image = GrayImage(gray)
    plain = Colorizer(generator, device="cpu", chroma_size=128).predict_ab([image])[0]
    smooth_engine = Colorizer(
        generator, device="cpu", chroma_size=128, refinement=Refinement(guide_radius=8, guide_eps=0.01)
    )
    smooth = smooth_engine.predict_ab([image])[0]
    for region in (np.s_[:, 8:-8, 8:72], np.s_[:, 8:-8, 88:-8]):
        assert smooth[region].std(dim=(1, 2)).max() < 0.5 * plain[region].std(dim=(1, 2)).max()
    out = smooth_engine.colorize([image])[0]
    assert max_lightness_error(out, gray) <= 1.0
