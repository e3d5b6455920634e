"""Camera-shake motion blur made from sharp images, so training pairs and samples need no dataset.

A camera pose is `(dx, dy, angle[, scale])`: the camera's offset in source pixels from where it
looks by default, its roll in degrees, and its zoom (1 = one source pixel per output pixel). A
blurry frame is the average of the scene seen from the poses the camera passes through during
one exposure, taken in linear light as a sensor integrates it (like GOPRO, which averages
consecutive 240 fps frames). The matching sharp frame is the scene seen from the middle pose, so
the pair is aligned the way GOPRO's pairs are.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal

import cv2
import numpy as np

from streamsr.data.transforms import linear_to_srgb, srgb_to_linear

__all__ = ["shake_trajectory", "camera_path", "random_camera_exposure", "pose_matrix", "render_exposure",
           "shake_blur", "camera_blur", "add_noise", "quantise", "random_crop", "synthetic_pair",
           "camera_pair", "about_point", "h264_roundtrip"]


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """White noise low-passed by a Gaussian of `sigma` samples, rescaled to unit std."""
    pad = int(math.ceil(4 * sigma)) + 1
    x = rng.standard_normal(n + 2 * pad)
    if sigma > 0:
        r = np.arange(-pad, pad + 1)
        k = np.exp(-0.5 * (r / sigma) ** 2)
        x = np.convolve(x, k / k.sum(), mode="same")
    x = x[pad:pad + n]
    std = x.std()
    return x / std if std > 0 else x


def shake_trajectory(rng: np.random.Generator, n: int, max_shift: float,
                     max_angle: float = 0.5) -> np.ndarray:
    """Random handheld motion during one exposure as `n` poses (dx, dy, angle), centred on the middle one.

    The path is a random walk of the velocity with inertia (the direction drifts, the speed
    varies smoothly, sometimes it jerks), in the spirit of Boracchi & Foi's trajectories. Its
    length is `max_shift` pixels, so its extent is at most that; the roll sweeps `max_angle`
    degrees. Poses are relative to pose `n // 2`, which is exactly (0, 0, 0).
    """
    if n < 1:
        raise ValueError("a trajectory needs at least one pose")
    poses = np.zeros((n, 3))
    if n == 1:
        return poses
    steps = n - 1
    heading = rng.uniform(0, 2 * math.pi)
    turn = rng.standard_normal(steps) * 0.35
    jerks = rng.random(steps) < 0.08
    turn[jerks] += rng.choice([-1.0, 1.0], size=int(jerks.sum())) * rng.uniform(0.6, 1.8, int(jerks.sum()))
    heading = heading + np.cumsum(turn)
    speed = np.exp(0.4 * _smooth_noise(rng, steps, max(1.0, steps / 6)))
    v = np.stack([np.cos(heading), np.sin(heading)], 1) * speed[:, None]
    xy = np.concatenate([np.zeros((1, 2)), np.cumsum(v, 0)])
    length = float(speed.sum())
    xy *= max_shift / length
    ang = np.concatenate([[0.0], np.cumsum(_smooth_noise(rng, steps, max(1.0, steps / 4)))])
    span = np.ptp(ang)
    ang = ang * (max_angle / span) if span > 0 else ang * 0
    poses[:, :2] = xy
    poses[:, 2] = ang * rng.choice([-1.0, 1.0])
    return poses - poses[n // 2]


def camera_path(rng: np.random.Generator, n_frames: int, substeps: int,
                kind: Literal["handheld", "dashcam"] = "handheld", *, fps: float = 12.0,
                amplitude: float = 10.0, tremor: float = 1.5, roll: float = 0.6,
                pan: float = 40.0, zoom: tuple[float, float] = (1.0, 1.15),
                vibration: float = 1.5) -> np.ndarray:
    """A smooth random camera path over a whole clip: (n_frames * substeps, 4) poses (dx, dy, angle, scale).

    Samples are `substeps` per frame interval, so frame `i`'s exposure is a run of poses starting
    at `i * substeps`. `handheld`: slow drift of about `amplitude` px and `roll` degrees plus a
    physiological tremor of about `tremor` px at 5-11 Hz. `dashcam`: forward motion (zoom from
    `zoom[0]` to `zoom[1]`, exponential like an approach), a pan of `pan` px with some steering
    wander, and road vibration of about `vibration` px and a tenth of `roll` at 8-16 Hz.
    """
    if kind not in ("handheld", "dashcam"):
        raise ValueError(f"unknown camera path kind {kind!r}: use 'handheld' or 'dashcam'")
    n = n_frames * substeps
    rate = fps * substeps  # samples per second
    t = np.arange(n) / rate
    poses = np.zeros((n, 4))
    poses[:, 3] = 1.0

    def band(lo: float, hi: float, k: int = 3) -> np.ndarray:
        """A sum of `k` sinusoids with random frequencies in [lo, hi] Hz, unit RMS."""
        f = rng.uniform(lo, hi, k)
        ph = rng.uniform(0, 2 * math.pi, k)
        a = rng.uniform(0.5, 1.0, k)
        s = (a[:, None] * np.sin(2 * math.pi * f[:, None] * t[None] + ph[:, None])).sum(0)
        return s / math.sqrt((a**2).sum() / 2)

    if kind == "handheld":
        drift = max(1.0, 0.35 * rate)
        poses[:, 0] = amplitude * _smooth_noise(rng, n, drift) + tremor * band(5, 11)
        poses[:, 1] = amplitude * _smooth_noise(rng, n, drift) + tremor * band(5, 11)
        poses[:, 2] = roll * _smooth_noise(rng, n, drift) + 0.15 * roll * band(5, 11)
    else:
        u = t / max(t[-1], 1e-9)
        z0, z1 = zoom
        poses[:, 3] = z0 * (z1 / z0) ** (u**1.5)
        wander = _smooth_noise(rng, n, max(1.0, 0.6 * rate))
        poses[:, 0] = pan * (u - 0.5) + 0.15 * pan * wander
        poses[:, 1] = 0.25 * amplitude * _smooth_noise(rng, n, max(1.0, 0.5 * rate))
        poses[:, 1] += vibration * band(8, 16, 4)
        poses[:, 0] += 0.4 * vibration * band(8, 16, 3)
        poses[:, 2] = 0.1 * roll * band(8, 16, 3) + 0.3 * roll * _smooth_noise(rng, n, max(1.0, 0.5 * rate))
    return poses


def _as_poses(poses: np.ndarray) -> np.ndarray:
    p = np.asarray(poses, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] not in (3, 4) or len(p) == 0:
        raise ValueError(f"poses must be (n, 3) or (n, 4), got {p.shape}")
    if p.shape[1] == 3:
        p = np.concatenate([p, np.ones((len(p), 1))], 1)
    return p


def pose_matrix(pose: np.ndarray, center: tuple[float, float],
                out_size: tuple[int, int]) -> np.ndarray:
    """The 2x3 affine map from source pixels to output pixels for one pose (forward map)."""
    dx, dy, angle, scale = (list(pose) + [1.0])[:4]
    th = math.radians(angle)
    c, s = math.cos(th) * scale, math.sin(th) * scale
    m = np.array([[c, -s], [s, c]])
    oc = np.array([(out_size[1] - 1) / 2, (out_size[0] - 1) / 2])
    look = np.array([center[0] + dx, center[1] + dy])
    return np.concatenate([m, (oc - m @ look)[:, None]], 1)


def _densify(p: np.ndarray, radius: float, max_step: float | None) -> np.ndarray:
    """Subdivide every interval equally so no pixel moves more than `max_step` between poses."""
    if max_step is None or len(p) < 2:
        return p
    d = np.diff(p, axis=0)
    move = np.hypot(d[:, 0], d[:, 1]) + radius * (np.abs(np.radians(d[:, 2])) + np.abs(d[:, 3]))
    k = int(min(64, max(1, math.ceil(move.max() / max_step))))
    if k == 1:
        return p
    tau = np.linspace(0, len(p) - 1, (len(p) - 1) * k + 1)
    return np.stack([np.interp(tau, np.arange(len(p)), p[:, j]) for j in range(p.shape[1])], 1)


def render_exposure(image: np.ndarray, poses: np.ndarray, *, out_size: tuple[int, int] | None = None,
                    center: tuple[float, float] | None = None, max_step: float | None = 1.0,
                    interpolation: int = cv2.INTER_CUBIC) -> np.ndarray:
    """Average of `image` (linear light, float HWC) seen from each pose: the exposure, float32.

    The camera looks at `center` (x, y in source pixels; default the image centre) and makes an
    `out_size` (h, w) picture (default the image size). Consecutive poses further apart than
    `max_step` pixels anywhere are linearly subdivided so the blur is a continuous streak, not
    ghost copies; `max_step=None` averages the poses exactly as given. Borders reflect.
    """
    img = np.ascontiguousarray(image, dtype=np.float32)
    h, w = img.shape[:2]
    oh, ow = out_size if out_size is not None else (h, w)
    cx, cy = center if center is not None else ((w - 1) / 2, (h - 1) / 2)
    p = _densify(_as_poses(poses), 0.5 * math.hypot(oh, ow), max_step)
    acc = np.zeros((oh, ow) + img.shape[2:], np.float64)
    for pose in p:
        m = pose_matrix(pose, (cx, cy), (oh, ow))
        warped = cv2.warpAffine(img, m, (ow, oh), flags=interpolation,
                                borderMode=cv2.BORDER_REFLECT_101)
        acc += warped.reshape(acc.shape)
    return (acc / len(p)).astype(np.float32)


def _rgb(image: np.ndarray) -> np.ndarray:
    """Grey -> RGB; RGBA -> RGB; uint8 only."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"synthetic_pair takes uint8 images, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, 2)
    elif img.shape[2] == 1:
        img = np.repeat(img, 3, 2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img)


