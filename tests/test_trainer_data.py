"""trainer.data on small generated images: gray skipping, split stability, augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semwatch.color import input_to_l, lab_to_rgb, rgb_to_lab, target_to_ab
from trainer.data import (
    DataError,
    DataSummary,
    ab_l_from_rgb,
    build_datasets,
    is_really_gray,
    list_images,
    load_rgb,
    make_loader,
    split_of,
)


def shapes_image(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A coloured 'specimen': textured background plus disks and squares.

    Colour follows structure (disks are bright and red, squares are striped and blue,
    the background is a dim olive), so a network can learn it from the gray image alone.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    lightness = 35 + 10 * rng.random() + 6 * rng.standard_normal((size, size))
    a = np.full((size, size), -8.0 + 4 * rng.random(), np.float32)
    b = np.full((size, size), 20.0 + 6 * rng.random(), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(10, size - 10, 2)
        r = rng.uniform(6, size / 5)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        lightness[disk] = 70 + 5 * rng.standard_normal(disk.sum())
        a[disk], b[disk] = 55.0, 35.0
    for _ in range(int(rng.integers(1, 3))):
        y0, x0 = rng.integers(0, size - 20, 2)
        s = int(rng.integers(10, size // 3))
        box = (slice(y0, y0 + s), slice(x0, x0 + s))
        stripes = 50 + 15 * np.sin(xx[box] * 1.2)
        lightness[box] = stripes
        a[box], b[box] = 15.0, -50.0
    lab = torch.from_numpy(np.stack([np.clip(lightness, 5, 95), a, b]).astype(np.float32))
    rgb = lab_to_rgb(lab.unsqueeze(0))[0]
    return (rgb.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def write_shapes_dataset(root: Path, count: int = 40, gray: int = 2, size: int = 96, seed: int = 1) -> Path:
    """``count`` colour images (PNG and JPEG, in two sub-folders) plus ``gray`` gray ones."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        sub = root / ("set-a" if i % 2 else "set-b")
        sub.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(shapes_image(rng, size))
        if i % 3 == 0:
            image.save(sub / f"img{i:03d}.jpg", quality=95)
        else:
            image.save(sub / f"img{i:03d}.png")
    for i in range(gray):
        g = shapes_image(rng, size).mean(axis=2).astype(np.uint8)
        # Saved as RGB JPEG: the gray image in colour clothing that must still be detected.
        Image.fromarray(np.stack([g, g, g], axis=2)).save(root / f"gray{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), count=24, gray=2)


def test_list_images_recursive_sorted_and_filtered(dataset_root: Path, tmp_path: Path) -> None:
    paths = list_images(dataset_root)
    assert len(paths) == 26
    rels = [p.relative_to(dataset_root).as_posix() for p in paths]
    assert rels == sorted(rels)
    assert any(r.startswith("set-a/") for r in rels) and any(r.startswith("set-b/") for r in rels)

    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / ".hidden" / "x.png")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "ok.PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in list_images(tmp_path)] == ["ok.PNG"]
    with pytest.raises(DataError, match="not a folder"):
        list_images(tmp_path / "missing")


def test_gray_images_are_skipped_and_counted(dataset_root: Path) -> None:
    train, val, summary = build_datasets(dataset_root, image_size=64, val_fraction=0.25, seed=3)
    assert isinstance(summary, DataSummary)
    assert summary.skipped_gray == 2
    assert summary.skipped_bad == 0
    assert summary.train + summary.val == 24 == len(train) + len(val)
    assert summary.images == 26
    assert summary.as_dict()["skipped_gray"] == 2
    assert not any(r.rel.startswith("gray") for r in train.records + val.records)


def test_bad_files_are_skipped_with_their_reason(tmp_path: Path) -> None:
    write_shapes_dataset(tmp_path, count=12, gray=0)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    _, _, summary = build_datasets(tmp_path, image_size=32, val_fraction=0.3)
    assert summary.skipped_bad == 1
    with pytest.raises(DataError, match="broken.jpg"):
        load_rgb(tmp_path / "broken.jpg")


def test_is_really_gray() -> None:
    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, (50, 60), dtype=np.uint8)
    assert is_really_gray(np.stack([g, g, g], axis=2))
    assert is_really_gray(g)
    jittered = np.stack([g, g, g], axis=2).astype(np.int16) + rng.integers(-4, 5, (50, 60, 3))
    assert is_really_gray(np.clip(jittered, 0, 255).astype(np.uint8))  # JPEG-like chroma noise
    colored = np.stack([g, g, g], axis=2)
    colored[10:20, 10:20] = (200, 40, 40)  # a small coloured detail is enough to learn from
    assert not is_really_gray(colored)
    assert not is_really_gray(shapes_image(rng, 64))


