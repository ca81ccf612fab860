import numpy as np
import pytest

from dff.utils.image import ImageReadError, compute_scale, preprocess, read_image, resize, transform

MEANS = [103.06, 115.90, 123.15]


def test_transform_is_bit_exact_against_the_reference(reference_dir):
    for k in range(3):
        d = np.load(reference_dir / "model" / f"inputs_frame{k}.npz")
        assert np.array_equal(transform(d["im_resized_bgr_uint8"], MEANS), d["data"])


def test_read_and_resize_reproduce_the_reference_input(reference_dir, shared_data_dir):
    d = np.load(reference_dir / "model" / "inputs_frame0.npz")
    im = read_image(shared_data_dir / "ILSVRC2015_val_00007010" / "000000.JPEG")
    data, im_info = preprocess(im, (240, 400), MEANS)
    assert tuple(data.shape) == (1, 3, 225, 400)
    np.testing.assert_array_equal(im_info.numpy(), d["im_info"])
    # decoder and cv2.resize versions may differ by a grey level; here they match exactly
    assert np.abs(data.numpy() - d["data"]).max() <= 1.0


@pytest.mark.parametrize("h, w, scale", [(720, 1280, 1000 / 1280), (375, 500, 600 / 375), (576, 768, 600 / 576),
                                         (600, 1000, 1.0), (1000, 600, 1.0)])
def test_scale_rule(h, w, scale):
    assert compute_scale(h, w, 600, 1000) == pytest.approx(scale)
    im, s = resize(np.zeros((h, w, 3), np.uint8), 600, 1000)
    assert s == pytest.approx(scale) and min(im.shape[:2]) <= 600 and max(im.shape[:2]) <= 1000


def test_rgb_order_and_means():
    im = np.zeros((4, 4, 3), np.uint8)
    im[..., 0], im[..., 1], im[..., 2] = 10, 20, 30  # B, G, R
    t = transform(im, MEANS)
    assert t[0, 0, 0, 0] == np.float32(30 - 123.15) and t[0, 2, 0, 0] == np.float32(10 - 103.06)


def test_unreadable_images(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageReadError, match=str(bad)):
        read_image(bad)
