"""VOC input on the real VOCmini data (read-only; anything to corrupt is copied into tmp_path first)."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from psa_baseline.constants import IMAGENET_MEAN, IMAGENET_STD, voc_palette
from psa_baseline.errors import InputError
from psa_baseline.voc import (ClsAugment, ClsTrainDataset, ImageDataset, VOCRoot, check_dataset,
                              image_labels, labels_from_seg, load_cls_labels, normalize, read_split,
                              save_label_png)

DATA = Path("/work/shared/data")
VOC = DATA / "VOCmini"
CLS_LABELS = DATA / "voc12" / "cls_labels.npy"
SPLITS = VOC / "ImageSets" / "Segmentation"
ID = "2007_000039"  # 500x375, tvmonitor


@pytest.fixture(scope="module")
def cls_labels():
    return load_cls_labels(CLS_LABELS)


def copy_voc(tmp_path, ids):
    """A writable VOC2012 root holding `ids` only."""
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    for i in ids:
        shutil.copy(VOC / "JPEGImages" / f"{i}.jpg", root / "JPEGImages")
        shutil.copy(VOC / "SegmentationClass" / f"{i}.png", root / "SegmentationClass")
    return root


# --------------------------------------------------------------------------- split lists

def test_read_split_bare_ids():
    ids = read_split(SPLITS / "train.txt")
    assert len(ids) == 100 and ids[0] == ID
    assert read_split("val", voc_root=VOC) == read_split(SPLITS / "val.txt")
    assert len(read_split(SPLITS / "trainval.txt")) == 200


def test_read_split_psa_format(tmp_path):
    p = tmp_path / "list.txt"
    p.write_text("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n\n"
                 "/JPEGImages/2007_000039.jpg\n  \n2007_000063\n")
    assert read_split(p) == ["2007_000032", "2007_000039", "2007_000063"]
    assert len(read_split(DATA / "voc12" / "train.txt")) == 1464
    assert read_split(DATA / "voc12" / "test.txt")[0] == "2008_000006"


def test_read_split_errors(tmp_path):
    p = tmp_path / "dup.txt"
    p.write_text("2007_000032\n/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n")
    with pytest.raises(InputError, match="2007_000032") as e:
        read_split(p)
    assert str(p) in str(e.value)
    with pytest.raises(InputError, match="nothere.txt"):
        read_split(tmp_path / "nothere.txt")


# --------------------------------------------------------------------------- labels

def test_cls_labels_agree_with_pngs(cls_labels):
    ids = read_split(SPLITS / "trainval.txt")
    given, derived_flag = image_labels(VOC, ids, cls_labels)
    derived, flag = image_labels(VOC, ids)
    assert not derived_flag and flag
    for i in ids:
        assert given[i].dtype == np.float32 and given[i].shape == (20,)
        np.testing.assert_array_equal(given[i], derived[i], err_msg=i)


def test_image_labels_from_path_and_missing_id(cls_labels):
    labels, _ = image_labels(VOC, [ID], CLS_LABELS)
    assert labels[ID][19] == 1 and labels[ID].sum() == 1
    with pytest.raises(InputError) as e:
        image_labels(VOC, [ID, "2099_123456"], cls_labels)
    assert "2099_123456" in str(e.value) and str(CLS_LABELS) in str(e.value)


def test_load_cls_labels_errors(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, {"a": np.zeros(19, np.float32)})
    with pytest.raises(InputError, match="'a'.*shape"):
        load_cls_labels(bad)
    np.save(bad, {"b": np.full(20, 0.5, np.float32)})
    with pytest.raises(InputError, match="'b'.*0 or 1"):
        load_cls_labels(bad)
    np.save(bad, np.zeros((3, 20)))
    with pytest.raises(InputError, match="not a dict"):
        load_cls_labels(bad)
    with pytest.raises(InputError, match="missing.npy"):
        load_cls_labels(tmp_path / "missing.npy")


def test_labels_from_seg():
    seg = np.array([[0, 1, 255], [20, 20, 0]], np.uint8)
    want = np.zeros(20, np.float32)
    want[[0, 19]] = 1
    np.testing.assert_array_equal(labels_from_seg(seg), want)


# --------------------------------------------------------------------------- the root

def test_root_layouts(tmp_path):
    (tmp_path / "VOCdevkit").mkdir()
    (tmp_path / "VOCdevkit" / "VOC2012").symlink_to(VOC)
    for given in (VOC, tmp_path / "VOCdevkit", tmp_path):
        r = VOCRoot(given)
        assert r.seg_path(ID).name == f"{ID}.png" and r.seg_dir.name == "SegmentationClass"
        assert r.image_path(ID).is_file()
    # With both label dirs, 'auto' prefers the augmented one unless told otherwise.
    both = tmp_path / "both"
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug"):
        (both / d).mkdir(parents=True)
    assert VOCRoot(both).seg_path(ID).parent.name == "SegmentationClassAug"
    assert VOCRoot(both, seg_dir="SegmentationClass").seg_path(ID).parent.name == "SegmentationClass"


def test_read_image_and_seg():
    r = VOCRoot(VOC)
    img = r.read_image(ID)
    seg = r.read_seg(ID)
    assert img.shape == (375, 500, 3) and img.dtype == np.uint8
    assert seg.shape == (375, 500) and seg.dtype == np.uint8
    assert set(np.unique(seg)) <= {0, 20, 255} and 20 in seg
    check_dataset(VOC, read_split(SPLITS / "val.txt"), need_seg=True, labels=None)


def test_save_label_png_roundtrip(tmp_path):
    label = np.array([[0, 1, 255], [20, 3, 4]], np.uint8)
    p = tmp_path / "out" / "x.png"
    save_label_png(p, label)
    im = Image.open(p)
    assert im.mode == "P"
    np.testing.assert_array_equal(np.array(im), label)
    assert im.getpalette()[:9] == voc_palette()[:3].ravel().tolist()
    assert list(p.parent.iterdir()) == [p]  # no temp file left behind


# --------------------------------------------------------------------------- bad inputs

def test_missing_jpeg_dir(tmp_path):
    (tmp_path / "SegmentationClass").mkdir()
    with pytest.raises(InputError, match="JPEGImages") as e:
        VOCRoot(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_id_without_image():
    with pytest.raises(InputError, match="2099_000001"):
        check_dataset(VOC, [ID, "2099_000001"], need_seg=False, labels=None)
    with pytest.raises(InputError, match="2099_000001.jpg"):
        VOCRoot(VOC).read_image("2099_000001")


def test_missing_seg_and_labels(tmp_path, cls_labels):
    root = copy_voc(tmp_path, [ID, "2007_000241"])
    (root / "SegmentationClass" / "2007_000241.png").unlink()
    check_dataset(root, [ID, "2007_000241"], need_seg=False, labels=cls_labels)
    with pytest.raises(InputError, match="2007_000241"):
        check_dataset(root, [ID, "2007_000241"], need_seg=True, labels=None)
    with pytest.raises(InputError, match="2007_000241"):
        check_dataset(root, [ID, "2007_000241"], need_seg=False, labels={ID: cls_labels[ID]})


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_bad_jpeg(tmp_path, kind):
    root = copy_voc(tmp_path, [ID])
    p = root / "JPEGImages" / f"{ID}.jpg"
    data = p.read_bytes()
    p.write_bytes(b"this is not a jpeg" * 50 if kind == "garbage" else data[:len(data) // 2])
    with pytest.raises(InputError, match=str(p)):
        VOCRoot(root).read_image(ID)
    check_dataset(root, [ID], need_seg=True, labels=None)  # quick check does not decode
    with pytest.raises(InputError, match=ID):
        check_dataset(root, [ID], need_seg=True, labels=None, deep=True)


def _write_palette_png(path, arr):
    im = Image.fromarray(arr)
    im.putpalette(voc_palette().ravel().tolist())
    im.save(path)


def test_label_png_bad_value(tmp_path):
    root = copy_voc(tmp_path, [ID])
    p = root / "SegmentationClass" / f"{ID}.png"
    seg = np.array(Image.open(p))
    seg[10:20, 10:20] = 100
    seg[0, 0] = 21
    _write_palette_png(p, seg)
    with pytest.raises(InputError) as e:
        VOCRoot(root).read_seg(ID)
    assert str(p) in str(e.value) and "[21, 100]" in str(e.value)


def test_label_png_wrong_size(tmp_path):
    root = copy_voc(tmp_path, [ID])
    p = root / "SegmentationClass" / f"{ID}.png"
    _write_palette_png(p, np.zeros((100, 120), np.uint8))
    with pytest.raises(InputError, match="must match") as e:
        VOCRoot(root).read_seg(ID)
    assert str(p) in str(e.value)


def test_label_png_rgb(tmp_path):
    root = copy_voc(tmp_path, [ID])
    p = root / "SegmentationClass" / f"{ID}.png"
    Image.open(p).convert("RGB").save(p)
    with pytest.raises(InputError, match="mode RGB"):
        VOCRoot(root).read_seg(ID)


# --------------------------------------------------------------------------- augmentation and datasets

def test_normalize():
    img = np.array([[[255, 0, 128]]], np.uint8)
    x = normalize(img)
    assert x.shape == (3, 1, 1) and x.dtype == torch.float32
    want = (np.array([1.0, 0.0, 128 / 255]) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(x[:, 0, 0].numpy(), want, rtol=1e-6)


def test_augment_shape_and_determinism():
    img = VOCRoot(VOC).read_image(ID)
    aug = ClsAugment(crop=448)
    a = aug(img, np.random.default_rng(1))
    b = aug(img, np.random.default_rng(1))
    c = aug(img, np.random.default_rng(2))
    assert a.shape == (3, 448, 448) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    t1, t2 = (aug(img, torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(t1, t2)
    # Resize: the long side lands on the drawn length, aspect ratio kept.
    r = ClsAugment(crop=None, resize_long=(300, 300), jitter=False, flip=False)(img, 0)
    assert r.shape == (3, 225, 300)


def test_augment_crop_padding():
    img = np.full((80, 100, 3), 255, np.uint8)  # normalises to positive values everywhere
    aug = ClsAugment(crop=128, resize_long=None, jitter=False, flip=False)
    for seed in range(5):
        x = aug(img, seed)
        nz = (x != 0).all(0).numpy()
        ys, xs = np.nonzero(nz)
        # The image sits whole in one 80x100 box; everything else is zero (= mean colour).
        assert nz.sum() == 80 * 100
        assert ys.max() - ys.min() + 1 == 80 and xs.max() - xs.min() + 1 == 100
    big = ClsAugment(crop=64, resize_long=None, jitter=False, flip=False)(img, 0)
    assert big.shape == (3, 64, 64) and (big != 0).all()


def test_cls_train_dataset_reproducible(cls_labels):
    ids = read_split(SPLITS / "train.txt")[:4]
    aug = ClsAugment(crop=64, resize_long=(64, 96))
    ds = ClsTrainDataset(VOC, ids, cls_labels, aug, seed=3)
    i0, x0, y0 = ds[0]
    assert i0 == ids[0] and x0.shape == (3, 64, 64) and torch.equal(y0, torch.from_numpy(cls_labels[ids[0]]))
    assert torch.equal(ds[0][1], x0)
    ds.set_epoch(1)
    assert not torch.equal(ds[0][1], x0)
    # Same batches whatever the number of workers.
    runs = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers)
        runs.append(torch.cat([x for _, x, _ in loader]))
    assert torch.equal(runs[0], runs[1])


def test_image_dataset(cls_labels):
    ds = ImageDataset(VOC, [ID], cls_labels)
    img_id, img, y = ds[0]
    assert img_id == ID and img.shape == (375, 500, 3) and img.dtype == np.uint8
    assert y.dtype == torch.float32 and y.shape == (20,)