def shake_blur(image: np.ndarray, rng: np.random.Generator, *, at: tuple[int, int, int, int],
               max_shift: float = 24.0, max_angle: float = 0.6, exposures: int = 13) -> np.ndarray:
    """The crop `at` = (y, x, h, w) of uint8 RGB `image` blurred by one random handheld shake:
    float32 sRGB code values (0-255, not rounded), so noise can still be added before rounding.

    The blur path has `exposures` poses and a length drawn uniformly in [0, `max_shift`] pixels
    (so some crops are nearly sharp) and a roll of up to `max_angle` degrees; the crop is the
    scene at the middle pose. The camera sees past the crop's edges, so the whole photo is given.
    """
    y, x, h, w = at
    H, W = image.shape[:2]
    shift = float(rng.uniform(0, max_shift))
    angle = float(rng.uniform(0, max_angle))
    poses = shake_trajectory(rng, exposures, shift, angle)
    # render only the crop plus enough margin for the motion (and the cubic kernel's reach)
    reach = np.abs(poses[:, :2]).max() + math.radians(np.abs(poses[:, 2]).max()) * 0.5 * math.hypot(h, w)
    m = int(math.ceil(reach)) + 3
    y0, x0 = max(0, y - m), max(0, x - m)
    y1, x1 = min(H, y + h + m), min(W, x + w + m)
    work = image[y0:y1, x0:x1]
    lin = srgb_to_linear(work.astype(np.float32) / 255.0)
    blur = linear_to_srgb(render_exposure(lin, poses)) * 255.0
    return blur[y - y0:y - y0 + h, x - x0:x - x0 + w]


