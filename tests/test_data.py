"""Data preparation: GOPRO layout, crop geometry, exact bicubic LR, resuming, frame averaging,
synthetic pairs, and the datasets that read the triplets."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from streamsr.data.dataset import PairFolder, TripletDataset
from streamsr.data.gopro import find_pairs, read_rgb
from streamsr.data.prepare import prepare_frames, prepare_gopro, prepare_synthetic
from streamsr.data.triplets import CropSettings, read_index, write_triplets
from streamsr.errors import ConfigError, InputError
from streamsr.models.ops import bicubic_uint8

MOTION = np.zeros((9, 9), np.float32)
MOTION[4, :] = 1 / 9  # a horizontal 9 px box: a crude but real motion blur


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def make_gopro_tree(root: Path, size: tuple[int, int]) -> dict[str, list[str]]:
    """GOPRO_Large-like tree from scikit-image photos resized to `size` (W, H); blur = motion box."""
    photos = {"astro": skdata.astronaut(), "cat": skdata.chelsea(), "coffee": skdata.coffee(),
              "rocket": skdata.rocket()}
    layout: dict[str, list[str]] = {"train": [], "test": []}
    for i, (name, img) in enumerate(photos.items()):
        split = "test" if name == "rocket" else "train"
        seq = f"GOPR{i:04d}_{name}"
        sharp = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        blur = cv2.filter2D(sharp, -1, MOTION, borderType=cv2.BORDER_REFLECT)
        for frame in ("000001", "000002") if split == "train" else ("000001",):
            _write(root / split / seq / "sharp" / f"{frame}.png", sharp)
            _write(root / split / seq / "blur" / f"{frame}.png", blur)
            (root / split / seq / "blur_gamma").mkdir(exist_ok=True)  # ignored, as in GOPRO_Large
            layout[split].append(f"{seq}_{frame}")
    return layout


@pytest.fixture(scope="module")
def gopro_small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gopro_small")
    make_gopro_tree(root, (300, 200))
    return root


def test_find_pairs_reads_gopro_layout(gopro_small):
    pairs = find_pairs(gopro_small)
    assert len(pairs) == 7
    assert sorted({p.split for p in pairs}) == ["test", "train"]
    assert all(p.blur.parent.name == "blur" and p.sharp.parent.name == "sharp" for p in pairs)
    assert len(find_pairs(gopro_small, "test")) == 1
    assert len(find_pairs(gopro_small / "train")) == 6
    assert len(find_pairs(gopro_small / "train" / "GOPR0001_cat")) == 2
    with pytest.raises(InputError):
        find_pairs(gopro_small / "nope")


def test_paper_geometry_crop_count_and_exact_bicubic(tmp_path):
    src = tmp_path / "GOPRO"
    w, h = 420, 300
    layout = make_gopro_tree(src, (w, h))
    dst = tmp_path / "prep"
    summary = prepare_gopro(src, dst)  # the paper's settings: 256 px patches, stride 128, x4
    per_image = ((w - 256) // 128 + 1) * ((h - 256) // 128 + 1)  # = 2 * 1; right/bottom strips dropped
    assert per_image == 2
    assert summary.per_split == {"train": per_image * len(layout["train"]),
                                 "test": per_image * len(layout["test"])}
    records = read_index(dst)
    assert len(records) == 7
    rec = next(r for r in records if r["source"] == "GOPR0001_cat_000002")
    assert rec["triplets"] == ["GOPR0001_cat_000002_y0000_x0000", "GOPR0001_cat_000002_y0000_x0128"]
    sharp = read_rgb(src / "train" / "GOPR0001_cat" / "sharp" / "000002.png")
    blur = read_rgb(src / "train" / "GOPR0001_cat" / "blur" / "000002.png")
    name = rec["triplets"][1]
    hr = read_rgb(dst / "train" / "hr" / f"{name}.png")
    lr = read_rgb(dst / "train" / "lr" / f"{name}.png")
    lr_blur = read_rgb(dst / "train" / "lr_blur" / f"{name}.png")
    np.testing.assert_array_equal(hr, sharp[0:256, 128:384])
    assert lr.shape == lr_blur.shape == (64, 64, 3)
    np.testing.assert_array_equal(lr, bicubic_uint8(hr, (64, 64)))
    np.testing.assert_array_equal(lr_blur, bicubic_uint8(blur[0:256, 128:384], (64, 64)))
    # and the kernel is the antialiased one: a plain INTER_CUBIC down-sample differs
    assert not np.array_equal(lr, cv2.resize(hr, (64, 64), interpolation=cv2.INTER_CUBIC))


def test_small_patch_geometry_and_too_small_images(gopro_small, tmp_path):
    summary = prepare_gopro(gopro_small, tmp_path / "p", CropSettings(64, 32, 4))
    assert summary.triplets == 7 * ((300 - 64) // 32 + 1) * ((200 - 64) // 32 + 1)  # 7 * 8 * 5
    assert len(list((tmp_path / "p" / "train" / "lr").iterdir())) == 6 * 40
    # images smaller than a patch give no triplet; when no image gives one, the run is an error
    # (it reported success with nothing to train on) and leaves the folder reusable
    with pytest.raises(InputError, match=r"no triplets made: none of the 7 images is at least "
                                         r"256x256 pixels \(.* is 300x200\); pass a smaller --patch"):
        prepare_gopro(gopro_small, tmp_path / "q", CropSettings(256, 128, 4))
    assert not (tmp_path / "q" / "prepare.json").exists()
    again = prepare_gopro(gopro_small, tmp_path / "q", CropSettings(64, 32, 4))
    assert again.triplets == 7 * 40 and again.images_done == 7


def test_prepare_resumes_and_skips_finished_images(gopro_small, tmp_path):
    dst = tmp_path / "p"
    settings = CropSettings(64, 32, 4)
    pairs = find_pairs(gopro_small)
    first = write_triplets(pairs[:3], dst, settings)  # an "interrupted" run: 3 images done
    assert first.images_done == 3
    done_file = dst / "train" / "hr" / f"{read_index(dst)[0]['triplets'][0]}.png"
    stamp = done_file.stat().st_mtime_ns
    with open(dst / "index.jsonl", "a") as f:  # a torn line, as a crash mid-write leaves it
        f.write('{"split": "train", "source": "GOPR00')
    again = prepare_gopro(gopro_small, dst, settings)
    assert (again.images_skipped, again.images_done) == (3, 4)
    assert again.triplets == 7 * 40
    assert done_file.stat().st_mtime_ns == stamp  # not rewritten
    lines = (dst / "index.jsonl").read_text().splitlines()
    assert len(lines) == 7 and all(json.loads(line) for line in lines)
    with pytest.raises(ConfigError):
        prepare_gopro(gopro_small, dst, CropSettings(64, 64, 4))  # other settings, same folder


def test_parallel_prepare_matches_serial(gopro_small, tmp_path):
    settings = CropSettings(64, 32, 4)
    serial = prepare_gopro(gopro_small, tmp_path / "one", settings)
    parallel = prepare_gopro(gopro_small, tmp_path / "two", settings, workers=2)
    assert parallel.per_split == serial.per_split and parallel.images_done == 7
    key = lambda r: (r["split"], r["source"])  # noqa: E731
    assert sorted(read_index(tmp_path / "two"), key=key) == sorted(read_index(tmp_path / "one"), key=key)
    for split in ("train", "test"):
        for kind in ("lr_blur", "lr", "hr"):
            names = sorted(p.name for p in (tmp_path / "one" / split / kind).iterdir())
            assert names == sorted(p.name for p in (tmp_path / "two" / split / kind).iterdir())
    name = names[3]
    np.testing.assert_array_equal(read_rgb(tmp_path / "one" / "test" / "hr" / name),
                                  read_rgb(tmp_path / "two" / "test" / "hr" / name))


def _srgb_average(frames: list[np.ndarray]) -> np.ndarray:
    """Independent reference: decode sRGB (IEC 61966-2-1), average, re-encode, round."""
    x = np.stack(frames).astype(np.float64) / 255
    lin = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).mean(0)
    enc = np.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.clip(np.round(enc * 255), 0, 255).astype(np.uint8)


def _panning_frames(n: int, w: int = 96, h: int = 80) -> list[np.ndarray]:
    img = skdata.astronaut()
    return [np.ascontiguousarray(img[100:100 + h, 100 + 3 * i:100 + 3 * i + w]) for i in range(n)]


def test_prepare_frames_from_folder_averages_in_linear_light(tmp_path):
    frames = _panning_frames(16)
    for i, f in enumerate(frames):
        _write(tmp_path / "clip" / f"{i:04d}.png", f)
    dst = tmp_path / "prep"
    summary = prepare_frames(tmp_path / "clip", dst, average=5, settings=CropSettings(64, 16, 4),
                             val_fraction=0.34)
    # 16 frames -> 3 groups of 5 (the last frame is left over); floor(3 * 0.34) = 1 held out
    pairs = find_pairs(dst / "pairs")
    assert [(p.split, p.key) for p in pairs] == [("train", "clip_000000"), ("train", "clip_000001"),
                                                 ("test", "clip_000002")]  # the end is held out
    per_image = ((96 - 64) // 16 + 1) * ((80 - 64) // 16 + 1)
    assert summary.per_split == {"train": 2 * per_image, "test": per_image}
    blur = read_rgb(dst / "pairs" / "train" / "clip" / "blur" / "000001.png")
    sharp = read_rgb(dst / "pairs" / "train" / "clip" / "sharp" / "000001.png")
    np.testing.assert_array_equal(blur, _srgb_average(frames[5:10]))
    np.testing.assert_array_equal(sharp, frames[7])
    assert not np.array_equal(blur, np.round(np.mean(frames[5:10], axis=0)).astype(np.uint8))
    # the eval reader takes the pairs folder too
    assert len(PairFolder(dst / "pairs")) == 1  # its test split
    assert len(PairFolder(dst / "pairs" / "train")) == 2
    with pytest.raises(ConfigError):
        prepare_frames(tmp_path / "clip", tmp_path / "x", average=4)


def test_prepare_frames_from_video(tmp_path):
    import av

    path = tmp_path / "pan.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=240)
        s.width, s.height, s.pix_fmt = 96, 80, "bgr0"
        for f in _panning_frames(14):
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    summary = prepare_frames(path, tmp_path / "prep", average=7, settings=CropSettings(64, 16, 4),
                             val_fraction=0.0)
    assert len(find_pairs(tmp_path / "prep" / "pairs")) == 14 // 7
    assert summary.per_split == {"train": 2 * 3 * 2}
    again = prepare_frames(path, tmp_path / "prep", average=7, settings=CropSettings(64, 16, 4),
                           val_fraction=0.0)
    assert again.images_skipped == 2


def _pan_video(path, n: int, shift: int = 0):
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=240)
        s.width, s.height, s.pix_fmt = 96, 80, "bgr0"
        for f in _panning_frames(n):
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.roll(f, shift, axis=1), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def test_prepare_frames_keeps_two_clips_of_the_same_name_apart(tmp_path):
    # cam1/clip.mkv and cam2/clip.mkv into one --dst: the second must not clear the first's pairs
    a = _pan_video(tmp_path / "cam1" / "clip.mkv", 14)
    b = _pan_video(tmp_path / "cam2" / "clip.mkv", 21, shift=5)
    crop = CropSettings(64, 16, 4)
    prepare_frames(a, tmp_path / "prep", average=7, settings=crop, val_fraction=0.0)
    prepare_frames(b, tmp_path / "prep", average=7, settings=crop, val_fraction=0.0)
    assert len(find_pairs(tmp_path / "prep" / "pairs")) == 2 + 3
    again = prepare_frames(a, tmp_path / "prep", average=7, settings=crop, val_fraction=0.0)
    assert again.images_skipped == 2 + 3  # every pair of both clips still there, nothing redone
    assert len(find_pairs(tmp_path / "prep" / "pairs")) == 5


def test_prepare_frames_resumes_groups_and_clears_pairs_of_other_settings(tmp_path, monkeypatch):
    import streamsr.data.prepare as prepare

    frames = _panning_frames(16)
    for i, f in enumerate(frames):
        _write(tmp_path / "clip" / f"{i:04d}.png", f)
    dst, pairs = tmp_path / "prep", tmp_path / "prep" / "pairs"
    crop = CropSettings(64, 16, 4)
    per_image = ((96 - 64) // 16 + 1) * ((80 - 64) // 16 + 1)
    real_average, calls = prepare.average_frames, []

    def stop_at_second_group(group):
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C while averaging group 1 of 3
        calls.append(1)
        return real_average(group)

    monkeypatch.setattr(prepare, "average_frames", stop_at_second_group)
    with pytest.raises(KeyboardInterrupt):
        prepare_frames(tmp_path / "clip", dst, average=5, settings=crop, val_fraction=0.34)
    first = pairs / "train" / "clip" / "blur" / "000000.png"
    assert sorted(p.name for p in first.parent.iterdir()) == ["000000.png"]
    done_at = first.stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(prepare, "average_frames", lambda g: (calls.append(1), real_average(g))[1])
    summary = prepare_frames(tmp_path / "clip", dst, average=5, settings=crop, val_fraction=0.34)
    assert len(calls) == 2 and first.stat().st_mtime_ns == done_at  # groups 1 and 2 only
    assert [(p.split, p.key) for p in find_pairs(pairs)] == [
        ("train", "clip_000000"), ("train", "clip_000001"), ("test", "clip_000002")]
    np.testing.assert_array_equal(read_rgb(first), _srgb_average(frames[0:5]))
    assert summary.per_split == {"train": 2 * per_image, "test": per_image}

    # Other settings: 16 frames / 3 = 5 pairs, the last one held out. The average-5 pairs and
    # their triplets go (clip_000002 was a test pair; now it is a training pair of other frames).
    summary = prepare_frames(tmp_path / "clip", dst, average=3, settings=crop, val_fraction=0.34)
    assert [(p.split, p.key) for p in find_pairs(pairs)] == [
        ("train", f"clip_{i:06d}") for i in range(4)] + [("test", "clip_000004")]
    np.testing.assert_array_equal(read_rgb(first), _srgb_average(frames[0:3]))
    assert summary.per_split == {"train": 4 * per_image, "test": per_image}
    assert len(list((dst / "train" / "hr").iterdir())) == 4 * per_image  # nothing stale left
    assert len(list((dst / "test" / "hr").iterdir())) == per_image
    hr = read_rgb(dst / "train" / "hr" / "clip_000002_y0000_x0000.png")
    np.testing.assert_array_equal(hr, frames[7][:64, :64])  # middle of frames 6-8, not 10-14
    assert {r["source"] for r in read_index(dst)} == {f"clip_{i:06d}" for i in range(5)}
    calls.clear()
    again = prepare_frames(tmp_path / "clip", dst, average=3, settings=crop, val_fraction=0.34)
    assert calls == [] and again.images_skipped == 5  # finished: nothing decoded or cropped


def test_prepare_synthetic(tmp_path):
    imgs = tmp_path / "stills"
    for name in ("astronaut", "coffee", "chelsea"):
        _write(imgs / f"{name}.png", cv2.resize(getattr(skdata, name)(), (128, 96)))
    dst = tmp_path / "prep"
    summary = prepare_synthetic(imgs, dst, CropSettings(64, 32, 4), variants=2, seed=3,
                                val_fraction=0.34, max_shift=6.0, exposures=5)
    pairs = find_pairs(dst / "pairs")
    assert len(pairs) == 6
    assert sorted(p.split for p in pairs).count("test") == 2  # every 3rd image, both variants
    per_image = ((128 - 64) // 32 + 1) * ((96 - 64) // 32 + 1)
    assert summary.triplets == 6 * per_image
    b0 = read_rgb(dst / "pairs" / "train" / "synthetic" / "blur" / "astronaut_v0.png")
    s0 = read_rgb(dst / "pairs" / "train" / "synthetic" / "sharp" / "astronaut_v0.png")
    assert b0.shape == s0.shape and not np.array_equal(b0, s0)
    again = prepare_synthetic(imgs, tmp_path / "prep2", CropSettings(64, 32, 4), variants=2, seed=3,
                              val_fraction=0.34, max_shift=6.0, exposures=5)
    assert again.triplets == summary.triplets
    np.testing.assert_array_equal(
        b0, read_rgb(tmp_path / "prep2" / "pairs" / "train" / "synthetic" / "blur" / "astronaut_v0.png"))


_D8 = [(f, r) for f in (False, True) for r in range(4)]


def _apply(img: np.ndarray, flip: bool, rot: int) -> np.ndarray:
    return np.rot90(img[:, ::-1] if flip else img, rot)


def test_triplet_dataset_crops_and_augments_consistently(gopro_small, tmp_path):
    dst = tmp_path / "p"
    prepare_gopro(gopro_small, dst, CropSettings(64, 32, 4))
    plain = TripletDataset(dst, "train")
    assert len(plain) == 6 * 40
    lr_blur, lr, hr = plain[5]
    assert lr_blur.shape == lr.shape == (3, 16, 16) and hr.shape == (3, 64, 64)
    assert lr.dtype == torch.float32 and 0 <= lr.min() and lr.max() <= 1
    aug = TripletDataset(dst, "train", patch=8, augment=True, seed=1)
    seen = set()
    for i in range(len(aug)):
        a_blur, a_lr, a_hr = (t.permute(1, 2, 0).numpy() for t in aug[i])
        b_blur, b_lr, b_hr = (t.permute(1, 2, 0).numpy() for t in plain[i])
        assert a_lr.shape == (8, 8, 3) and a_hr.shape == (32, 32, 3)
        # find the crop + transform that explains the HR crop; it must explain the LR ones too
        hits = [(f, r, y, x) for f, r in _D8 for y in range(9) for x in range(9)
                if np.array_equal(_apply(b_hr[4 * y:4 * y + 32, 4 * x:4 * x + 32], f, r), a_hr)]
        assert hits, f"item {i}: HR crop not found in the stored triplet"
        assert any(np.array_equal(_apply(b_lr[y:y + 8, x:x + 8], f, r), a_lr)
                   and np.array_equal(_apply(b_blur[y:y + 8, x:x + 8], f, r), a_blur)
                   for f, r, y, x in hits)
        seen.add(hits[0][:2])
        if i >= 40:
            break
    assert len(seen) >= 4  # augmentation really varies
    # deterministic per (seed, epoch, index), different between epochs
    again = TripletDataset(dst, "train", patch=8, augment=True, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(aug[3], again[3], strict=True))
    again.set_epoch(1)
    assert any(not torch.equal(aug[j][2], again[j][2]) for j in range(5))
    assert len(TripletDataset(dst, "test", limit=7)) == 7
    with pytest.raises(InputError):
        TripletDataset(dst, "val")
    with pytest.raises(ConfigError):
        TripletDataset(dst, "train", patch=32)


def test_pair_folder_uses_gopro_test_split(gopro_small):
    pf = PairFolder(gopro_small)
    assert len(pf) == 1
    blur, sharp, key = pf[0]
    assert key == "GOPR0003_rocket_000001" and blur.shape == sharp.shape == (200, 300, 3)


def test_prepare_frames_smaller_than_the_patch_is_an_error_and_keeps_the_pairs(tmp_path):
    # 48x32 frames, --patch 64: it made nothing and reported success
    clip = tmp_path / "clip"
    clip.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(clip / f"{i:03d}.png"), rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    dst = tmp_path / "prep"
    with pytest.raises(InputError, match=r"no triplets made.*64x64 pixels.*is 48x32.*pairs.*kept"):
        prepare_frames(clip, dst, average=3, settings=CropSettings(64, 32, 4), val_fraction=0.0)
    assert len(list((dst / "pairs" / "train" / "clip" / "sharp").iterdir())) == 2
    summary = prepare_frames(clip, dst, average=3, settings=CropSettings(32, 16, 4), val_fraction=0.0)
    assert summary.triplets == 2 * 2  # two pairs, 2 x 1 crops of 32 px at stride 16 in 48x32


def test_prepare_frames_refuses_absurd_average_and_max_pairs(tmp_path):
    for kw in ({"average": 257}, {"average": 5, "max_pairs": 0}):
        with pytest.raises(ConfigError):
            prepare_frames(tmp_path, tmp_path / "x", **kw)


def test_prepare_synthetic_mixed_sizes_with_a_crop_larger_than_some_images(tmp_path, caplog):
    # --size 256 on a folder with a 200x150 photo crashed with a ValueError traceback
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "big.png"), skdata.astronaut()[:, :, ::-1])  # 512x512
    cv2.imwrite(str(photos / "small.png"), skdata.coffee()[:150, :200, ::-1])
    dst = tmp_path / "prep"
    with caplog.at_level("WARNING"):
        summary = prepare_synthetic(photos, dst, CropSettings(64, 64, 4), val_fraction=0.0,
                                    size=256)
    assert summary.triplets == 16 and summary.images_done == 1  # 4 x 4 crops of the big photo
    assert "1 of 2 images are smaller than the --size 256 crop" in caplog.text
    assert "small.png is 200x150" in caplog.text
    with pytest.raises(InputError, match=r"every image .* smaller than the --size 600 crop"):
        prepare_synthetic(photos, tmp_path / "p2", CropSettings(64, 64, 4), size=600)


@pytest.mark.parametrize("kw,flag", [({"seed": -1}, "--seed"), ({"seed": 2**32}, "--seed"),
                                     ({"max_shift": float("nan")}, "--max-shift"),
                                     ({"noise_sigma": -1.0}, "--noise"), ({"exposures": 0}, "--exposures"),
                                     ({"jpeg_quality": 101}, "--jpeg"), ({"size": 0}, "--size")])
def test_prepare_synthetic_refuses_bad_options_before_reading(tmp_path, kw, flag):
    with pytest.raises(ConfigError, match=flag):
        prepare_synthetic(tmp_path / "none", tmp_path / "p", CropSettings(64, 64, 4), **kw)


def test_frames_of_a_video_come_from_its_main_stream_not_a_cover_picture(tmp_path):
    import media

    from streamsr.data.prepare import iter_frames

    frames = list(iter_frames(media.make_cover_first_mp4(tmp_path / "cover.mp4")))
    assert [f.shape for f in frames] == [(48, 64, 3)] * 10
    assert [media.read_index(f) for f in frames] == list(range(10))
