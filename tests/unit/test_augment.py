"""Augmentation on the device (camtrap.augment): crops inside the image, an exact mirror, colour
jitter equal to torchvision's, and randomness that depends on (seed, epoch, step) alone."""

import math

import pytest
import torch
from torchvision.transforms import functional as TF

from camtrap.augment import (
    TrainAugment,
    color_jitter,
    crop_boxes,
    draw_params,
    hflip,
    resized_crop,
    step_generator,
)
from camtrap.config import AugmentConfig
from camtrap.loader import DeviceNormalize

CPU = torch.device("cpu")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# No randomness at all: the whole image, never mirrored, no jitter.
IDENTITY = AugmentConfig(enabled=True, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0)


def _images(n=4, size=40, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=generator)


def test_crop_boxes_lie_inside_the_image_with_area_and_ratio_in_range():
    boxes = crop_boxes(torch.Generator().manual_seed(3), 500, 40, (0.25, 1.0), (3 / 4, 4 / 3))
    assert boxes.shape == (500, 4) and boxes.dtype == torch.float32
    x0, y0, x1, y1 = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 40).all() and (y1 <= 40).all()
    assert torch.equal(boxes, boxes.round())  # whole pixels, as torchvision's crop
    w, h = x1 - x0, y1 - y0
    # rounding each side to a whole pixel moves the area and ratio a little past the range
    assert ((w * h) / 1600 >= 0.25 * 0.9).all() and ((w * h) / 1600 <= 1.0).all()
    assert (w / h >= 0.75 * 0.9).all() and (w / h <= 4 / 3 * 1.1).all()
    assert len(set(map(tuple, boxes.tolist()))) > 400  # really drawn, not one box


def test_crop_boxes_fall_back_to_the_centre_crop_when_no_try_fits():
    # a ratio of 4 cannot fit a square at a share of 1: torchvision's fallback, the widest
    # centred box of ratio 4
    boxes = crop_boxes(torch.Generator().manual_seed(0), 3, 40, (1.0, 1.0), (4.0, 4.0))
    assert boxes.tolist() == [[0.0, 15.0, 40.0, 25.0]] * 3


def test_whole_image_crop_at_its_own_size_is_the_image_and_a_box_stays_inside():
    x = _images().permute(0, 3, 1, 2).float() / 255
    whole = torch.tensor([[0.0, 0.0, 40.0, 40.0]] * 4)
    assert torch.equal(resized_crop(x, whole, 40), x)
    # A horizontal ramp: pixel column c holds c. A crop of columns 10..19 (and any rows)
    # resized to 32 px samples inside those columns' area: bilinear interpolation reaches at
    # most half a pixel beyond the box's outer pixel centres (9.5 .. 19.5), never further.
    ramp = torch.arange(40.0).view(1, 1, 1, 40).expand(2, 3, 40, 40).contiguous()
    box = torch.tensor([[10.0, 5.0, 20.0, 35.0], [10.0, 0.0, 20.0, 40.0]])
    out = resized_crop(ramp, box, 32)
    assert out.shape == (2, 3, 32, 32)
    assert out.min() >= 9.5 and out.max() <= 19.5
    assert out[..., 0].max() < 10.5 and out[..., -1].min() > 18.5  # it spans the box


def test_hflip_mirrors_exactly_the_chosen_images():
    x = torch.rand(3, 3, 8, 8)
    out = hflip(x, torch.tensor([True, False, True]))
    assert torch.equal(out[0], x[0][..., torch.arange(7, -1, -1)])
    assert torch.equal(out[1], x[1])
    assert torch.equal(out[2, :, :, 0], x[2, :, :, 7])


