import numpy as np
import torch
from PIL import Image

from diffusekit.images import make_grid, save_png, to_uint8


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 5)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_grid_layout_and_png_round_trip(tmp_path):
    images = torch.stack([torch.full((1, 2, 3), v) for v in (-1.0, 1.0, -1.0)])
    grid = make_grid(images, columns=2, padding=1)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1)
    assert grid[1, 1, 0] == 0 and grid[1, 5, 0] == 255 and grid[4, 1, 0] == 0 and grid[4, 5, 0] == 255  # pad
    path = save_png(grid, tmp_path / "sub" / "grid.png")
    assert np.array_equal(np.array(Image.open(path)), grid[..., 0])
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]
