"""The model matches the paper: parameter counts, official key layout, shapes, weight files."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from streamsr.errors import WeightsError
from streamsr.models import LITE, PAPER, TINY, DeblurSR, MPRNet, count_parameters
from streamsr.models.mprnet import pad_to_multiple
from streamsr.models.weights import (
    import_mprnet,
    load_model,
    load_mprnet,
    load_weights,
    model_config,
    read_metadata,
    save_model,
)

KEYS_TSV = Path(__file__).parent / "data" / "mprnet_keys.tsv"


def official_layout() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in KEYS_TSV.read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.split(","))))
    return rows


@pytest.fixture(scope="module")
def paper_model() -> DeblurSR:
    torch.manual_seed(0)
    return DeblurSR(PAPER).eval()


def test_paper_parameter_counts(paper_model):
    # Table 1 of the paper, and MPRNet's deblurring model alone.
    assert count_parameters(paper_model) == 21_839_972
    assert count_parameters(paper_model.trunk) == 20_127_073


def test_paper_head_breakdown(paper_model):
    # paper.md's arithmetic for the head, piece by piece.
    m = paper_model
    assert count_parameters(m.fuse[0]) == 165_888
    assert count_parameters(m.refine1) == count_parameters(m.refine3) == 170_496 + 1  # + shared PReLU
    assert count_parameters(m.reduce3) == 110_592
    assert count_parameters(m.reconstruct) == 924_931
    assert count_parameters(m.reconstruct.blocks) == 590_848


def test_shared_prelu_is_one_parameter(paper_model):
    prelus = {id(mod) for mod in paper_model.modules() if isinstance(mod, torch.nn.PReLU)}
    assert len(prelus) == 1
    state = paper_model.trunk.state_dict()
    assert sum(k.endswith("body.1.weight") for k in state) == 55


def test_trunk_state_dict_matches_official_layout(paper_model):
    expected = official_layout()
    assert len(expected) == 316
    got = [(k, tuple(v.shape)) for k, v in paper_model.trunk.state_dict().items()]
    assert sorted(got) == sorted(expected)


def random_official_checkpoint(path: Path, prefix: str = "", wrap: bool = True, drop: str | None = None,
                               reshape: str | None = None) -> dict:
    g = torch.Generator().manual_seed(1)
    state = {}
    for key, shape in official_layout():
        if key == drop:
            continue
        if key == reshape:
            shape = (shape[0] + 1,) + shape[1:]
        state[prefix + key] = torch.randn(shape, generator=g) * 0.02
    torch.save({"state_dict": state} if wrap else state, path)
    return state


@pytest.mark.parametrize("prefix,wrap", [("", True), ("module.", True), ("", False)])
def test_official_checkpoint_loads_strict(tmp_path, prefix, wrap):
    ckpt = tmp_path / "model_deblurring.pth"
    state = random_official_checkpoint(ckpt, prefix, wrap)
    net = load_mprnet(ckpt)
    key = "stage3_orsnet.orb2.body.3.body.0.weight"
    assert torch.equal(net.state_dict()[key], state[prefix + key])
    out = tmp_path / "joint.safetensors"
    joint = import_mprnet(ckpt, out)
    assert torch.equal(joint.trunk.state_dict()[key], state[prefix + key])
    reloaded = load_weights(DeblurSR(PAPER), out)  # what `streamsr train --init` does
    assert torch.equal(reloaded.trunk.state_dict()[key], state[prefix + key])


def test_corrupted_checkpoints_are_refused_with_names(tmp_path):
    missing = tmp_path / "missing.pth"
    random_official_checkpoint(missing, drop="sam23.conv2.weight")
    with pytest.raises(WeightsError, match="missing.*sam23.conv2.weight"):
        import_mprnet(missing)
    shaped = tmp_path / "shaped.pth"
    random_official_checkpoint(shaped, reshape="tail.weight")
    with pytest.raises(WeightsError, match=r"mis-shaped.*tail.weight"):
        import_mprnet(shaped)
    extra = tmp_path / "extra.pth"
    state = random_official_checkpoint(extra)
    state["bogus.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, extra)
    with pytest.raises(WeightsError, match="unexpected.*bogus.weight"):
        import_mprnet(extra)


def test_imported_trunk_only_weights_are_refused_for_inference(tmp_path):
    # import-mprnet's file has a random x4 head: upscaling with it gives flat grey frames
    ckpt = tmp_path / "model_deblurring.pth"
    random_official_checkpoint(ckpt)
    out = tmp_path / "paper_init.safetensors"
    import_mprnet(ckpt, out)
    assert read_metadata(out)["trained"] == "trunk-only"
    with pytest.raises(WeightsError, match=r"cannot make a picture.*trunk-only.*streamsr train") as e:
        load_model(out)
    assert "\n" not in str(e.value)
    assert model_config(out) == PAPER  # still a valid starting point for `train --init`


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_weights_with_non_finite_values_are_refused(tmp_path, value):
    torch.manual_seed(0)
    model = DeblurSR(TINY)
    with torch.no_grad():
        model.reconstruct.out.weight[0, 0, 0, 0] = value
    path = tmp_path / "broken.safetensors"
    save_model(model, path)
    with pytest.raises(WeightsError, match="1 NaN or infinite value"):
        load_model(path)
    with pytest.raises(WeightsError, match="NaN or infinite"):
        load_weights(DeblurSR(TINY), path)  # `train --init` refuses them too


@pytest.mark.parametrize("trunk,match", [({"kernel_size": 4}, "kernel_size must be odd"),
                                         ({"reduction": 16}, "reduction 16 is larger than n_feat")])
def test_config_that_builds_but_cannot_run_is_refused(tmp_path, trunk, match):
    # both build on the meta device; before the check, the first frame raised a traceback
    bad = replace(TINY, trunk=replace(TINY.trunk, **trunk))
    with torch.device("meta"):
        DeblurSR(bad)
    path = tmp_path / "bad.safetensors"
    save_model(DeblurSR(bad), path)
    with pytest.raises(WeightsError, match=match):
        load_model(path)


def test_pytorch_files_given_as_weights_say_what_they_are(tmp_path):
    pth = tmp_path / "model_deblurring.pth"
    random_official_checkpoint(pth)
    with pytest.raises(WeightsError, match=r"PyTorch checkpoint.*streamsr import-mprnet") as e:
        load_model(pth)
    assert "header" not in str(e.value)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsError, match="PyTorch checkpoint"):
        load_model(legacy)
    # a training checkpoint: pointed at the run's weights when they exist, else at --resume
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "step-00000020.pt"
    torch.save({"format": "streamsr-checkpoint-v1", "model": DeblurSR(TINY).state_dict()}, ckpt)
    with pytest.raises(WeightsError, match=r"training checkpoint.*streamsr train --resume"):
        load_model(ckpt)
    save_model(DeblurSR(TINY), run / "best.safetensors")
    with pytest.raises(WeightsError, match=r"training checkpoint.*use .*best\.safetensors"):
        model_config(ckpt)  # what `train --init` reads first
    with pytest.raises(WeightsError, match="training checkpoint"):
        import_mprnet(ckpt)


@pytest.mark.timeout(30)
def test_fifo_weights_path_is_refused_without_opening(tmp_path):
    fifo = tmp_path / "w.safetensors"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    for fn in (load_model, model_config, import_mprnet):
        with pytest.raises(WeightsError, match="not a regular file"):
            fn(fifo)


def test_import_mprnet_seed_out_of_range_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="seed"):
        import_mprnet(tmp_path / "x.pth", seed=2**64)


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": Payload()}, evil)
    with pytest.raises(WeightsError, match="refusing"):
        import_mprnet(evil)
    assert not marker.exists()


@pytest.mark.parametrize("h,w", [(57, 101), (1, 1), (2, 3), (8, 8), (33, 17)])
def test_forward_any_size(h, w):
    torch.manual_seed(0)
    model = DeblurSR(TINY).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, h, w))
    assert out.hr.shape == (2, 3, 4 * h, 4 * w)
    assert len(out.stages) == 3
    assert all(s.shape == (2, 3, h, w) for s in out.stages)
    assert 0 <= out.hr.min() and out.hr.max() <= 1


def test_stages_are_final_first_and_residual():
    # With all trunk weights zero every stage predicts its input exactly (residual learning),
    # so stages equal the input; then perturb layers used only by stage 3: only the first
    # returned stage changes.
    model = DeblurSR(TINY).eval()
    for p in model.trunk.parameters():
        p.data.zero_()
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        out = model(x)
        assert all(torch.allclose(s, x) for s in out.stages)
        for layer in (model.trunk.shallow_feat3[0], model.trunk.concat23, model.trunk.tail):
            layer.weight.data.fill_(0.01)
        out = model(x)
    assert not torch.allclose(out.stages[0], x)
    assert torch.allclose(out.stages[1], x) and torch.allclose(out.stages[2], x)


def test_batched_patches_match_per_patch_reference():
    # The trunk runs the four stage-1 quarters as one batch; compare with running each image
    # alone (a batch must not mix images: channel attention pools per sample).
    torch.manual_seed(0)
    net = MPRNet(TINY.trunk).eval()
    x = torch.rand(3, 3, 32, 48)
    with torch.no_grad():
        joint = net(x).stages
        single = [net(x[i : i + 1]).stages for i in range(3)]
    for s in range(3):
        assert torch.allclose(joint[s], torch.cat([o[s] for o in single]), atol=1e-5)


# --- An independent reference: the official MPRNet forward, patch by patch ---------------------
# Written from the official MPRNet.forward (github.com/swz30/MPRNet, Deblurring/MPRNet.py): each
# stage-1 quarter and each stage-2 half goes through its own encoder call, stage 1 decodes top
# and bottom separately, CAB is `CA(body(x)) + x` and SAM is `x1 * gate + x`, unfused. It only
# borrows the modules' weights (and plain torch layers: convs, PReLU, resampling), never our
# CAB/SAM/Encoder/Decoder/ORSNet forwards.


def _ref_cab(cab, x):
    r = cab.body(x)  # conv, shared PReLU, conv
    gate = cab.CA.conv_du(torch.nn.functional.adaptive_avg_pool2d(r, 1))
    return r * gate + x


def _ref_cabs(seq, x):
    for cab in seq:
        x = _ref_cab(cab, x)
    return x


def _ref_sam(sam, x, x_img):
    x1 = sam.conv1(x)
    img = sam.conv2(x) + x_img
    x2 = torch.sigmoid(sam.conv3(img))
    return x1 * x2 + x, img


def _ref_shallow(seq, x):
    return _ref_cab(seq[1], seq[0](x))


def _ref_encoder(enc, x, enc_prev=None, dec_prev=None):
    outs = []
    levels = (enc.encoder_level1, enc.encoder_level2, enc.encoder_level3)
    downs = (enc.down12.down, enc.down23.down, None)
    for i, (level, down) in enumerate(zip(levels, downs, strict=True)):
        x = _ref_cabs(level, x)
        if enc_prev is not None:
            x = (x + getattr(enc, f"csff_enc{i + 1}")(enc_prev[i])
                 + getattr(enc, f"csff_dec{i + 1}")(dec_prev[i]))
        outs.append(x)
        if down is not None:
            x = down(x)  # bilinear /2, 1x1 conv
    return outs


def _ref_decoder(dec, enc):
    enc1, enc2, enc3 = enc
    dec3 = _ref_cabs(dec.decoder_level3, enc3)
    x = dec.up32.up(dec3) + _ref_cab(dec.skip_attn2, enc2)
    dec2 = _ref_cabs(dec.decoder_level2, x)
    x = dec.up21.up(dec2) + _ref_cab(dec.skip_attn1, enc1)
    dec1 = _ref_cabs(dec.decoder_level1, x)
    return [dec1, dec2, dec3]


def _ref_orb(orb, x):
    *cab_list, last = orb.body
    y = x
    for cab in cab_list:
        y = _ref_cab(cab, y)
    return last(y) + x


def _ref_orsnet(ors, x, enc, dec):
    x = _ref_orb(ors.orb1, x)
    x = x + ors.conv_enc1(enc[0]) + ors.conv_dec1(dec[0])
    x = _ref_orb(ors.orb2, x)
    x = x + ors.conv_enc2(ors.up_enc1.up(enc[1])) + ors.conv_dec2(ors.up_dec1.up(dec[1]))
    x = _ref_orb(ors.orb3, x)
    up2 = lambda seq, t: seq[1].up(seq[0].up(t))  # noqa: E731 - two UpSample steps
    x = x + ors.conv_enc3(up2(ors.up_enc2, enc[2])) + ors.conv_dec3(up2(ors.up_dec2, dec[2]))
    return x


def _ref_trunk(net, x):
    """(stage3, stage2, stage1) images and the three feature maps the SR head reads."""
    h, w = x.shape[-2:]
    top, bot = x[:, :, : h // 2], x[:, :, h // 2:]
    ltop, rtop = top[..., : w // 2], top[..., w // 2:]
    lbot, rbot = bot[..., : w // 2], bot[..., w // 2:]
    # stage 1: four encoder calls, two decoder calls
    f_lt, f_rt, f_lb, f_rb = (_ref_encoder(net.stage1_encoder, _ref_shallow(net.shallow_feat1, q))
                              for q in (ltop, rtop, lbot, rbot))
    feat1_top = [torch.cat((a, b), 3) for a, b in zip(f_lt, f_rt, strict=True)]
    feat1_bot = [torch.cat((a, b), 3) for a, b in zip(f_lb, f_rb, strict=True)]
    res1_top = _ref_decoder(net.stage1_decoder, feat1_top)
    res1_bot = _ref_decoder(net.stage1_decoder, feat1_bot)
    sam_top, img1_top = _ref_sam(net.sam12, res1_top[0], top)
    sam_bot, img1_bot = _ref_sam(net.sam12, res1_bot[0], bot)
    stage1_img = torch.cat((img1_top, img1_bot), 2)
    # stage 2: two encoder calls (one per half), one decoder call on the joined features
    x2_top = net.concat12(torch.cat((_ref_shallow(net.shallow_feat2, top), sam_top), 1))
    x2_bot = net.concat12(torch.cat((_ref_shallow(net.shallow_feat2, bot), sam_bot), 1))
    feat2_top = _ref_encoder(net.stage2_encoder, x2_top, feat1_top, res1_top)
    feat2_bot = _ref_encoder(net.stage2_encoder, x2_bot, feat1_bot, res1_bot)
    feat2 = [torch.cat((a, b), 2) for a, b in zip(feat2_top, feat2_bot, strict=True)]
    res2 = _ref_decoder(net.stage2_decoder, feat2)
    sam3, stage2_img = _ref_sam(net.sam23, res2[0], x)
    # stage 3: the whole image
    x3 = net.concat23(torch.cat((_ref_shallow(net.shallow_feat3, x), sam3), 1))
    x3 = _ref_orsnet(net.stage3_orsnet, x3, feat2, res2)
    stage3_img = net.tail(x3) + x
    features = (torch.cat((res1_top[0], res1_bot[0]), 2), res2[0], x3)
    return (stage3_img, stage2_img, stage1_img), features


def _ref_deblur_sr(model, x):
    """The joint model (no bicubic skip, sizes already multiples of 8), per its docstring:
    refine each stage's features with a CAB, concatenate, fuse, reconstruct x4."""
    stages, (f1, f2, f3) = _ref_trunk(model.trunk, x)
    fused = model.fuse(torch.cat((_ref_cab(model.refine1, f1), _ref_cab(model.refine2, f2),
                                  _ref_cab(model.refine3, model.reduce3(f3))), 1))
    rec = model.reconstruct
    y = fused
    for block in rec.blocks:
        y = block.conv2(torch.relu(block.conv1(y))) + y
    lrelu = torch.nn.functional.leaky_relu
    y = lrelu(torch.nn.functional.pixel_shuffle(rec.up1(y), 2), 0.1)
    y = lrelu(torch.nn.functional.pixel_shuffle(rec.up2(y), 2), 0.2)
    y = lrelu(rec.conv(y), 0.2)
    return torch.sigmoid(rec.out(y)), stages


