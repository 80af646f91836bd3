import numpy as np
import pytest
import torch
from PIL import Image

from zigma.data import make_image_grid, save_image_grid


def test_grid_layout_and_pixels(tmp_path):
    x = torch.linspace(-1, 1, 5).view(5, 1, 1, 1).expand(5, 3, 4, 6).contiguous()
    path = save_image_grid(x, tmp_path / "sub" / "g.png", padding=2)
    img = Image.open(path)
    # 5 images -> 3 per row, 2 rows; tiles 6 wide, 4 high, 2 px padding
    assert img.mode == "RGB" and img.size == (3 * 8 + 2, 2 * 6 + 2)
    arr = np.asarray(img)
    for i in range(5):
        r, c = divmod(i, 3)
        tile = arr[2 + r * 6 : 2 + r * 6 + 4, 2 + c * 8 : 2 + c * 8 + 6]
        assert (tile == round((float(x[i, 0, 0, 0]) + 1) * 127.5)).all()
    assert (arr[0] == 255).all()  # white padding
    assert (arr[2 + 6 : 2 + 6 + 4, 2 + 2 * 8 : 2 + 2 * 8 + 6] == 255).all()  # empty 6th cell


def test_gray_nrow_scale_and_clipping():
    x = torch.full((4, 1, 3, 3), 5.0)
    img = make_image_grid(x, nrow=4, padding=0, scale=2)
    assert img.mode == "L" and img.size == (24, 6) and np.asarray(img).min() == 255


def test_bad_input():
    with pytest.raises(ValueError, match="N, C, H, W"):
        make_image_grid(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="C in"):
        make_image_grid(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="empty"):
        make_image_grid(torch.zeros(0, 3, 8, 8))


def test_save_is_atomic_and_checks_the_format_first(tmp_path, monkeypatch):
    path = tmp_path / "g.png"
    save_image_grid(torch.zeros(1, 3, 4, 4), path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"cannot write images as \.xyz"):
        save_image_grid(torch.zeros(1, 3, 4, 4), tmp_path / "g.xyz")

    def torn_save(self, fp, format=None, **kw):  # a crash halfway through the encoder
        with open(fp, "wb") as f:
            f.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_image_grid(torch.ones(1, 3, 4, 4), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]
