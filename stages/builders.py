"""Build networks and datasets from a config (shared by the stages)."""
from pathlib import Path

from psa_baseline import voc
from psa_baseline.cam_net import CAMNet
from psa_baseline.errors import InputError
from psa_baseline.resnet38 import Res38Spec
from . import demo_module
from .config import resolve_data_path


def load_stage_weights(net, path, what, keys, maker):
    """Load a weights file that stage `maker` wrote (cam_net.pth, aff_net.pth, seg_net.pth) into `net`, with
    an InputError naming the file and the fix when it is missing, unreadable or of another network
    (`what` of this config, built from the `keys` config keys)."""
    from psa_baseline.weights import read_state_dict
    sd = read_state_dict(path, missing=f"{path} does not exist: run {maker} for this work dir and variant first",
                         fix=f"rerun {maker} with --force to remake it")
    try:
        net.load_state_dict(sd)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise InputError(f"{path} does not fit {what} of this config ({keys}): {str(e)[:500]}; train it with "
                         f"this config ({maker} --force) or give the {keys} keys it was trained with") from e
    return net


def files_identity(paths):
    """Short hash of each file's path, size and modification time (a missing one counts as such): a
    fingerprint part that changes when an input file is replaced or edited, for the cost of a stat."""
    import hashlib
    import os
    h = hashlib.sha256()
    for p in paths:
        try:
            s = os.stat(p)
            h.update(f"{p}\0{s.st_size}\0{s.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()[:16]


def inputs_identity(cfg, ids, images=False, seg_dir=None, part_masks=False):
    """files_identity of what a stage reads for `ids`: their images, their label PNGs in seg_dir, their part
    masks, and the image-level label file; so a finished stage is redone when its inputs change on disk."""
    root = voc_root(cfg, seg_dir)
    paths = []
    if images:
        paths += [root.image_path(i) for i in ids]
    if seg_dir:
        paths += [root.seg_dir / f"{i}.png" for i in ids]
    if part_masks and cfg["data"]["part_masks"]:
        paths += [root.root / cfg["data"]["part_masks"] / f"{i}.png" for i in ids]
    cls = cfg["data"]["cls_labels"]
    if cls:
        paths.append(resolve_data_path(cfg, cls, "data.cls_labels file"))
    return files_identity(paths)


def res38_spec(cfg):
    n = cfg["net"]
    return Res38Spec(width=n["width"], blocks=tuple(n["blocks"]), frozen_bn=n["frozen_bn"],
                     frozen_stem=n["frozen_stem"])


RANDOM = "random"  # the value of a weights key that asks for random initialisation on purpose

# weights key -> (what it initialises, the `psa-eader weights download` name of the published file)
WEIGHTS_KEYS = {
    "net.weights": ("the WideResNet-38 backbone", "wideresnet38"),
    "eader.adv_weights": ("EADER's ResNet-18 adversary", "resnet18"),
    "standalone.weights": ("the standalone ResNet localizer", "resnet101"),
    "seg_train.encoder_weights": ("the DeepLabV3+ encoder", "resnet101"),
}


def weights_value(cfg, key):
    section, name = key.split(".")
    return cfg[section][name]


def needed_weights(cfg, stage):
    """Weights keys that `stage` initialises a network from, for this config (one variant)."""
    from . import train_adv
    eader_on = cfg["eader"]["enabled"]
    if stage == "train-cam":
        # with train-adv on, the adversary starts from train-adv's output instead
        return ["net.weights"] + (["eader.adv_weights"] if eader_on and not train_adv.enabled(cfg) else [])
    if stage == "train-aff":
        return ["net.weights"] if cfg["aff_train"]["init"] == "imagenet" else []
    if stage == "standalone":
        return ["standalone.weights"] + (["eader.adv_weights"] if eader_on else [])
    if stage == "train-seg":
        return ["seg_train.encoder_weights"]
    return []


def download_name(cfg, key):
    """The `psa-eader weights download` name of the file `key` takes in this config."""
    if key == "seg_train.encoder_weights" and cfg is not None:  # the file of the configured encoder
        from .weights_cmd import KNOWN
        enc = cfg["seg_train"]["encoder"]
        return enc if enc in KNOWN else f"<the torchvision ImageNet file of {enc}: not listed>"
    return WEIGHTS_KEYS[key][1]


def null_weights_message(key, stage, cfg=None):
    what, name = WEIGHTS_KEYS[key][0], download_name(cfg, key)
    return (f"config key '{key}' is null, so {stage} would start {what} from random weights. Get the "
            f"published ImageNet file with `psa-eader weights download {name} --cache-dir DIR` (or copy it by "
            f"hand; `psa-eader weights list` shows the files) and set {key}=DIR/<file>; to train from "
            f"random init on purpose, set {key}={RANDOM}")


def require_weights(cfg, stage):
    """Stop before a training stage starts a network from random weights nobody asked for: a null
    weights key is an error (paper-scale runs need ImageNet init); `random` asks for it explicitly."""
    for key in needed_weights(cfg, stage):
        if weights_value(cfg, key) is None:
            raise InputError(null_weights_message(key, stage, cfg))


def weights_file(cfg, key):
    """The resolved file a weights key names; None when it is `random` or null (callers that need a
    file call require_weights first)."""
    value = weights_value(cfg, key)
    if value is None or value == RANDOM:
        return None
    # a weights file is named by its key, not looked for under the data root
    path = resolve_data_path(cfg, value, f"{key}: weights file {value!r}",
                             fix=f"set {key}=PATH to the file (`psa-eader weights list` shows the published files)")
    pretrain = demo_module("pretrain")
    if Path(path).resolve().parent == pretrain.WEIGHTS_DIR.resolve():
        _verified_demo_weights()  # every reader, not only the pipeline: a tampered file is refused
    return path


_DEMO_VERIFIED = {}


def _verified_demo_weights():
    """demo.pretrain.verify once per process and state of the folder (its files' sizes and times)."""
    pretrain = demo_module("pretrain")
    key = files_identity(sorted(pretrain.WEIGHTS_DIR.iterdir()))
    if key not in _DEMO_VERIFIED:
        _DEMO_VERIFIED[key] = pretrain.verify(pretrain.WEIGHTS_DIR)


_HASHES = {}


def weights_identity(cfg, keys):
    """{key: SHA-256 of the file it names, or the value itself (null / random)} for fingerprints: a
    weights file replaced under the same name (e.g. remade demo weights) must not reuse old results."""
    import hashlib
    out = {}
    for key in keys:
        path = weights_file(cfg, key)
        if path is None:
            out[key] = weights_value(cfg, key)
            continue
        st = path.stat()
        tag = (str(path), st.st_size, st.st_mtime_ns)
        if tag not in _HASHES:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            _HASHES[tag] = h.hexdigest()
        out[key] = _HASHES[tag]
    return out


def load_net_weights(cfg, net, log=None):
    """Load net.weights (a file) into `net`; returns whether anything was loaded."""
    path = weights_file(cfg, "net.weights")
    if path is None:
        return False
    from psa_baseline.weights import load_weights
    report = load_weights(net, path)
    if log:
        log.info("initial weights: %s", report.summary())
    return True


def build_cam_net(cfg, log=None, pretrained=True):
    """PSA's classifier of this config; pretrained=False leaves out net.weights (for loading a trained file)."""
    net = CAMNet(res38_spec(cfg))
    if not pretrained:
        return net
    if not load_net_weights(cfg, net, log) and log:
        log.info("net.weights is %s: random initialisation", cfg["net"]["weights"])
    return net


def voc_root(cfg, seg_dir=None):
    if not cfg["voc_root"]:
        raise InputError("no VOC root given: pass --voc-root DIR (the folder holding JPEGImages) "
                         "or set voc_root in the config")
    return voc.VOCRoot(cfg["voc_root"], seg_dir=seg_dir or cfg["data"]["seg_dir"])


def split_ids(cfg, rel):
    return voc.read_split(resolve_data_path(cfg, rel, "split list"), cfg["voc_root"])


def labels_for(cfg, root, ids, log=None):
    cls = cfg["data"]["cls_labels"]
    table = voc.load_cls_labels(resolve_data_path(cfg, cls, "data.cls_labels file")) if cls else None
    labels, derived = voc.image_labels(root, ids, table)
    if derived and log:
        log.warning("image-level labels derived from the segmentation PNGs (data.cls_labels is null)")
    return labels


def cls_train_inputs(cfg):
    """What cls_train_dataset reads from the config, for training stages' fingerprints: not the infer
    and eval lists, so changing which images later stages infer or score does not retrain."""
    d = cfg["data"]
    return {"voc_root": cfg["voc_root"], "train_list": d["train_list"], "cls_labels": d["cls_labels"],
            "seg_dir": d["seg_dir"]}


def cls_train_dataset(cfg, section, log=None):
    """(root, ids, dataset) of the image-level training set (data.train_list), checked, with PSA's
    stage-1 augmentation from cfg[section] (crop, resize_long, color_jitter) and a horizontal flip."""
    t = cfg[section]
    root = voc_root(cfg)
    ids = split_ids(cfg, cfg["data"]["train_list"])
    labels = labels_for(cfg, root, ids, log)
    voc.check_dataset(root, ids, need_seg=False, labels=labels)
    aug = voc.ClsAugment(t["crop"], resize_long=tuple(t["resize_long"]), jitter=t["color_jitter"], flip=True)
    return root, ids, voc.ClsTrainDataset(root, ids, labels, aug, seed=cfg["seed"])
