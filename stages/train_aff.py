"""Stage train-aff: train PSA's AffinityNet on the la/ha CRF labels of make-crf.

Reads: the ids of crf.list, their images under the VOC root, <work>/<variant>/make_crf/{crf_la,crf_ha}/<id>.npy,
the initial weights (aff_train.init: imagenet = net.weights, cam = <work>/<variant>/train_cam/cam_net.pth).
Writes: <work>/<variant>/train_aff/{checkpoint.pth, aff_net.pth, DONE.json}, logs/<variant>.train_aff.log.
PSA's recipe: colour jitter, joint random crop (padded with black pixels, before normalising) and flip of
image and la/ha scores, no rescale;
label = make_seg_label(la, ha) on the crop at feature resolution (stride 8); affinity loss on the pairs
within aff_train.radius (PSA: 5); four lr groups with the poly schedule. A rerun resumes from checkpoint.pth.
"""
from pathlib import Path

import numpy as np
import torch

from psa_baseline import voc
from psa_baseline.affinity import AffinityLabels, AffinityNet, affinity_loss, collapse_warning, make_seg_label
from psa_baseline.constants import NUM_CLASSES
from psa_baseline.errors import InputError
from psa_baseline.safe_npy import load_dict
from psa_baseline.training import PolyOptimizer, autocast, epoch_loader, unwrap
from psa_baseline.weights import read_state_dict
from .builders import load_net_weights, require_weights, res38_spec, split_ids, voc_root
from .distributed import resolve_device
from .stage import Stage, resumable_training, seed_everything, upstream_fp
from .config import variant_name
from .make_crf import HA, LA

NAME = "train_aff"
STRIDE = 8


def check_config(cfg):
    t = cfg["aff_train"]
    for k in ("batch_size", "epochs", "crop", "checkpoint_every", "log_every"):
        if not t[k] > 0:
            raise InputError(f"config key 'aff_train.{k}': must be positive, got {t[k]!r}")
    if t["crop"] % STRIDE:
        raise InputError(f"config key 'aff_train.crop': must be a multiple of {STRIDE} (the label is pooled "
                         f"{STRIDE}x{STRIDE} to the feature grid), got {t['crop']}")
    radius = t["radius"]
    if not (isinstance(radius, int) and radius >= 2):
        raise InputError(f"config key 'aff_train.radius': an integer of at least 2 (PSA: 5), got {radius!r}")
    if t["crop"] // STRIDE <= 2 * (radius - 1):
        raise InputError(f"config key 'aff_train.crop': {t['crop']} gives a {t['crop'] // STRIDE} x "
                         f"{t['crop'] // STRIDE} feature grid, on which PSA's pair rule (source pixels at least "
                         f"{radius - 1} cells from the left/right borders) leaves no pairs; use at least "
                         f"{STRIDE * (2 * radius - 1)}")
    if t["init"] not in ("imagenet", "cam"):
        raise InputError(f"config key 'aff_train.init': imagenet or cam, got {t['init']!r}")


def depends(cfg):
    keys = ("seed", "voc_root", "net", "aff_train")
    deps = [{k: cfg[k] for k in keys}, cfg["crf"]["list"], upstream_fp(cfg, "make_crf")]
    if cfg["aff_train"]["init"] == "cam":
        deps.append(upstream_fp(cfg, "train_cam"))
    return deps


