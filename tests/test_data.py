"""Data: the folder layouts, errors that name the path, paired augmentation, determinism, the sample set's split."""

import numpy as np
import pytest
import torch
from PIL import Image

from ackd_fast import data


def _aligned_folder(root, n=3, size=16):
    folder = root / "train"
    folder.mkdir(parents=True)
    for i in range(n):
        a = np.zeros((size, size, 3), np.uint8)
        a[..., 0] = 255  # A red
        b = np.zeros((size, size, 3), np.uint8)
        b[..., 2] = 255  # B blue
        Image.fromarray(np.concatenate([a, b], 1)).save(folder / f"{i}.png")
    return root


def test_missing_empty_and_unreadable_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        data.make_dataset(tmp_path / "nope", "aligned")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
        data.make_dataset(tmp_path, "aligned")
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path / 'train'} holds no images"):
        data.make_dataset(tmp_path, "aligned")
    (tmp_path / "train" / "bad.png").write_bytes(b"not a png")
    ds = data.make_dataset(tmp_path, "aligned", load_size=16, crop_size=16)
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.png"):
        ds[0]
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "trainA")):
        data.make_dataset(tmp_path, "unaligned")
    with pytest.raises(ValueError, match="direction"):
        data.make_dataset(tmp_path, "aligned", direction="AB")
    with pytest.raises(ValueError, match="mode"):
        data.make_dataset(tmp_path, "paired")
    with pytest.raises(ValueError, match="crop_size"):
        data.make_dataset(tmp_path, "aligned", load_size=16, crop_size=32)


def test_aligned_halves_and_direction(tmp_path):
    _aligned_folder(tmp_path)
    s = data.make_dataset(tmp_path, "aligned", load_size=16, crop_size=12)[0]
    assert s["A"].shape == s["B"].shape == (3, 12, 12)
    assert s["A"][0].mean() > 0.9 and s["A"][2].mean() < -0.9  # red
    assert s["B"][2].mean() > 0.9 and s["B"][0].mean() < -0.9  # blue
    r = data.make_dataset(tmp_path, "aligned", direction="BtoA", load_size=16, crop_size=12)[0]
    assert torch.equal(r["A"], s["B"]) and torch.equal(r["B"], s["A"])