@pytest.fixture(scope="module")
def tiny_and_input():
    torch.manual_seed(0)
    model = DeblurSR(TINY).eval()
    assert not TINY.bicubic_skip
    with torch.no_grad():  # a PReLU slope other than the default 0.25, so a slip shows
        model.trunk.act.weight.fill_(0.1)
    return model, torch.rand(2, 3, 32, 48)


def test_trunk_and_joint_model_equal_the_official_per_patch_forward(tiny_and_input):
    model, x = tiny_and_input
    with torch.no_grad():
        ref_hr, ref_stages = _ref_deblur_sr(model, x)
        trunk = model.trunk(x).stages
        out = model(x)
    assert out.hr.shape == (2, 3, 128, 192)
    pairs = [(f"trunk stage {3 - s}", trunk[s], ref_stages[s]) for s in range(3)]
    pairs += [(f"joint stage {3 - s}", out.stages[s], ref_stages[s]) for s in range(3)]
    pairs.append(("joint hr", out.hr, ref_hr))
    for name, ours, ref in pairs:
        assert torch.allclose(ours, ref, atol=1e-5, rtol=0), (name, (ours - ref).abs().max().item())


def test_padding_is_reflect_then_cropped():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    p = pad_to_multiple(x, 8)
    assert p.shape[-2:] == (8, 8)
    assert torch.equal(p[..., :5, :6], x)
    assert torch.equal(p[..., 5, :6], x[..., 3, :])  # reflect: row 5 mirrors row 3