def test_split_is_deterministic_stable_and_proportional() -> None:
    names = [f"folder/{i:05d}.jpg" for i in range(4000)]
    first = [split_of(n, 0.1) for n in names]
    assert first == [split_of(n, 0.1) for n in names]
    share = first.count("val") / len(names)
    assert 0.08 < share < 0.12
    # A larger fraction only moves images from train to val, never the other way.
    bigger = [split_of(n, 0.2) for n in names]
    assert all(b == "val" for a, b in zip(first, bigger) if a == "val")
    assert all(split_of(n, 0.0) == "train" for n in names[:50])
    # Pinned values: the split must not change between versions, or validation leaks.
    assert [split_of(f"img{i}.png", 0.5) for i in range(8)] == [
        "val",
        "train",
        "train",
        "val",
        "train",
        "val",
        "train",
        "val",
    ]
    with pytest.raises(ValueError):
        split_of("x.png", 1.0)


def test_split_does_not_depend_on_the_root_or_on_other_files(tmp_path: Path) -> None:
    a = write_shapes_dataset(tmp_path / "a", count=16, gray=0)
    _, val_a, _ = build_datasets(a, image_size=32, val_fraction=0.3)
    b = write_shapes_dataset(tmp_path / "b", count=16, gray=0)
    write_shapes_dataset(b / "extra", count=6, gray=0, seed=9)  # new images arrive later
    _, val_b, _ = build_datasets(b, image_size=32, val_fraction=0.3)
    rels_a = {r.rel for r in val_a.records}
    rels_b = {r.rel for r in val_b.records if not r.rel.startswith("extra/")}
    assert rels_a == rels_b and rels_a


def test_explicit_val_dir(tmp_path: Path) -> None:
    train_root = write_shapes_dataset(tmp_path / "train", count=10, gray=1)
    val_root = write_shapes_dataset(tmp_path / "val", count=4, gray=0, seed=5)
    train, val, summary = build_datasets(train_root, image_size=32, val_fraction=0.5, val_dir=val_root)
    assert (len(train), len(val)) == (10, 4)
    assert summary.val_root == str(val_root.resolve())
    assert summary.images == 15 and summary.skipped_gray == 1


def test_empty_or_gray_only_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no JPEG/PNG/TIFF"):
        build_datasets(tmp_path, image_size=32)
    write_shapes_dataset(tmp_path, count=0, gray=3)
    with pytest.raises(DataError, match="3 gray"):
        build_datasets(tmp_path, image_size=32)


def test_item_shapes_ranges_and_colour_round_trip(dataset_root: Path) -> None:
    train, val, _ = build_datasets(dataset_root, image_size=64, val_fraction=0.25, seed=3)
    l_in, ab = train[0]
    assert l_in.shape == (1, 64, 64) and ab.shape == (2, 64, 64)
    assert l_in.dtype == ab.dtype == torch.float32
    assert -1.0 <= float(l_in.min()) and float(l_in.max()) <= 1.0
    assert float(ab.abs().max()) < 1.0
    # The pair decodes back to the crop it came from (the conventions of semwatch.color).
    rgb = train.rgb_crop(0)
    lab = torch.cat([input_to_l(l_in), target_to_ab(ab)]).unsqueeze(0)
    assert torch.allclose(lab_to_rgb(lab)[0], rgb, atol=2e-3)
    assert torch.allclose(rgb_to_lab(rgb.unsqueeze(0))[0, 1:], target_to_ab(ab), atol=1e-3)


def test_augmentation_depends_on_seed_epoch_and_index_only(dataset_root: Path) -> None:
    train, val, _ = build_datasets(dataset_root, image_size=48, val_fraction=0.25, seed=3)
    a0 = train.rgb_crop(1)
    assert torch.equal(a0, train.rgb_crop(1))  # same epoch: same crop
    train.set_epoch(1)
    assert not torch.equal(a0, train.rgb_crop(1))  # next epoch: another crop
    train.set_epoch(0)
    assert torch.equal(a0, train.rgb_crop(1))
    # Validation is a fixed centre crop whatever the epoch.
    v0 = val.rgb_crop(0)
    val.set_epoch(7)
    assert torch.equal(v0, val.rgb_crop(0))
    # Over many epochs the crops include flips/rotations: some crop differs from all others.
    crops = []
    for epoch in range(8):
        train.set_epoch(epoch)
        crops.append(train.rgb_crop(2))
    assert all(c.shape == (3, 48, 48) for c in crops)
    assert len({c.numpy().tobytes() for c in crops}) == 8