def test_pairs_share_crop_and_flip_and_draws_are_seeded_by_epoch_and_index(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    half = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(np.concatenate([half, half], 1)).save(folder / "x.png")
    ds = data.make_dataset(tmp_path, "aligned", load_size=20, crop_size=12, seed=3)
    samples = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        s = ds[0]
        assert torch.equal(s["A"], s["B"])  # the same crop and flip for both halves
        samples.append(s["A"])
    ds.set_epoch(2)
    assert torch.equal(ds[0]["A"], samples[2])
    assert len({t.sum().item() for t in samples}) > 1  # epochs draw different crops
    no_flip = data.make_dataset(tmp_path, "aligned", load_size=20, crop_size=12, seed=3, flip=False)
    flipped = 0
    for epoch in range(6):  # the same crops, never flipped
        no_flip.set_epoch(epoch)
        x = no_flip[0]["A"]
        assert torch.equal(x, samples[epoch]) or torch.equal(x.flip(-1), samples[epoch])
        flipped += not torch.equal(x, samples[epoch])
    assert flipped > 0  # with flips on, some epoch drew one (seeded: the same draws every run)


def test_unaligned_layout(tmp_path):
    for sub, n in (("trainA", 3), ("trainB", 5)):
        (tmp_path / sub).mkdir()
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(tmp_path / sub / f"{i}.jpg")
    ds = data.make_dataset(tmp_path, "unaligned", load_size=8, crop_size=8)
    assert len(ds) == 3 and not ds.paired
    assert ds[1]["A"].shape == ds[1]["B"].shape == (3, 8, 8)


def test_sample_set_splits_by_photograph_and_is_cached(tmp_path):
    root = data.build_sample_set(tmp_path / "s", size=24, train_per_photo=2, test_per_photo=2)
    train = [p.stem.rsplit("_", 1)[0] for p in data.list_images(root / "train")]
    test = [p.stem.rsplit("_", 1)[0] for p in data.list_images(root / "test")]
    assert set(train) == set(data.SAMPLE_TRAIN_PHOTOS) and set(test) == set(data.SAMPLE_TEST_PHOTOS)
    assert not set(train) & set(test)
    im = Image.open(root / "test" / "coffee_000.png")
    assert im.size == (48, 24)
    edges = np.asarray(im)[:, :24]
    assert set(np.unique(edges)) <= {0, 255}  # black lines on white
    stamp = (root / "meta.json").stat().st_mtime_ns
    data.build_sample_set(tmp_path / "s", size=24, train_per_photo=2, test_per_photo=2)
    assert (root / "meta.json").stat().st_mtime_ns == stamp  # cached, not rebuilt

    un = data.build_sample_set(tmp_path / "u", size=24, train_per_photo=2, test_per_photo=2, unpaired=True)
    a = {p.name for p in data.list_images(un / "trainA")}
    b = {p.name for p in data.list_images(un / "trainB")}
    assert a and b and not a & b  # no training photo is its edges' partner
    assert {p.name for p in data.list_images(un / "testA")} == {p.name for p in data.list_images(un / "testB")}


@pytest.mark.parametrize("unpaired", [False, True])
def test_split_holds_out_disjoint_unaugmented_samples(tmp_path, unpaired):
    root = data.build_sample_set(tmp_path, size=20, train_per_photo=2, test_per_photo=1, unpaired=unpaired)
    ds = data.make_dataset(root, "unaligned" if unpaired else "aligned", "train", load_size=20, crop_size=16)
    rest, val = ds.split(3, seed=5)
    files = lambda d: getattr(d, d.INPUTS)
    assert len(val) == 3 and len(rest) == len(ds) - 3
    assert sorted(files(rest) + files(val)) == sorted(files(ds)) and not set(files(rest)) & set(files(val))
    assert files(ds.split(3, seed=5)[1]) == files(val) and files(ds.split(3, seed=6)[1]) != files(val)
    assert rest.train and not val.train and len(files(ds)) == len(ds)  # the original is untouched
    assert val[0]["A"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="validation size"):
        ds.split(len(ds))


def test_listing_recurses_and_takes_the_peers_extensions_in_any_case(tmp_path):
    im = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "a" / "b").mkdir(parents=True)
    names = ["x.PPM", "a/y.JPEG", "a/b/z.tif", "a/b/w.Png", "v.webp", "u.bmp"]
    for name in names:
        im.save(tmp_path / name, format={"PPM": "PPM", "JPEG": "JPEG", "tif": "TIFF"}.get(name.rsplit(".", 1)[1]))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "c.gif").write_bytes(b"GIF89a")
    assert data.list_images(tmp_path) == sorted(tmp_path / n for n in names)
    assert set(data.IMAGE_EXTENSIONS) == {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp"}


def test_evaluation_split_is_test_else_val(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no evaluation split .*test and .*val"):
        data.evaluation_phase(tmp_path, "aligned")
    (tmp_path / "val").mkdir()
    assert data.evaluation_phase(tmp_path, "aligned") == "val"
    (tmp_path / "test").mkdir()
    assert data.evaluation_phase(tmp_path, "aligned") == "test"
    (tmp_path / "valB").mkdir()
    assert data.evaluation_phase(tmp_path, "unaligned", "BtoA") == "val"  # the input folder decides
    with pytest.raises(FileNotFoundError, match="testA"):
        data.evaluation_phase(tmp_path, "unaligned", "AtoB")


def test_single_mode_reads_one_folder_of_inputs(tmp_path):
    folder = tmp_path / "horse2zebra" / "valA"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((10, 12, 3), 60 * i, np.uint8)).save(folder / f"{i}.jpg")
    ds = data.make_dataset(folder, "single", train=False, load_size=8, crop_size=8)
    assert len(ds) == 3 and not ds.paired and set(ds[2]) == {"A", "index"} and ds[2]["A"].shape == (3, 8, 8)


def test_a_crop_size_not_a_multiple_of_4_is_rejected_up_front(tmp_path):
    _aligned_folder(tmp_path, n=1, size=64)
    with pytest.raises(ValueError, match=r"--crop-size must be a positive multiple of 4.*got 62"):
        data.make_dataset(tmp_path, "aligned", load_size=64, crop_size=62)


def test_demo_tile_set_splits_by_region(tmp_path):
    root = data.build_tile_set(tmp_path, tile=24, test_tile=16, stride=40, short_side=96)
    names = lambda phase: [p.stem for p in data.list_images(root / phase)]
    for phase, size in (("train", 24), ("test", 16)):
        assert {n.rsplit("_", 2)[0] for n in names(phase)} == set(data.TILE_PHOTOS)
        assert Image.open(root / phase / f"{names(phase)[0]}.png").size == (2 * size, size)
    for photo in data.TILE_PHOTOS:  # every test tile lies right of every training tile, with a gap
        train_x = [int(n.rsplit("_", 1)[1]) for n in names("train") if n.rsplit("_", 2)[0] == photo]
        test_x = [int(n.rsplit("_", 1)[1]) for n in names("test") if n.rsplit("_", 2)[0] == photo]
        assert max(train_x) + 24 < min(test_x)
    # a test tile is the photograph's tile beside the same tile of the whole photograph's sketch
    name = names("test")[0]
    photo_name, y, x = name.rsplit("_", 2)
    photo = data._scaled_photo(photo_name, 96)
    pair = np.asarray(Image.open(root / "test" / f"{name}.png"))
    window = np.s_[int(y) : int(y) + 16, int(x) : int(x) + 16]
    np.testing.assert_array_equal(pair[:, :16], photo[window])
    np.testing.assert_array_equal(pair[:, 16:], data.photo_sketch(photo)[window])
    stamp = (root / "meta.json").stat().st_mtime_ns
    data.build_tile_set(tmp_path, tile=24, test_tile=16, stride=40, short_side=96)
    assert (root / "meta.json").stat().st_mtime_ns == stamp  # cached, not rebuilt
    with pytest.raises(ValueError, match="holdout"):
        data.build_tile_set(tmp_path / "x", holdout=1.5)
    with pytest.raises(ValueError, match="stride"):
        data.build_tile_set(tmp_path / "x", stride=0)


def test_photo_sketch_draws_dark_strokes_on_edges_and_leaves_flat_areas_white():
    rng = np.random.default_rng(0)
    photo = np.zeros((37, 53, 3), np.uint8)
    photo[:, 26:] = rng.integers(150, 256, 3)  # one vertical edge between a black and a coloured half
    sketch = data.photo_sketch(photo)
    assert sketch.shape == photo.shape and sketch.dtype == np.uint8
    assert (sketch[..., 0] == sketch[..., 2]).all()  # grey
    assert sketch[:, :20].min() == 255 and sketch[:, 32:].min() == 255  # away from the edge: the white page
    assert sketch[5:-5, 25:27].max() < 64 and sketch[5:-5, 24:28].max() < 192  # on the edge: a dark, soft stroke
    assert data.photo_sketch(np.full((9, 11, 3), 77, np.uint8)).min() == 255  # no edge, no ink
    with pytest.raises(ValueError, match="photo must be an H x W x 3 uint8 array"):
        data.photo_sketch(photo[..., 0])
    with pytest.raises(ValueError, match="photo"):
        data.photo_sketch(photo.astype(np.float32))
