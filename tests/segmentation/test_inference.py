"""Sliding-window inference: the windows' placement (mmseg's rule), every pixel
covered at odd sizes, the direct forward when the image is the crop, a pointwise
model's logits unchanged by the windows, padding of small images with the model's
mean colour, batching."""

import itertools

import pytest
import torch

from lomar.models import create_model
from lomar.segmentation.inference import predict, sliding_window_logits, window_starts
from lomar.segmentation.segmenter import build_segmenter


def tiny_segmenter(num_classes=5):
    backbone = create_model("vitdet_small_patch16", depth=2, embed_dim=32, num_heads=2,
                            window_size=2, top_pool=False, out_channels=16)
    return build_segmenter(backbone, num_classes, 16, channels=16, aux_channels=8).eval()


def test_window_starts_follow_mmsegs_rule():
    # ADE20K's typical 512 x 683 at crop 512, stride 341: two columns, the last moved back.
    assert window_starts(683, 512, 341) == [0, 171]
    assert window_starts(512, 512, 341) == [0]
    assert window_starts(2048, 512, 341) == [0, 341, 682, 1023, 1364, 1536]
    for size, crop, stride in ((37, 16, 10), (53, 16, 16), (17, 16, 1), (100, 32, 21)):
        starts = window_starts(size, crop, stride)
        covered = torch.zeros(size, dtype=torch.bool)
        for s in starts:
            assert 0 <= s <= size - crop
            covered[s:s + crop] = True
        assert covered.all() and starts[-1] == size - crop
        assert all(0 < b - a <= stride for a, b in itertools.pairwise(starts))
    with pytest.raises(ValueError, match="stride <= crop <= size"):
        window_starts(10, 16, 8)


def test_equals_the_direct_forward_when_the_image_is_the_crop():
    model = tiny_segmenter()
    image = torch.rand(3, 64, 64)
    with torch.no_grad():
        direct = model(image[None])[0]
    assert torch.equal(sliding_window_logits(model, image, 64, 32), direct)
    assert torch.equal(predict(model, image, 64), direct.argmax(0))


def test_every_pixel_covered_at_odd_sizes():
    """A model of constant logits: sum / count is that constant at every pixel exactly
    when every pixel is counted (0 / 0 would be NaN)."""
    def ones(batch):
        return torch.ones(batch.shape[0], 2, *batch.shape[-2:])
    for h, w in ((37, 53), (16, 71), (9, 7), (33, 16)):
        logits = sliding_window_logits(ones, torch.rand(3, h, w), 16, 11, batch_size=3)
        assert logits.shape == (2, h, w) and torch.equal(logits, torch.ones(2, h, w))


def test_pointwise_model_is_unchanged_by_windows_and_padding():
    """A 1x1 convolution gives each pixel logits of that pixel alone: sliding windows
    (overlaps averaged, padding cut away) must give the whole image's forward."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 1)
    for h, w in ((37, 53), (10, 7), (16, 40)):
        image = torch.rand(3, h, w)
        with torch.no_grad():
            direct = conv(image[None])[0]
        for batch_size in (1, 4):
            logits = sliding_window_logits(conv, image, 16, 10, batch_size, pad_value=0.5)
            torch.testing.assert_close(logits, direct, rtol=1e-6, atol=1e-6)


def test_small_images_are_padded_with_the_mean_colour():
    model = tiny_segmenter()
    image = torch.rand(3, 40, 56)  # smaller than the 64 crop both ways
    padded = model.pixel_mean.expand(3, 64, 64).clone()
    padded[:, :40, :56] = image
    with torch.no_grad():
        want = model(padded[None])[0, :, :40, :56]
    torch.testing.assert_close(sliding_window_logits(model, image, 64, 32,
                                                     pad_value=model.pixel_mean.flatten()), want)
    assert torch.equal(predict(model, image, 64), want.argmax(0))


def test_windows_average_where_they_overlap():
    """Each window's logits are its top-left corner's row: the average over the windows
    covering a pixel, computed by hand."""
    def corner(batch):
        return batch[:, :1, :1, :1].expand(-1, 1, *batch.shape[-2:])
    rows = torch.arange(40.0).view(1, 40, 1).expand(3, 40, 20).contiguous()
    logits = sliding_window_logits(corner, rows, 16, 12, batch_size=2)[0, :, 0]
    starts = window_starts(40, 16, 12)  # [0, 12, 24]
    for y in range(40):
        covering = [s for s in starts if s <= y < s + 16]
        assert logits[y] == pytest.approx(sum(covering) / len(covering))
