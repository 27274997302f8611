from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ackd_fast import data
from ackd_fast.models import build_generator

root = Path("/tmp/bench_translate")
torch.manual_seed(0)
torch.save(build_generator("mobile_resnet_9blocks", 16).state_dict(), root / "student.pth")
inputs = root / "inputs"
inputs.mkdir(exist_ok=True)
rng = np.random.default_rng(0)
photos = [data._photo(n) for n in data.TILE_PHOTOS]
for i in range(100):
    p = Image.fromarray(photos[i % len(photos)])
    side = min(p.size) // 2
    x = int(rng.integers(0, p.size[0] - side))
    y = int(rng.integers(0, p.size[1] - side))
    p.crop((x, y, x + side, y + side)).resize((256, 256), Image.BICUBIC).save(inputs / f"{i:03d}.png")
print(len(list(inputs.glob("*.png"))))
