"""Pascal VOC 2012 input: split lists, image-level labels, images, label PNGs, PSA's stage-1 augmentation.

Every problem with user data raises InputError naming the file or id and saying what to do, so a long
run fails in its first seconds (see check_dataset) rather than hours in.
"""
import io
import logging
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFile, UnidentifiedImageError

from .constants import IGNORE, IMAGENET_MEAN, IMAGENET_STD, NUM_CLASSES, voc_palette
from .errors import InputError
from .fileio import atomic_path
from .safe_npy import load_dict

log = logging.getLogger(__name__)

SEG_DIRS = ("SegmentationClassAug", "SegmentationClass")  # 'auto' prefers the first that exists
_MAX_LISTED = 10  # ids quoted in an error message; the rest are counted


def _list_ids(ids):
    """'a, b, c (and 7 more)' for error messages."""
    ids = list(ids)
    text = ", ".join(ids[:_MAX_LISTED])
    if len(ids) > _MAX_LISTED:
        text += f" (and {len(ids) - _MAX_LISTED} more)"
    return text


# --------------------------------------------------------------------------- split lists and labels

def read_split(spec, voc_root=None) -> list:
    """Image ids from a split file, in file order.

    Accepts PSA's lines (`/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`, or the image path only)
    and VOC's bare ids (`<id>`). If `spec` is not an existing file but a bare split name such as
    'val' and `voc_root` is given, `<voc_root>/ImageSets/Segmentation/<spec>.txt` is read instead.
    """
    path = Path(spec)
    if not path.is_file() and voc_root is not None and "/" not in str(spec) and "\\" not in str(spec):
        try:
            candidate = VOCRoot(voc_root).root / "ImageSets" / "Segmentation" / f"{spec}.txt"
        except InputError:
            candidate = None  # report the missing split below, not the root
        if candidate is not None and candidate.is_file():
            path = candidate
    if not path.is_file():
        raise InputError(f"split list {path} does not exist; pass a file of image ids "
                         f"(one per line, VOC or PSA format)")
    ids, first_line = [], {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue  # blank lines are harmless
        if len(tokens) > 2:
            raise InputError(f"{path}:{lineno}: expected '<id>' or '<image path> [<label path>]', "
                             f"got {line.strip()!r}")
        # '/JPEGImages/2007_000032.jpg' -> '2007_000032'; a bare id stays as it is.
        tok = tokens[0]
        img_id = Path(tok).stem if ("/" in tok or tok.lower().endswith((".jpg", ".jpeg", ".png"))) else tok
        if img_id in first_line:
            raise InputError(f"{path}:{lineno}: id {img_id} is listed twice (first on line "
                             f"{first_line[img_id]}); remove the duplicate so no image counts double")
        first_line[img_id] = lineno
        ids.append(img_id)
    if not ids:
        raise InputError(f"split list {path} contains no ids")
    return ids


class ClsLabels(dict):
    """id -> float32[20] dict that remembers which file it came from (for error messages)."""

    def __init__(self, data, source=None):
        super().__init__(data)
        self.source = source


def load_cls_labels(path) -> dict:
    """PSA's cls_labels.npy: a pickled dict {id: 20 values in {0, 1}} -> {id: float32[20]}."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image-level label file {path} does not exist; use PSA's voc12/cls_labels.npy")
    # restricted unpickling (safe_npy): a label file from elsewhere must not be able to run code
    obj = load_dict(path, "image-level label file", str, "{id: float32[20]} as in PSA's voc12/cls_labels.npy",
                    "use PSA's voc12/cls_labels.npy")
    if not isinstance(obj, dict):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a dict {{id: float32[20]}} "
                         f"as in PSA's voc12/cls_labels.npy")
    out = {}
    for key, value in obj.items():
        v = np.asarray(value)
        if v.shape != (NUM_CLASSES,):
            raise InputError(f"{path}: labels of {key!r} have shape {v.shape}, expected ({NUM_CLASSES},) "
                             f"(aeroplane..tvmonitor, background excluded)")
        if not np.all((v == 0) | (v == 1)):
            raise InputError(f"{path}: labels of {key!r} must be 0 or 1, got {np.unique(v).tolist()}")
        out[str(key)] = v.astype(np.float32)
    return ClsLabels(out, source=path)


def labels_from_seg(seg) -> np.ndarray:
    """float32[20]: 1 for every class c whose index c+1 appears in the label map."""
    counts = np.bincount(np.asarray(seg, dtype=np.uint8).ravel(), minlength=256)
    return (counts[1:NUM_CLASSES + 1] > 0).astype(np.float32)


# --------------------------------------------------------------------------- the dataset root

class VOCRoot:
    """A VOC2012 directory (JPEGImages + SegmentationClass and/or SegmentationClassAug).

    `root` may be the VOC2012 directory itself, or a directory holding VOC2012/ or VOCdevkit/VOC2012/.
    seg_dir='auto' prefers SegmentationClassAug (train_aug labels) and falls back to SegmentationClass;
    any other value names the label directory to use.
    """

    def __init__(self, root, seg_dir="auto"):
        given = Path(root)
        for cand in (given, given / "VOC2012", given / "VOCdevkit" / "VOC2012"):
            if (cand / "JPEGImages").is_dir():
                self.root = cand
                break
        else:
            raise InputError(f"{given} has no JPEGImages directory (also looked in {given}/VOC2012 and "
                             f"{given}/VOCdevkit/VOC2012); pass the VOC2012 directory of VOCdevkit")
        self.image_dir = self.root / "JPEGImages"
        if seg_dir == "auto":
            found = [d for d in SEG_DIRS if (self.root / d).is_dir()]
            self.seg_dir = self.root / (found[0] if found else SEG_DIRS[0])
        else:
            self.seg_dir = self.root / seg_dir
        self._seg_dir_option = seg_dir

    def __repr__(self):
        return f"VOCRoot({str(self.root)!r}, seg_dir={self.seg_dir.name!r})"

    def image_path(self, img_id) -> Path:
        return self.image_dir / f"{img_id}.jpg"

    def seg_path(self, img_id) -> Path:
        if not self.seg_dir.is_dir():
            hint = ("neither SegmentationClassAug nor SegmentationClass exists"
                    if self._seg_dir_option == "auto" else f"{self.seg_dir.name} does not exist")
            raise InputError(f"{self.root}: {hint}; label PNGs are needed here (add them, or pass "
                             f"seg_dir= naming the directory that holds them)")
        return self.seg_dir / f"{img_id}.png"

    def read_image(self, img_id) -> np.ndarray:
        """HxWx3 uint8 RGB. Missing, corrupt or truncated files raise InputError."""
        return read_jpeg(self.image_path(img_id), img_id)

    def image_size(self, img_id):
        """(H, W) from the file header only (no decoding)."""
        path = self.image_path(img_id)
        _require_file(path, img_id, "image")
        try:
            with Image.open(path) as im:
                w, h = im.size
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"image {path} (id {img_id}) is not a readable image: {e}; "
                             f"replace it with the original VOC file") from e
        return h, w

    def read_seg(self, img_id, check_size=True) -> np.ndarray:
        """HxW uint8 class indices (0 background, 1..20 classes, 255 ignore), same size as the image."""
        path = self.seg_path(img_id)
        seg = read_label_png(path, img_id)
        if check_size:
            hw = self.image_size(img_id)
            if seg.shape != hw:
                raise InputError(f"label {path} is {seg.shape[1]}x{seg.shape[0]} (WxH) but image "
                                 f"{self.image_path(img_id)} is {hw[1]}x{hw[0]}; they must match")
        return seg


def _as_root(root, seg_dir="auto"):
    return root if isinstance(root, VOCRoot) else VOCRoot(root, seg_dir=seg_dir)


def _require_file(path, img_id, what):
    if not Path(path).is_file():
        raise InputError(f"{what} {path} for id {img_id} does not exist; check the dataset root "
                         f"and the split list")


def read_jpeg(path, img_id="?") -> np.ndarray:
    """Decode a whole image strictly (truncation is an error, not grey pixels) -> HxWx3 uint8 RGB."""
    path = Path(path)
    _require_file(path, img_id, "image")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # raises OSError 'image file is truncated' unless LOAD_TRUNCATED_IMAGES is set
            rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"image {path} (id {img_id}) is corrupt or truncated ({e}); "
                         f"replace it with the original VOC file") from e
    # Some other module may have switched truncated loading on globally; then check the end marker.
    if ImageFile.LOAD_TRUNCATED_IMAGES and data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]:
        raise InputError(f"image {path} (id {img_id}) is truncated (JPEG has no end marker); "
                         f"replace it with the original VOC file")
    return rgb


def read_label_png(path, img_id="?") -> np.ndarray:
    """A palette (or greyscale) label PNG read as class indices; values must be 0..20 or 255."""
    path = Path(path)
    _require_file(path, img_id, "label PNG")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("P", "L"):
                raise InputError(f"label {path} (id {img_id}) has mode {im.mode}; expected a palette "
                                 f"or greyscale PNG holding class indices (colour-rendered labels "
                                 f"cannot be used)")
            seg = np.array(im, dtype=np.uint8)  # palette indices, not colours
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"label {path} (id {img_id}) is corrupt or truncated ({e})") from e
    bad = np.setdiff1d(np.unique(seg), np.r_[np.arange(NUM_CLASSES + 1), IGNORE])
    if bad.size:
        raise InputError(f"label {path} (id {img_id}) holds values {bad.tolist()}; allowed are "
                         f"0..{NUM_CLASSES} and {IGNORE} (ignore)")
    return seg


def save_label_png(path, label_uint8):
    """Write a HxW uint8 label map as a VOC palette PNG, atomically."""
    label = np.asarray(label_uint8)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"label map must be 2-D uint8, got {label.dtype} {label.shape}")
    im = Image.fromarray(label)  # mode 'L'; putpalette turns it into a palette ('P') image
    im.putpalette(voc_palette().ravel().tolist())
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")  # the temp name has no .png suffix, so name the format


# --------------------------------------------------------------------------- labels and pre-flight checks

def image_labels(root, ids, cls_labels=None):
    """(labels {id: float32[20]}, derived) for `ids`.

    From `cls_labels` (a dict or the path of cls_labels.npy) when given; otherwise derived from the
    segmentation PNGs (derived=True), which only full-supervision data has, so a warning is logged.
    """
    if cls_labels is not None:
        if isinstance(cls_labels, (str, Path)):
            cls_labels = load_cls_labels(cls_labels)
        source = getattr(cls_labels, "source", None) or "the given cls_labels dict"
        missing = [i for i in ids if i not in cls_labels]
        if missing:
            raise InputError(f"ids {_list_ids(missing)} are missing from image-level labels {source}; "
                             f"use a label file covering the split")
        return {i: np.asarray(cls_labels[i], dtype=np.float32) for i in ids}, False
    root = _as_root(root)
    log.warning("no image-level label file given: deriving labels from the segmentation PNGs in %s",
                root.seg_dir)
    return {i: labels_from_seg(root.read_seg(i, check_size=False)) for i in ids}, True


def check_dataset(root, ids, need_seg, labels, deep=False):
    """Fail fast before long work: files exist, labels cover the ids. deep=True also decodes everything."""
    root = _as_root(root)
    ids = list(ids)
    missing = [i for i in ids if not root.image_path(i).is_file()]
    if missing:
        raise InputError(f"{len(missing)} of {len(ids)} images are missing from {root.image_dir}: "
                         f"{_list_ids(missing)}; check the dataset root and the split list")
    if need_seg:
        missing = [i for i in ids if not root.seg_path(i).is_file()]
        if missing:
            raise InputError(f"{len(missing)} of {len(ids)} label PNGs are missing from {root.seg_dir}: "
                             f"{_list_ids(missing)}; pass seg_dir= naming the right directory")
    if labels is not None:
        missing = [i for i in ids if i not in labels]
        if missing:
            source = getattr(labels, "source", None) or "the image-level labels"
            raise InputError(f"{len(missing)} ids have no image-level labels in {source}: "
                             f"{_list_ids(missing)}")
    if deep:
        for i in ids:
            root.read_image(i)
            if need_seg:
                root.read_seg(i)


# --------------------------------------------------------------------------- augmentation

def normalize(img_uint8, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float32, (pixels / 255 - mean) / std; ImageNet's by default."""
    img = np.asarray(img_uint8, dtype=np.float32) / 255.0
    img = (img - np.array(mean, np.float32)) / np.array(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def random_crop_offsets(h, w, crop, rng):
    """PSA-style crop: per axis, a random window of the image if it is larger than `crop`, else a random
    place for the image inside the crop. Returns (src_y, src_x, dst_y, dst_x, ch, cw)."""
    def axis(n):
        if n >= crop:
            return int(rng.integers(0, n - crop + 1)), 0, crop
        return 0, int(rng.integers(0, crop - n + 1)), n
    sy, dy, ch = axis(h)
    sx, dx, cw = axis(w)
    return sy, sx, dy, dx, ch, cw


class ClsAugment:
    """PSA stage-1 training augmentation: resize long side, flip, colour jitter, normalise, crop.

    Call with a HxWx3 uint8 RGB image and a np.random.Generator (or an int seed, or a torch.Generator);
    all randomness comes from that generator, so the result is a pure function of (image, generator state).
    """

    def __init__(self, crop=448, resize_long=(256, 512), jitter=True, flip=True,
                 jitter_strength=(0.3, 0.3, 0.3, 0.1)):
        self.crop = crop
        self.resize_long = resize_long
        self.jitter = jitter
        self.flip = flip
        self.brightness, self.contrast, self.saturation, self.hue = jitter_strength

    def _color_jitter(self, im, rng):
        # Same operations and ranges as torchvision's ColorJitter, in random order, but drawn from our
        # generator: ColorJitter itself uses torch's global RNG, which DataLoader workers share.
        ops = [
            lambda x: TF.adjust_brightness(x, rng.uniform(1 - self.brightness, 1 + self.brightness)),
            lambda x: TF.adjust_contrast(x, rng.uniform(1 - self.contrast, 1 + self.contrast)),
            lambda x: TF.adjust_saturation(x, rng.uniform(1 - self.saturation, 1 + self.saturation)),
            lambda x: TF.adjust_hue(x, rng.uniform(-self.hue, self.hue)),
        ]
        for k in rng.permutation(len(ops)):
            im = ops[k](im)
        return im

    def __call__(self, img_uint8, rng) -> torch.Tensor:
        if isinstance(rng, torch.Generator):  # draw one seed from it, then use numpy throughout
            rng = int(torch.randint(0, 2**62, (1,), generator=rng))
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        im = Image.fromarray(np.asarray(img_uint8, dtype=np.uint8))
        if self.resize_long is not None:
            lo, hi = self.resize_long
            target = int(rng.integers(lo, hi + 1))  # inclusive, like PSA's random.randint
            w, h = im.size
            scale = target / max(w, h)
            size = (target, max(1, round(h * scale))) if w >= h else (max(1, round(w * scale)), target)
            im = im.resize(size, Image.Resampling.BICUBIC)
        if self.flip and rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.jitter:
            im = self._color_jitter(im, rng)
        x = normalize(np.asarray(im))
        if self.crop is None:
            return x
        # Zero padding after normalisation = padding with the mean colour.
        out = torch.zeros((3, self.crop, self.crop), dtype=torch.float32)
        sy, sx, dy, dx, ch, cw = random_crop_offsets(x.shape[1], x.shape[2], self.crop, rng)
        out[:, dy:dy + ch, dx:dx + cw] = x[:, sy:sy + ch, sx:sx + cw]
        return out


# --------------------------------------------------------------------------- datasets

class EpochSeededDataset(torch.utils.data.Dataset):
    """A training set whose item i of epoch e draws from a generator seeded (seed, e, i): runs are
    reproducible whatever the number of workers, workers never share RNG state, and a resumed run sees
    the crops of an unbroken one. Subclasses set self.ids and self.seed. The epoch comes with the index
    when EpochSampler gives it (training.EpochIndex: persistent workers hold an old copy of the dataset),
    else from set_epoch(e), called before each epoch."""

    epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.ids)

    def item_rng(self, index):
        return np.random.default_rng([self.seed, getattr(index, "epoch", self.epoch), int(index)])


class ClsTrainDataset(EpochSeededDataset):
    """(id, augmented image float32[3,crop,crop], labels float32[20]) for classification training.

    Item i of epoch e uses a generator seeded from (seed, e, i): runs are reproducible whatever the
    number of workers, and workers never share RNG state (EpochSeededDataset says where e comes from).
    """

    def __init__(self, root, ids, labels, augment, seed=0):
        self.root = _as_root(root)
        self.ids = list(ids)
        self.labels = labels
        self.augment = augment
        self.seed = int(seed)

    def __getitem__(self, index):
        img_id = self.ids[index]
        img = self.augment(self.root.read_image(img_id), self.item_rng(index))
        return img_id, img, torch.from_numpy(np.asarray(self.labels[img_id], dtype=np.float32))


class ImageDataset(torch.utils.data.Dataset):
    """(id, HxWx3 uint8 image, labels float32[20]) for inference; images keep their size."""

    def __init__(self, root, ids, labels):
        self.root = _as_root(root)
        self.ids = list(ids)
        self.labels = labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        img_id = self.ids[index]
        return (img_id, self.root.read_image(img_id),
                torch.from_numpy(np.asarray(self.labels[img_id], dtype=np.float32)))