def add_noise(image: np.ndarray, rng: np.random.Generator, *, sigma: float) -> np.ndarray:
    """Gaussian noise of `sigma` (8-bit code values) on float `image`; nothing when sigma is 0."""
    return image + rng.normal(0.0, sigma, image.shape) if sigma > 0 else image


def quantise(image: np.ndarray) -> np.ndarray:
    """Float code values -> uint8, rounded and clipped (what the sensor's 8-bit output keeps)."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def random_crop(rng: np.random.Generator, shape: tuple[int, ...], h: int, w: int) -> tuple[int, int, int, int]:
    """A uniformly random (y, x, h, w) window of an image of `shape` (y drawn first, then x)."""
    H, W = shape[:2]
    if h > H or w > W:
        raise ValueError(f"crop {h}x{w} is larger than the image {H}x{W}")
    y = int(rng.integers(0, H - h + 1))
    x = int(rng.integers(0, W - w + 1))
    return y, x, h, w


def synthetic_pair(image: np.ndarray, rng: np.random.Generator, *,
                   size: tuple[int, int] | int | None = None, max_shift: float = 24.0,
                   max_angle: float = 0.6, exposures: int = 13, noise_sigma: float = 0.0,
                   jpeg_quality: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(blurry, sharp) uint8 HWC RGB: a random shake blur of a random `size` crop of `image`.

    The blur is `shake_blur`; `sharp` is the crop itself, the scene at the middle pose.
    `noise_sigma` (8-bit code values) adds Gaussian noise and `jpeg_quality` JPEG-compresses the
    blurry image, after the blur.
    """
    img = _rgb(image)
    H, W = img.shape[:2]
    if size is None:
        h, w = H, W
    else:
        h, w = (size, size) if isinstance(size, int) else size
    at = random_crop(rng, img.shape, h, w)
    blur = shake_blur(img, rng, at=at, max_shift=max_shift, max_angle=max_angle, exposures=exposures)
    blurry = quantise(add_noise(blur, rng, sigma=noise_sigma))
    if jpeg_quality is not None:
        ok, buf = cv2.imencode(".jpg", blurry[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        blurry = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])
    y, x = at[:2]
    sharp = np.ascontiguousarray(img[y:y + h, x:x + w])
    return np.ascontiguousarray(blurry), sharp