def load_crf_dict(path, shape, img_id):
    """A la/ha dict {0: bg, c+1: HxW} checked against the image size -> {int: float32 HxW}."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"CRF label {path} for id {img_id} does not exist; run make-crf")
    obj = load_dict(path, f"CRF label (id {img_id})", int, "{0: background, c+1: class c}", "rerun make-crf")
    if not isinstance(obj, dict) or 0 not in obj:
        raise InputError(f"CRF label {path} (id {img_id}) is not a dict {{0: background, c+1: class c}}; "
                         "rerun make-crf")
    out = {}
    for k, v in obj.items():
        a = np.asarray(v, dtype=np.float32)
        if not (isinstance(k, (int, np.integer)) and 0 <= int(k) <= NUM_CLASSES) or a.shape != tuple(shape):
            raise InputError(f"CRF label {path} (id {img_id}): key {k!r} with a map of shape {a.shape}; expected "
                             f"keys 0..{NUM_CLASSES} and maps of the image size {tuple(shape)}; rerun make-crf")
        out[int(k)] = a
    return out


def black_canvas(size):
    """A normalised black size x size image. PSA's train_aff.py crops jointly (imutils.RandomCrop, zeros)
    before model.normalize, so its padding is black; stage 1 crops after normalising (mean colour)."""
    return voc.normalize(np.zeros((1, 1, 3), np.uint8)).expand(3, size, size).clone()


class AffTrainDataset(voc.EpochSeededDataset):
    """(id, image float32[3, crop, crop], label uint8[crop/8, crop/8]) for AffinityNet training.

    Colour jitter on the whole image, normalise, then the same random crop (padded with black for the
    image, no score for the labels) and flip for image and la/ha scores; the label is PSA's
    make_seg_label on the cropped scores (0 bg, c+1 class, 255 ignore). Item i of epoch e draws from a
    generator seeded by (seed, e, i), as ClsTrainDataset.
    """

    def __init__(self, root, ids, crf_dir, crop, jitter=True, flip=True, seed=0):
        self.root = root
        self.ids = list(ids)
        self.crf_dir = Path(crf_dir)
        self.crop, self.flip, self.seed = crop, flip, int(seed)
        self.photo = voc.ClsAugment(crop=None, resize_long=None, jitter=jitter, flip=False)

    def __getitem__(self, index):
        img_id = self.ids[index]
        rng = self.item_rng(index)
        img = self.root.read_image(img_id)
        H, W = img.shape[:2]
        la = load_crf_dict(self.crf_dir / LA / f"{img_id}.npy", (H, W), img_id)
        ha = load_crf_dict(self.crf_dir / HA / f"{img_id}.npy", (H, W), img_id)
        if sorted(la) != sorted(ha):
            raise InputError(f"id {img_id}: la and ha CRF labels have different classes ({sorted(la)} vs "
                             f"{sorted(ha)}); rerun make-crf --force")
        x = self.photo(img, rng)  # jitter + normalise, full size
        c = self.crop
        sy, sx, dy, dx, ch, cw = voc.random_crop_offsets(H, W, c, rng)
        flip = self.flip and rng.random() < 0.5
        out = black_canvas(c)
        out[:, dy:dy + ch, dx:dx + cw] = x[:, sy:sy + ch, sx:sx + cw]

        def crop_scores(d):
            res = {}
            for k, v in d.items():
                z = np.zeros((c, c), np.float32)
                z[dy:dy + ch, dx:dx + cw] = v[sy:sy + ch, sx:sx + cw]
                res[k] = z[:, ::-1] if flip else z
            return res

        if flip:
            out = out.flip(2)
        label = make_seg_label(crop_scores(la), crop_scores(ha), shape=(c // STRIDE, c // STRIDE), stride=STRIDE)
        return img_id, out, torch.from_numpy(label)


def build_aff_net(cfg, log=None):
    """AffinityNet with the config's backbone, initialised as aff_train.init says."""
    net = AffinityNet(res38_spec(cfg), radius=cfg["aff_train"]["radius"])
    if cfg["aff_train"]["init"] == "cam":
        path = Path(cfg["work_dir"]) / variant_name(cfg) / "train_cam" / "cam_net.pth"
        sd = read_state_dict(path, missing=f"{path} does not exist: run train-cam for this work dir and variant "
                             f"first (aff_train.init is cam)", fix="rerun train-cam with --force to remake it")
        bb = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        try:
            net.backbone.load_state_dict(bb)
        except RuntimeError as e:
            raise InputError(f"{path} does not fit this AffinityNet's backbone (net.* must be the same as "
                             f"for train-cam): {e}") from e
        if log:
            log.info("backbone from the CAM network %s (%d tensors); affinity head random", path, len(bb))
    elif not load_net_weights(cfg, net, log) and log:
        log.warning("aff_train.init is imagenet and net.weights is random: random initialisation")
    return net