def test_color_jitter_equals_torchvision_per_image():
    x = torch.rand(3, 3, 16, 16)
    b, c, s = (
        torch.tensor([0.8, 1.0, 1.2]),
        torch.tensor([1.1, 0.9, 1.0]),
        torch.tensor([0.7, 1.3, 1.0]),
    )
    out = color_jitter(x, b, c, s)
    for i in range(3):
        expected = TF.adjust_brightness(x[i], float(b[i]))
        expected = TF.adjust_contrast(expected, float(c[i]))
        expected = TF.adjust_saturation(expected, float(s[i]))
        torch.testing.assert_close(out[i], expected, rtol=0, atol=1e-6)
    assert torch.equal(color_jitter(x), x)  # every step skipped


def test_identity_settings_give_the_plain_normalised_input_and_hflip_its_mirror():
    images = _images(size=32)
    plain = DeviceNormalize(MEAN, STD, CPU)(images).clone()
    augment = TrainAugment(IDENTITY, 32, MEAN, STD, CPU, seed=0)
    torch.testing.assert_close(augment(images, epoch=1, step=1), plain, rtol=0, atol=1e-6)
    mirror = TrainAugment(IDENTITY.model_copy(update={"hflip": 1.0}), 32, MEAN, STD, CPU, 0)
    torch.testing.assert_close(mirror(images, epoch=1, step=1), plain.flip(3), rtol=0, atol=1e-6)


def test_output_shape_dtype_and_randomness_from_seed_epoch_and_step():
    config = AugmentConfig(enabled=True, brightness=0.2, contrast=0.2, saturation=0.2)
    augment = TrainAugment(config, 32, MEAN, STD, CPU, seed=7)
    images = _images(n=8, size=40)
    out = augment(images, epoch=2, step=3)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.equal(out, augment(images, epoch=2, step=3))  # e.g. after a resume
    assert torch.equal(out, augment.for_epoch(2)(images, 3))
    assert torch.equal(
        out, TrainAugment(config, 32, MEAN, STD, CPU, seed=7)(images, epoch=2, step=3)
    )
    for other in ({"epoch": 3, "step": 3}, {"epoch": 2, "step": 4}):
        assert not torch.equal(out, augment(images, **other)), other
    other_seed = TrainAugment(config, 32, MEAN, STD, CPU, seed=8)
    assert not torch.equal(out, other_seed(images, epoch=2, step=3))


def test_turning_an_option_off_does_not_move_the_other_draws():
    jitter = AugmentConfig(enabled=True, brightness=0.4, contrast=0.4, saturation=0.4)
    plain = AugmentConfig(enabled=True, hflip=0.0)
    a = draw_params(step_generator(0, 1, 1), 16, 40, jitter)
    b = draw_params(step_generator(0, 1, 1), 16, 40, plain)
    assert torch.equal(a.boxes, b.boxes)
    assert not b.flip.any() and a.flip.any()
    assert torch.equal(b.brightness, torch.ones(16))
    assert (a.brightness - 1).abs().max() <= 0.4 and (a.brightness != 1).all()


def test_step_generators_differ_by_seed_epoch_and_step():
    draws = {
        (seed, epoch, step): torch.rand(4, generator=step_generator(seed, epoch, step))
        for seed in (0, 1) for epoch in (1, 2) for step in (1, 2)
    }  # fmt: skip
    values = [tuple(v.tolist()) for v in draws.values()]
    assert len(set(values)) == len(values)
    assert torch.equal(draws[(0, 1, 1)], torch.rand(4, generator=step_generator(0, 1, 1)))


@pytest.mark.parametrize("ratio", [(3 / 4, 4 / 3), (1.0, 1.0)])
def test_crop_area_share_is_spread_over_the_scale_range(ratio):
    boxes = crop_boxes(torch.Generator().manual_seed(1), 2000, 256, (0.08, 1.0), ratio)
    share = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / 256**2
    # uniform over [0.08, 1] for the tries that fit: mean about 0.54, not all near one end
    assert 0.45 < float(share.mean()) < 0.6
    assert float(share.min()) < 0.1 and float(share.max()) > 0.95
    assert math.isclose(float(share.max()), 1.0, abs_tol=0.02)