def about_point(poses: np.ndarray, offset: tuple[float, float]) -> np.ndarray:
    """`poses` (n, 4) with their roll and zoom about a point `offset` (x, y output pixels) from the view centre.

    `pose_matrix` turns and scales about the view centre; a camera whose optical centre is
    elsewhere (a crop away from the middle of the frame) sees the scene turn and grow about that
    point instead. That is the same map with the look point moved by o - A^-1 o, where A is the
    pose's rotation-and-scale: exact, so the point at `offset` stays where it is.
    """
    p = np.array(poses, dtype=np.float64)
    ox, oy = offset
    th = np.radians(p[:, 2])
    inv_x = (np.cos(th) * ox + np.sin(th) * oy) / p[:, 3]
    inv_y = (-np.sin(th) * ox + np.cos(th) * oy) / p[:, 3]
    p[:, 0] += ox - inv_x
    p[:, 1] += oy - inv_y
    return p


def random_camera_exposure(rng: np.random.Generator, *, substeps: int = 16, exposed: int = 11,
                           clip_frames: int = 36, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The poses of one exposure taken from a random whole-clip `camera_path`, relative to its middle pose.

    Half the clips are `handheld`, half `dashcam`, with the path's parameters drawn over wide
    ranges (drift 2-14 px, tremor 0.3-3.5 px, vibration 0.3-4 px, pans up to 120 px, approach
    zoom up to x1.35, 8-30 fps) and one frame of the clip picked at random: the blur a clip made
    like the bundled samples has, rather than one isolated shake. `offset` (x, y output pixels
    from the crop centre) is where the optical centre lies, so a crop away from the middle of a
    zooming frame sees the radial streaks it would see there. Returns (exposed, 4) poses whose
    middle one is (0, 0, 0, 1).
    """
    fps = float(rng.uniform(8.0, 30.0))
    if rng.random() < 0.5:
        kind = "handheld"
        params = dict(amplitude=rng.uniform(2, 14), tremor=rng.uniform(0.3, 3.5), roll=rng.uniform(0.05, 0.8))
    else:
        kind = "dashcam"
        params = dict(amplitude=rng.uniform(2, 10), pan=rng.uniform(-120, 120),
                      zoom=(1.0, rng.uniform(1.0, 1.35)), vibration=rng.uniform(0.3, 4.0),
                      roll=rng.uniform(0.1, 1.2))
    path = camera_path(rng, clip_frames, substeps, kind, fps=fps, **params)
    start = int(rng.integers(0, clip_frames)) * substeps
    poses = path[start:start + exposed].copy()
    mid = poses[exposed // 2].copy()
    poses[:, :3] -= mid[:3]
    poses[:, 3] /= mid[3]
    return about_point(poses, offset)


def camera_blur(linear: np.ndarray, rng: np.random.Generator, *, at: tuple[int, int, int, int],
                frame: tuple[int, int] = (320, 512)) -> np.ndarray:
    """The square crop `at` = (y, x, size, size) of a photo in linear light (float HWC) blurred by
    a `random_camera_exposure`: float sRGB code values (0-255, not rounded).

    The crop lies at a random place of a virtual `frame` (h, w) whose centre is the optical
    centre, so the scene at the middle pose is the crop, pixel for pixel.
    """
    y, x, size, _ = at
    offset = (float(rng.uniform(-0.5, 0.5) * (frame[1] - size)), float(rng.uniform(-0.5, 0.5) * (frame[0] - size)))
    # the optical axis is `offset` away: pose (dx, dy) shifts are relative to the crop's centre
    poses = random_camera_exposure(rng, offset=(-offset[0], -offset[1]))
    center = (x + (size - 1) / 2, y + (size - 1) / 2)
    return linear_to_srgb(render_exposure(linear, poses, out_size=(size, size), center=center)) * 255.0


def camera_pair(image: np.ndarray, linear: np.ndarray, rng: np.random.Generator, *, size: int,
                frame: tuple[int, int] = (320, 512), noise_sigma: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(blurry, sharp) uint8 `size` x `size` crops of a photo blurred by a `random_camera_exposure`.

    `image` is the uint8 RGB photo and `linear` the same in linear light (computed once by the
    caller: converting a whole photo per sample would cost more than the blur). The blur is
    `camera_blur`; the sharp crop is the photo at the middle pose, pixel for pixel.
    """
    at = random_crop(rng, linear.shape, size, size)
    blur = camera_blur(linear, rng, at=at, frame=frame)
    blurry = quantise(add_noise(blur, rng, sigma=noise_sigma))
    y, x = at[:2]
    return blurry, np.ascontiguousarray(image[y:y + size, x:x + size])


def h264_roundtrip(rgb: np.ndarray, crf: int) -> np.ndarray:
    """`rgb` (uint8 HWC, sides multiples of 2) as a decoder shows it after H.264 in yuv420p.

    The way real inputs reach the model: BT.601 limited-range 4:2:0 (half-resolution colour) and
    an x264 intra frame at `crf`, converted both ways with the pipeline's own swscale flags.
    Training on it teaches the model the codec's blocking and soft colour instead of leaving
    them to be magnified x4.
    """
    import av
    from av.video.reformatter import ColorRange, Colorspace

    from streamsr.video.ffmpeg import FROM_RGB_FLAGS, TO_RGB_FLAGS

    h, w = rgb.shape[:2]
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    enc.time_base = Fraction(1, 25)
    enc.options = {"crf": str(int(crf)), "preset": "veryfast", "threads": "1"}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
        format="yuv420p", dst_colorspace=Colorspace.ITU601, dst_color_range=ColorRange.MPEG,
        interpolation=FROM_RGB_FLAGS)
    frame.pts = 0
    packets = list(enc.encode(frame)) + list(enc.encode(None))
    dec = av.CodecContext.create("h264", "r")
    out = [f for p in packets for f in dec.decode(p)] + list(dec.decode(None))
    if len(out) != 1:
        raise RuntimeError(f"H.264 round trip gave {len(out)} frames")
    return np.ascontiguousarray(out[0].to_ndarray(
        format="rgb24", src_colorspace=Colorspace.ITU601, src_color_range=ColorRange.MPEG,
        dst_color_range=ColorRange.JPEG, interpolation=TO_RGB_FLAGS))