def test_loader_order_is_seeded_and_shards_cover_everything(dataset_root: Path) -> None:
    train, _, _ = build_datasets(dataset_root, image_size=32, val_fraction=0.25, seed=3)
    loader, sampler = make_loader(train, batch_size=4, workers=0, seed=11, shuffle=True)
    sampler.set_epoch(2)
    first = [b[0] for b in loader]
    sampler.set_epoch(2)
    again = [b[0] for b in loader]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert first[0].shape[1:] == (1, 32, 32)
    seen: list[int] = []
    for rank in range(2):
        _, s = make_loader(train, batch_size=4, workers=0, seed=11, shuffle=True, rank=rank, world_size=2)
        s.set_epoch(0)
        seen.extend(s)
    assert set(seen) == set(range(len(train)))


def test_loader_with_worker_processes_matches_in_process(dataset_root: Path) -> None:
    train, _, _ = build_datasets(dataset_root, image_size=32, val_fraction=0.25, seed=3)
    train.set_epoch(1)
    outputs = []
    for workers in (0, 2):
        loader, sampler = make_loader(train, batch_size=5, workers=workers, seed=4, shuffle=True)
        sampler.set_epoch(1)
        outputs.append(torch.cat([b[1] for b in loader]))
    assert torch.equal(outputs[0], outputs[1])


def test_16bit_and_palette_tiffs_decode(tmp_path: Path) -> None:
    import tifffile

    rgb16 = (np.random.default_rng(0).random((20, 30, 3)) * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", rgb16, photometric="rgb")
    out = load_rgb(tmp_path / "deep.tif")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    # full-range noise: the percentile window is nearly 0..65535
    assert np.abs(out.astype(int) - (rgb16 / 257).round().astype(int)).max() <= 1
    Image.new("P", (10, 12), 3).save(tmp_path / "pal.png")
    assert load_rgb(tmp_path / "pal.png").shape == (12, 10, 3)


def test_ab_l_from_rgb_gray_has_zero_ab() -> None:
    gray = torch.full((2, 3, 8, 8), 0.5)
    l_in, ab = ab_l_from_rgb(gray)
    assert l_in.shape == (2, 1, 8, 8) and ab.shape == (2, 2, 8, 8)
    assert float(ab.abs().max()) < 1e-3


def test_a_16bit_gray_tiff_reads_as_the_daemon_sees_it(tmp_path: Path) -> None:
    import tifffile

    from semwatch.imaging import read_image

    # 12-bit detector levels in a 16-bit container, as SEMs write them.
    levels = np.random.default_rng(3).normal(2000, 400, (40, 50)).clip(0, 4095).astype(np.uint16)
    tifffile.imwrite(tmp_path / "gray16.tif", levels)
    rgb = load_rgb(tmp_path / "gray16.tif")
    gray = read_image(tmp_path / "gray16.tif").gray
    assert rgb.shape == (40, 50, 3) and rgb.dtype == np.uint8
    assert all(np.array_equal(rgb[..., c], gray) for c in range(3))
    assert rgb.max() == 255 and rgb.min() == 0  # windowed, not scaled by 65535 (which gave <= 16)


def test_a_16bit_colour_tiff_gets_one_window_for_all_channels(tmp_path: Path) -> None:
    import tifffile

    rgb8 = shapes_image(np.random.default_rng(4), 64)
    rgb8[:2] = 0  # black and white rows beyond the window's percentiles, in every channel
    rgb8[-2:] = 255
    tifffile.imwrite(tmp_path / "deep.tif", rgb8.astype(np.uint16) * 16, photometric="rgb")
    # window 0..4080 for all three channels: the 12-bit levels map back to the 8-bit ones
    assert np.array_equal(load_rgb(tmp_path / "deep.tif"), rgb8)


def test_8bit_images_decode_exactly_as_pillow_converts_them(tmp_path: Path) -> None:
    """The trainer's 8-bit RGB JPEG/PNG training sets see the same pixels as before the
    shared decoder (which was Pillow's convert("RGB"))."""
    import tifffile

    rng = np.random.default_rng(5)
    rgb = shapes_image(rng, 48)
    gray = rgb.mean(axis=2).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=90)
    Image.fromarray(gray).save(tmp_path / "gray.jpg", quality=90)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full_like(gray, 200)])).save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([gray, np.full_like(gray, 9)]), mode="LA").save(tmp_path / "la.png")
    Image.fromarray(rgb).quantize(16).save(tmp_path / "palette.png")
    Image.fromarray(gray > 128).save(tmp_path / "bits.png")
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    for path in sorted(tmp_path.iterdir()):
        with Image.open(path) as image:
            expected = np.array(image.convert("RGB"))
        assert np.array_equal(load_rgb(path), expected), path.name