def test_safetensors_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(3)
    model = DeblurSR(TINY).eval()
    model.trunk.act.weight.data.fill_(0.17)  # the shared PReLU must survive the round trip
    path = tmp_path / "m.safetensors"
    save_model(model, path, {"note": "test"})
    meta = read_metadata(path)
    assert meta["note"] == "test"
    loaded = load_model(path)  # config comes from the file's metadata
    assert loaded.config == TINY
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a.hr, b.hr)
    assert all(torch.equal(s, t) for s, t in zip(a.stages, b.stages, strict=False))
    assert loaded.trunk.act.weight.item() == pytest.approx(0.17)


def test_weights_with_wrong_shapes_are_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_model(DeblurSR(TINY), path)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    meta["config"] = LITE.to_json()  # config no longer matches the tensors
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match="mis-shaped"):
        load_model(tmp_path / "bad.safetensors")


def test_paper_without_weights_refuses_with_instructions():
    with pytest.raises(WeightsError, match="import-mprnet"):
        load_model("paper")


def test_non_safetensors_file_is_refused(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a weights file at all")
    with pytest.raises(WeightsError):
        load_model(bad)


def test_lite_is_cpu_sized():
    n = count_parameters(DeblurSR(LITE))
    assert 1_000_000 <= n <= 3_000_000


def test_lite_starts_as_bicubic_and_paper_has_no_skip():
    # lite adds a bicubic x4 of its input to a zero-initialised correction: untrained, it is
    # exactly the project's bicubic upscale (clamped to [0, 1]); the paper model is unchanged.
    from streamsr.models.ops import resize_bicubic

    assert LITE.bicubic_skip and not PAPER.bicubic_skip
    torch.manual_seed(0)
    lite = DeblurSR(LITE).eval()
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        hr = lite(x).hr
    assert torch.equal(hr, resize_bicubic(x, (64, 96)).clamp(0, 1))
    assert count_parameters(lite) == count_parameters(DeblurSR(replace(LITE, bicubic_skip=False)))


# --- MACs per input pixel (what `streamsr info` reports) ---------------------------------------


def conv_hook_macs(model: torch.nn.Module, size: tuple[int, int]) -> float:
    """An independent count: every nn.Conv2d call costs out_pixels * C_out * C_in/groups * kh*kw.

    Uses forward hooks (not FlopCounterMode, which streamsr uses); the models do all their
    multiplies in nn.Conv2d modules (resampling is bilinear/bicubic, not counted by either).
    """
    total = 0

    def hook(mod, _inp, out):
        nonlocal total
        total += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.Conv2d)]
    device = next(model.parameters()).device
    with torch.no_grad():
        model(torch.zeros(1, 3, *size, device=device))
    for h in handles:
        h.remove()
    return total / (size[0] * size[1])