def run(cfg, force=False, sampler_factory=None, stop_after=None):
    """sampler_factory(n, seed) -> EpochSampler-like (set_epoch(epoch, start)) replaces the default, an
    EpochSampler sharded over the ranks of a torchrun (psa_baseline.training.epoch_loader).
    stop_after: end (with a checkpoint) after this many steps; for tests and debugging."""
    check_config(cfg)
    require_weights(cfg, "train-aff")
    st = Stage(cfg, NAME, depends(cfg), force)
    if st.is_done():
        return st.dir / "aff_net.pth"
    t = cfg["aff_train"]
    device = resolve_device(cfg["device"])
    seed_everything(cfg["seed"])

    root = voc_root(cfg)
    ids = split_ids(cfg, cfg["crf"]["list"])
    voc.check_dataset(root, ids, need_seg=False, labels=None)
    crf_dir = st.work_dir / st.variant / "make_crf"
    for sub in (LA, HA):
        missing = [i for i in ids if not (crf_dir / sub / f"{i}.npy").is_file()]
        if missing:
            raise InputError(f"{len(missing)} of {len(ids)} {sub} labels are missing from {crf_dir / sub}: "
                             f"{voc._list_ids(missing)}; rerun make-crf")
    st.log.info("variant %s: %d training images from %s, la/ha labels from %s", st.variant, len(ids),
                root.root, crf_dir)

    dataset = AffTrainDataset(root, ids, crf_dir, t["crop"], jitter=t["color_jitter"], seed=cfg["seed"])
    sampler, loader, steps_per_epoch = epoch_loader(dataset, t["batch_size"], t["num_workers"], device,
                                                    cfg["seed"], sampler_factory, "aff_train")
    total = steps_per_epoch * t["epochs"]

    net = build_aff_net(cfg, st.log).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    opt = PolyOptimizer(net.param_groups(), t["lr"], t["weight_decay"], total, momentum=t["momentum"],
                        momentum_quirk=t["momentum_quirk"], power=t["poly_power"])
    step, _, model, checkpoint = resumable_training(st, net, opt, total)

    amp = autocast(device, t["bf16"])
    labeler = AffinityLabels(net.radius, net.psa_crop)
    st.log.info("training %d steps (%d epochs x %d), batch %d, crop %d, init %s", total, t["epochs"],
                steps_per_epoch, t["batch_size"], t["crop"], t["init"])
    model.train()

    def step_fn(batch):
        _, x, label = batch
        x = x.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return train_step(model, opt, x, label, labeler, amp)

    return st.train(loader, sampler, dataset, step_fn, step, total, steps_per_epoch, t, checkpoint,
                    lambda: opt.param_groups[0]["lr"], "aff_net.pth", lambda: unwrap(model).state_dict(),
                    stop_after=stop_after, show=("loss", "fg", "neg"),
                    health=lambda row: collapse_warning(row["bg"], row["fg"]))


def train_step(model, opt, x, label, labeler, amp):
    """One AffinityNet step: features -> pair affinities -> PSA's affinity loss on the label's pairs."""
    with amp():
        feats = model(x)
    if tuple(feats.shape[2:]) != tuple(label.shape[1:]):
        raise RuntimeError(f"feature grid {tuple(feats.shape[2:])} differs from the label grid "
                           f"{tuple(label.shape[1:])}")
    aff = unwrap(model).affinities(feats.float())
    masks = [labeler(lab) for lab in label]
    bg, fg, neg = (torch.stack([m[j] for m in masks]).to(aff.device) for j in range(3))
    loss, l_bg, l_fg, l_neg = affinity_loss(aff, bg, fg, neg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": loss.item(), "bg": l_bg.item(), "fg": l_fg.item(), "neg": l_neg.item()}


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("train-aff")
