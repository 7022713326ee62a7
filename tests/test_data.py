"""engine.data: exactness against torchvision, determinism, data sets, loaders.

CPU only, offline: CIFAR is only exercised through its missing-files error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine import data as D
from engine.core import views as V
from engine.core.schema import DataConfig


def synth(**kw) -> DataConfig:
    base = {
        "dataset": "synthetic",
        "train_size": 200,
        "test_size": 70,
        "batch_size": 32,
        "eval_batch_size": 64,
        "num_workers": 0,
    }
    base.update(kw)
    return DataConfig(**base)


def collect(loader, epoch=0):
    return list(loader.batches(epoch))


# ------------------------------------------------------------------ exactness
CASES = [
    (0, 0, 0),
    (0, 0, 1),
    (8, 8, 0),
    (8, 8, 1),
    (4, 4, 0),
    (4, 4, 1),
    (0, 8, 1),
    (8, 0, 0),
    (3, 6, 1),
    (7, 2, 0),
]


def _pil_reference(img: torch.Tensor, dy: int, dx: int, flip: int, mean, std):
    from torchvision.transforms import Normalize, ToTensor
    from torchvision.transforms import functional as TF

    _, h, w = img.shape
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    pil = TF.crop(TF.pad(pil, 4, fill=0), dy, dx, h, w)
    if flip:
        pil = TF.hflip(pil)
    u8 = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
    return u8, Normalize(mean, std)(ToTensor()(pil))


def test_crop_flip_and_normalise_are_bit_identical_to_torchvision():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (len(CASES), 3, 32, 32), dtype=torch.uint8, generator=g)
    dy, dx, flip = (torch.tensor(c) for c in zip(*CASES, strict=True))
    mean, std = D.CIFAR100_MEAN, D.CIFAR100_STD
    u8 = D.crop_flip_u8(images, dy, dx, flip)  # one batch, a different view per sample
    x = D.augment_batch(images, dy, dx, flip, mean, std)
    assert u8.dtype == torch.uint8 and x.dtype == torch.float32
    for i, (a, b, f) in enumerate(CASES):
        ref_u8, ref_x = _pil_reference(images[i], a, b, f, mean, std)
        assert torch.equal(u8[i], ref_u8), (a, b, f)
        assert torch.equal(x[i], ref_x), (a, b, f)


def test_no_aug_view_is_the_plain_image():
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    dy, dx, flip = V.decode_view(torch.full((3,), V.NO_AUG_VIEW))
    assert torch.equal(D.crop_flip_u8(images, dy, dx, flip), images)


def test_view_id_round_trip():
    dy, dx, flip = torch.meshgrid(torch.arange(9), torch.arange(9), torch.arange(2), indexing="ij")
    views = V.encode_view(dy.flatten(), dx.flatten(), flip.flatten())
    assert sorted(views.tolist()) == list(range(V.NUM_VIEWS)) == list(range(162))
    back = V.decode_view(views)
    assert all(torch.equal(a, b.flatten()) for a, b in zip(back, (dy, dx, flip), strict=True))
    assert V.NO_AUG_VIEW == (4 * 9 + 4) * 2 == V.encode_view(4, 4, 0)
    assert V.decode_view(V.encode_view(8, 3, 1)) == (8, 3, 1)


# ------------------------------------------------------------------ device loader
def test_batches_carry_the_views_they_were_augmented_with():
    d = D.build_data(synth(), seed=3)
    x_tr, *_ = D.load_arrays(synth())
    info = d.info
    for b in collect(d.train, epoch=2)[:3]:
        dy, dx, flip = V.decode_view(b.view)
        assert torch.equal(b.x, D.augment_batch(x_tr[b.index], dy, dx, flip, info.mean, info.std))
    assert len({v for b in collect(d.train) for v in b.view.tolist()}) > 100


def test_same_seed_and_epoch_give_identical_batches_regardless_of_global_rng():
    torch.manual_seed(1)
    a = collect(D.build_data(synth(), seed=7).train, epoch=5)
    torch.manual_seed(2)
    torch.rand(10)
    b = collect(D.build_data(synth(), seed=7).train, epoch=5)
    assert len(a) == len(b)
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p.x, q.x) and torch.equal(p.index, q.index)
        assert torch.equal(p.view, q.view) and torch.equal(p.y, q.y)
    c = collect(D.build_data(synth(), seed=7).train, epoch=6)
    assert not torch.equal(torch.cat([p.index for p in a]), torch.cat([p.index for p in c]))
    e = collect(D.build_data(synth(), seed=8).train, epoch=5)
    assert not torch.equal(torch.cat([p.index for p in a]), torch.cat([p.index for p in e]))


def test_data_seed_overrides_run_seed():
    cfg = synth(data_seed=11)
    a = collect(D.build_data(cfg, seed=0).train, 1)
    b = collect(D.build_data(cfg, seed=1).train, 1)
    assert all(torch.equal(p.x, q.x) for p, q in zip(a, b, strict=True))


def test_every_sample_once_per_epoch_last_partial_batch_kept():
    d = D.build_data(synth(), seed=0)
    assert d.train.num_samples == 200 and len(d.train) == 7  # 6 x 32 + 8
    batches = collect(d.train, 4)
    assert [len(b.index) for b in batches] == [32] * 6 + [8]
    idx = torch.cat([b.index for b in batches])
    assert torch.equal(idx.sort().values, torch.arange(200))
    assert not torch.equal(idx, torch.arange(200))  # shuffled
    x_tr, y_tr, *_ = D.load_arrays(synth())
    assert torch.equal(torch.cat([b.y for b in batches]), y_tr[idx])


def test_test_loader_is_plain_and_in_order():
    cfg = synth()
    d = D.build_data(cfg, seed=0)
    _, _, x_te, y_te, info = D.load_arrays(cfg)
    batches = collect(d.test, 3)
    assert [len(b.index) for b in batches] == [64, 6] and len(d.test) == 2
    assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(70))
    assert all((b.view == V.NO_AUG_VIEW).all() for b in batches)
    x = torch.cat([b.x for b in batches])
    assert torch.equal(x, D.normalize_u8(x_te, info.mean, info.std))
    assert torch.equal(torch.cat([b.y for b in batches]), y_te)


@pytest.mark.parametrize(
    ("kw", "flips", "crops"),
    [
        ({"augment": False}, False, False),
        ({"hflip": "off"}, False, True),
        ({"hflip": "on"}, True, True),
        ({"dataset": "digits"}, False, True),  # auto: no flips for digits
        ({"dataset": "digits", "hflip": "on"}, True, True),
    ],
)
def test_augmentation_switches(kw, flips, crops):
    views = torch.cat([b.view for b in collect(D.build_data(synth(**kw), seed=0).train)])
    dy, dx, flip = V.decode_view(views)
    assert bool(flip.any()) == flips
    assert bool(((dy != 4) | (dx != 4)).any()) == crops


def test_channels_last():
    for loader in ("device", "dataloader"):
        cfg = synth(loader=loader)
        a = next(D.build_data(cfg, seed=0, channels_last=True).train.batches(0))
        b = next(D.build_data(cfg, seed=0).train.batches(0))
        assert a.x.is_contiguous(memory_format=torch.channels_last)
        assert b.x.is_contiguous()
        assert torch.equal(a.x, b.x)


# ------------------------------------------------------------------ data sets
def test_digits():
    x_tr, y_tr, x_te, y_te, info = D.load_arrays(DataConfig(dataset="digits"))
    assert x_tr.shape == (1438, 3, 32, 32) and x_te.shape == (359, 3, 32, 32)
    assert x_tr.dtype == torch.uint8 and y_tr.dtype == torch.int64
    assert (info.num_classes, info.channels, info.image_size) == (10, 3, 32)
    assert (info.train_size, info.test_size) == (1438, 359)
    assert set(y_tr.tolist()) == set(y_te.tolist()) == set(range(10))
    assert int(x_tr.max()) == 255 and int(x_tr.min()) == 0
    assert torch.equal(x_tr[:, 0], x_tr[:, 2])  # grey, replicated
    # the fixed split: disjoint, complete, stratified, independent of any seed
    from sklearn.datasets import load_digits

    digits = load_digits()
    y_all = torch.from_numpy(digits.target).long()
    tr, te = D.digits_split(y_all)
    assert len(set(tr.tolist()) & set(te.tolist())) == 0
    assert sorted(tr.tolist() + te.tolist()) == list(range(1797))
    assert torch.equal(y_tr, y_all[tr]) and torch.equal(y_te, y_all[te])
    counts = torch.bincount(y_te, minlength=10).float() / torch.bincount(y_all, minlength=10)
    assert ((counts - 0.2).abs() < 0.01).all()
    # same data as scikit-learn's loader (we read its file directly: importing sklearn is slow)
    raw, target = D._digits_raw()
    np.testing.assert_array_equal(raw, digits.images)
    np.testing.assert_array_equal(target, digits.target)
    small = torch.nn.functional.avg_pool2d(x_tr[:, :1].float(), 4)
    ref = torch.from_numpy(digits.images[tr.numpy()]).float() * 255 / 16
    assert (small[:, 0] - ref).abs().mean() < 20
    torch.manual_seed(123)
    again = D.load_arrays(DataConfig(dataset="digits"))
    assert torch.equal(again[0], x_tr) and torch.equal(again[3], y_te)
    # mean/std were computed on the train split
    f = x_tr.double() / 255
    assert abs(f.mean().item() - info.mean[0]) < 1e-3 and abs(f.std().item() - info.std[0]) < 1e-3


def test_synthetic_is_deterministic_and_learnable_shaped():
    cfg = synth(num_classes=5, image_size=16, train_size=300, test_size=100)
    torch.manual_seed(0)
    a = D.load_arrays(cfg)
    torch.manual_seed(1)
    b = D.load_arrays(cfg)
    assert all(torch.equal(p, q) for p, q in zip(a[:4], b[:4], strict=True))
    x_tr, y_tr, x_te, y_te, info = a
    assert x_tr.shape == (300, 3, 16, 16) and x_te.shape == (100, 3, 16, 16)
    assert x_tr.dtype == torch.uint8 and info.num_classes == 5
    assert torch.bincount(y_tr).tolist() == [60] * 5
    means = torch.stack([x_tr[y_tr == c].float().mean(0) for c in range(5)]).flatten(1)
    dist = torch.cdist(means, means)
    assert dist[~torch.eye(5, dtype=torch.bool)].min() > 50  # class means clearly apart
    # a nearest-class-mean classifier already separates the test set
    pred = torch.cdist(x_te.float().flatten(1), means).argmin(1)
    assert (pred == y_te).float().mean() > 0.9


def test_missing_cifar_says_where_and_how(tmp_path):
    for name, folder in (("cifar100", "cifar-100-python"), ("cifar10", "cifar-10-batches-py")):
        cfg = DataConfig(dataset=name, root=str(tmp_path), download=False)
        with pytest.raises(D.DataError) as err:
            D.build_data(cfg, seed=0)
        msg = str(err.value)
        assert str(tmp_path) in msg and folder in msg
        assert "download = true" in msg and "[data]" in msg


def test_unknown_dataset_is_a_data_error():
    with pytest.raises(D.DataError, match="unknown data set"):
        D.load_arrays(DataConfig(dataset="mnist"))
    with pytest.raises(D.DataError, match="in-memory"):
        D.load_arrays(DataConfig(dataset="folder"))


# ------------------------------------------------------------------ folder + DataLoader path
def _make_folder(root, classes=("cat", "dog"), n_train=5, n_val=3):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for ci, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                size = (40 + 3 * i, 36 + 2 * ci)
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")


def test_folder(tmp_path):
    _make_folder(tmp_path)
    cfg = DataConfig(
        dataset="folder",
        root=str(tmp_path),
        image_size=24,
        batch_size=4,
        eval_batch_size=4,
        num_workers=0,
    )
    d = D.build_data(cfg, seed=0)
    assert (d.info.num_classes, d.info.train_size, d.info.test_size) == (2, 10, 6)
    assert d.info.mean == D.IMAGENET_MEAN and len(d.train) == 3
    for loader in (d.train, d.test):
        batches = collect(loader)
        for b in batches:
            assert b.x.shape[1:] == (3, 24, 24) and b.x.dtype == torch.float32
            assert b.view is None and b.y.dtype == torch.int64
        idx = torch.cat([b.index for b in batches])
        assert sorted(idx.tolist()) == list(range(loader.num_samples))
    assert torch.cat([b.y for b in collect(d.test)]).tolist() == [0, 0, 0, 1, 1, 1]
    a, b = collect(d.train, 2), collect(d.train, 2)
    assert all(torch.equal(p.x, q.x) for p, q in zip(a, b, strict=True))


def test_missing_folder(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(D.DataError, match="val"):
        D.build_data(DataConfig(dataset="folder", root=str(tmp_path)), seed=0)


def test_dataloader_path_matches_device_path_without_augmentation():
    cfg = synth(augment=False)
    dev = D.build_data(cfg, seed=4)
    ref = D.build_data(DataConfig(**{**cfg.__dict__, "loader": "dataloader"}), seed=4)
    assert isinstance(ref.train, D.TorchDataLoader) and isinstance(dev.train, D.DeviceLoader)
    assert len(ref.train) == len(dev.train) and ref.train.num_samples == dev.train.num_samples
    for split in ("train", "test"):
        a, b = collect(getattr(dev, split), 1), collect(getattr(ref, split), 1)
        xa, ia, ya = (torch.cat(t) for t in zip(*[(p.x, p.index, p.y) for p in a], strict=True))
        xb, ib, yb = (torch.cat(t) for t in zip(*[(p.x, p.index, p.y) for p in b], strict=True))
        assert xa.shape == xb.shape and xb.dtype == torch.float32
        oa, ob = ia.argsort(), ib.argsort()
        torch.testing.assert_close(xa[oa], xb[ob], rtol=0, atol=1e-6)
        assert torch.equal(ya[oa], yb[ob]) and torch.equal(ia[oa], ib[ob])
        assert all(p.view is None for p in b)


def test_dataloader_path_augments_deterministically():
    cfg = synth(loader="dataloader")
    d = D.build_data(cfg, seed=0)
    torch.manual_seed(5)
    a = collect(d.train, 3)
    torch.manual_seed(6)
    b = collect(d.train, 3)
    c = collect(d.train, 4)
    assert all(
        torch.equal(p.x, q.x) and torch.equal(p.index, q.index) for p, q in zip(a, b, strict=True)
    )
    assert not torch.equal(a[0].index, c[0].index)
    # augmented images: some pixels are padding (x = -mean/std) and differ from the plain image
    x_tr, *_ = D.load_arrays(cfg)
    plain = D.normalize_u8(x_tr[a[0].index], d.info.mean, d.info.std)
    assert not torch.equal(plain, a[0].x)
    assert torch.cat([p.index for p in a]).sort().values.tolist() == list(range(200))


def test_dataloader_workers_are_deterministic():
    d = D.build_data(synth(loader="dataloader", num_workers=1, train_size=64), seed=0)
    a, b = collect(d.train, 1), collect(d.train, 1)
    assert all(torch.equal(p.x, q.x) for p, q in zip(a, b, strict=True))


def test_time_loader():
    d = D.build_data(synth(), seed=0)
    assert D.time_loader(d.train, epochs=2) > 0