def test_macs_of_single_convs_exact():
    from streamsr.models.info import macs_per_pixel

    # 3 in x 8 out x 3x3 taps = 216 per output pixel, one output pixel per input pixel
    assert macs_per_pixel(torch.nn.Conv2d(3, 8, 3, padding=1), (24, 40)) == 216
    # stride 2: a quarter of the output pixels, 54 per input pixel
    assert macs_per_pixel(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), (24, 40)) == 54
    # a 1x1 conv without bias on a pixel-shuffled x2 output: 3*12 MACs per input pixel
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 1, bias=False), torch.nn.PixelShuffle(2))
    assert macs_per_pixel(net, (8, 8)) == 36


def test_macs_of_reconstruction_head_by_hand():
    from streamsr.models.deblur_sr import Reconstruction
    from streamsr.models.info import macs_per_pixel

    c, blocks = 64, 8  # the paper's reconstruction module
    head = torch.nn.Sequential(torch.nn.Conv2d(3, c, 1, bias=False),  # 3*64 = 192 to feed it
                               Reconstruction(c, blocks))
    by_hand = (3 * c                      # the 1x1 feeder
               + blocks * 2 * c * c * 9   # residual blocks at LR
               + c * 4 * c * 9            # up1 at LR
               + c * 4 * c * 9 * 4        # up2 at x2 (4 pixels per LR pixel)
               + c * c * 9 * 16           # conv at x4 (16 pixels per LR pixel)
               + c * 3 * 9 * 16)          # out at x4
    assert by_hand == 1_944_768
    assert macs_per_pixel(head, (16, 16)) == by_hand


