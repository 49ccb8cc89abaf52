"""The robustness corruptions: shape, range, determinism, and that each one changes the image."""

import pytest
import torch

from adamerging.datasets.corruptions import CORRUPTIONS, corrupt


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(
        torch.rand(4, 3, 8, 8, generator=g), size=32, mode="bilinear"
    )
    return (smooth * 255).to(torch.uint8)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_shape_range_determinism(images, name):
    a = corrupt(images, name, seed=1)
    assert a.shape == images.shape and a.dtype == torch.uint8
    assert torch.equal(a, corrupt(images, name, seed=1))
    changed = (a.float() - images.float()).abs().mean()
    assert changed > 1.0, f"{name} barely changes the images ({changed:.2f} grey levels)"
    if name in ("gaussian_noise", "impulse_noise", "spatter", "motion_blur"):
        assert not torch.equal(a, corrupt(images, name, seed=2))


def test_corruption_errors(images):
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(images, "fog")
    with pytest.raises(ValueError, match="uint8"):
        corrupt(images.float(), "contrast")


def test_contrast_keeps_the_mean_and_shrinks_the_spread(images):
    out = corrupt(images, "contrast").float()
    assert abs(out.mean() - images.float().mean()) < 1.0
    assert out.std() < 0.3 * images.float().std()