def test_macs_of_paper_model():
    from streamsr.models.info import macs_per_pixel

    size = (64, 64)
    with torch.device("meta"):  # shapes only: counting the 21.8 M-parameter model is instant
        model = DeblurSR(PAPER)
    total = macs_per_pixel(model, size)
    # an independent counter over the whole model, conv by conv
    assert total == pytest.approx(conv_hook_macs(model, size), rel=1e-12)
    # everything after the trunk, by hand (n = 96, ORSNet +32, reduction 4, sr_feat 64)
    n, o, c, px = 96, 32, 64, size[0] * size[1]
    cab = 2 * n * n * 9 + 2 * n * (n // 4) / px  # body convs + channel attention on the pool
    after_trunk = ((n + o) * n * 9            # reduce3
                   + 3 * cab                  # refine1..3
                   + 3 * n * c * 9            # fuse
                   + 1_944_768 - 3 * c)       # reconstruction (previous test, less its feeder)
    trunk = macs_per_pixel(model.trunk, size)
    assert total - trunk == pytest.approx(after_trunk, rel=1e-12)
    assert round(total) == 14_306_617  # what `streamsr info --model paper` reports


def test_known_figures_are_what_counting_gives():
    # `streamsr info` prints these without building a model: each row recounted here
    from streamsr.models.configs import CONFIGS
    from streamsr.models.info import KNOWN, config_info, macs_per_pixel

    assert set(KNOWN) == set(CONFIGS)
    for name, (total, trunk, macs) in KNOWN.items():
        with torch.device("meta"):
            model = DeblurSR(CONFIGS[name])
        assert count_parameters(model) == total, name
        assert count_parameters(model.trunk) == trunk, name
        assert macs_per_pixel(model) == macs, name
        info = config_info(replace(CONFIGS[name], name="renamed"))  # figures do not need a name
        assert (info["parameters"], info["macs_per_input_pixel"]) == (total, round(macs))
    other = replace(TINY, sr_blocks=3)  # not a named config: counted on the meta device
    assert config_info(other)["parameters"] == count_parameters(DeblurSR(other))


def test_the_network_imports_nothing_from_data():
    """Layers point one way: models/ (and its bicubic kernel, models/ops.py) need nothing from
    data/; data, inference and evaluation import the kernel from models.ops."""
    import ast
    from pathlib import Path

    import streamsr.models

    for path in Path(streamsr.models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("streamsr.data"), (path.name, node.module)
