r"""Stage standalone: EADER's standalone setting (paper section 4.2, Table 1): train a Grad-CAM localizer.

A torchvision ResNet (ResNet-101 in the paper; config `standalone:`) is trained as a multi-label
classifier, with the EADER hook when eader.enabled (alpha = eader.alpha; the sweep's alpha 0 is the plain
classifier, hook off). Grad-CAM on layer4 is the attention. At inference the attention of each
data.eval_list image (Grad-CAM at standalone.infer_scales, by default the authors' one forward at the
original size; each also flipped if standalone.infer_flip; upsampled, summed and normalised to max 1 as
standalone.gradcam_norm says; present classes only) gives a segmentation by argmax over [rho, A_1..A_C],
scored with psa_baseline.evaluation (mIoU, precision, recall).

Training augmentation (standalone.augment): `authors`, their RandomResizedCrop(crop) + horizontal flip, or
`psa`, PSA's stage-1 augmentation. standalone.gradcam_norm also sets how the hook normalises the
Grad-CAM for its masks and L_reg (`minmax`, the authors': subtract the map's min, then divide by its max).

The hook's settings come from the eader section; standalone.phase_steps / standalone.adv_width, when set,
replace eader.phase_steps / eader.adv_width for this stage only (the demo uses short turns and a narrow
adversary without changing the PSA demo). The training step is train_cam.train_step itself (the same
EADER turns as PSA's CAM stage), driven through GradCamModel.

    psa-eader standalone --config demo eader.enabled=true          # CPU demo (after psa-eader demo-data)
    psa-eader standalone --voc-root DIR --device cuda eader.enabled=true \
        standalone.weights=resnet101.pth eader.adv_weights=resnet18.pth  # the paper's setting

Reads: the train and eval lists, images, image-level labels (and standalone.weights / eader.adv_weights).
Writes: <work>/<variant>/standalone_train/{checkpoint.pth, localizer.pth, DONE.json},
        <work>/<variant>/standalone_eval/{metrics.json, DONE.json[, cams/<id>.npy]},
        logs/<variant>.standalone_{train,eval}.log. A rerun resumes from checkpoint.pth.
"""
import json
import time
from dataclasses import replace
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from psa_baseline import voc
from psa_baseline.cam_infer import normalise_batch, resize_image, to_cam_dict
from psa_baseline.evaluation import CamSweep
from psa_baseline.fileio import save_npy, write_json
from psa_baseline.progress import with_progress
from psa_baseline.training import autocast, epoch_loader
from psa_baseline.errors import InputError
from psa_eader.masks import NORMS, normalise_attention
from psa_eader.standalone import AuthorsAugment, StandaloneLocalizer
from .builders import (cls_train_dataset, cls_train_inputs, labels_for, load_stage_weights, require_weights,
                       split_ids, voc_root, weights_file, weights_identity)
from .distributed import resolve_device, solo
from .stage import Stage, resumable_training, seed_everything, upstream_fp
from .config import merge
from .train_cam import build_eader, eader_section, train_step

TRAIN = "standalone_train"
EVAL = "standalone_eval"
EVAL_KEYS = ("rho", "infer_scales", "infer_flip", "save_cams", "sweep")  # do not invalidate training


AUGMENTS = ("authors", "psa")
PSA_AUGMENT_KEYS = ("resize_long", "color_jitter")  # used by augment psa only


def check_config(cfg):
    s = cfg["standalone"]
    if s["augment"] not in AUGMENTS:
        raise InputError(f"config key 'standalone.augment': authors or psa, got {s['augment']!r}")
    if s["gradcam_norm"] not in NORMS:
        raise InputError(f"config key 'standalone.gradcam_norm': minmax or max, got {s['gradcam_norm']!r}")


def train_keys(cfg):
    """standalone.* keys that decide training (phase_steps / adv_width count through the eader section;
    resize_long / color_jitter only with augment psa; gradcam_norm only with the hook on)."""
    unused = EVAL_KEYS + ("phase_steps", "adv_width")
    if cfg["standalone"]["augment"] != "psa":
        unused += PSA_AUGMENT_KEYS
    if not cfg["eader"]["enabled"]:
        unused += ("gradcam_norm",)
    return {k: v for k, v in cfg["standalone"].items() if k not in unused}


def eader_cfg(cfg):
    """The config with standalone.phase_steps / adv_width (where set) as eader.phase_steps / adv_width."""
    over = {k: cfg["standalone"][k] for k in ("phase_steps", "adv_width") if cfg["standalone"][k] is not None}
    return merge(cfg, {"eader": over}) if over else cfg


def depends(cfg):
    """What decides the trained localizer; the eader section only when the hook is on (so the
    baseline is not retrained when an unused EADER setting changes)."""
    e = eader_cfg(cfg)["eader"]
    return [{"seed": cfg["seed"], "data": cls_train_inputs(cfg),
             "standalone": train_keys(cfg), "eader": eader_section(eader_cfg(cfg)) if e["enabled"] else {"enabled": False}},
            weights_identity(cfg, ["standalone.weights"] + (["eader.adv_weights"] if e["enabled"] else []))]


def build_localizer(cfg, log=None, pretrained=True):
    """The standalone localizer of this config; pretrained=False leaves out standalone.weights (for loading a
    trained file)."""
    s = cfg["standalone"]
    # None: random (or null: run_train refuses it)
    weights = weights_file(cfg, "standalone.weights") if pretrained else None
    loc = StandaloneLocalizer(s["arch"], s["width"], weights)
    if log:
        log.info("localizer %s width %g: %s", s["arch"], s["width"],
                 f"weights {weights} ({loc.weights_report['loaded']} tensors)" if weights
                 else "random initialisation")
    return loc


class GradCamModel(nn.Module):
    """A StandaloneLocalizer behind CAMNet's training interface, so train_cam.train_step drives it
    (one implementation of EADER's turns for both localizers):
      forward(x) -> logits;  forward(x, with_cam=True) -> (logits, Grad-CAM) from one forward;
      forward_cam(x) -> Grad-CAM, detached (the adversary's turn).
    Grad-CAM needs the batch's labels: give them with `with model.labelled(y): ...`; outside that
    block the attention is refused (no stale labels from another batch).
    """

    def __init__(self, localizer, create_graph=False):
        super().__init__()
        self.loc = localizer
        self.create_graph = create_graph
        self._labels = None

    @contextmanager
    def labelled(self, y):
        self._labels = y
        try:
            yield self
        finally:
            self._labels = None

    def _need_labels(self):
        if self._labels is None:
            raise RuntimeError("Grad-CAM needs the labels: call inside `with model.labelled(y):`")
        return self._labels

    def forward(self, x, with_cam=False):
        if not with_cam:
            return self.loc(x)[0]
        return self.loc.forward_with_attention(x, self._need_labels(), self.create_graph)

    def forward_cam(self, x):
        return self.loc.forward_with_attention(x, self._need_labels(), create_graph=False)[1].detach()


def run_train(cfg, force=False, stop_after=None):
    """Train (or resume) the localizer; returns the path of localizer.pth (None if stopped early)."""
    cfg = eader_cfg(cfg)
    check_config(cfg)
    require_weights(cfg, "standalone")
    st = Stage(cfg, TRAIN, depends(cfg), force)
    if st.is_done():
        return st.dir / "localizer.pth"
    s = cfg["standalone"]
    device = resolve_device(cfg["device"])
    seed_everything(cfg["seed"])

    root, ids, dataset = cls_train_dataset(cfg, "standalone", st.log)  # PSA's augmentation unless replaced
    if s["augment"] == "authors":
        dataset.augment = AuthorsAugment(s["crop"])
    sampler, loader, steps_per_epoch = epoch_loader(dataset, s["batch_size"], s["num_workers"], device,
                                                    cfg["seed"], key="standalone")
    total = steps_per_epoch * s["epochs"]

    model = GradCamModel(build_localizer(cfg, st.log), s["gradcam_create_graph"]).to(device)
    eader = build_eader(cfg, device)
    if eader is not None:  # Grad-CAM normalised as at evaluation (the eader section has no such key)
        eader.cfg = replace(eader.cfg, att_norm=s["gradcam_norm"])
    # constant lr (the authors' standalone code); it steps only in the localizer's turns under EADER
    opt = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"])
    # checkpointed with this stage's fingerprint: a checkpoint of another config is discarded, not resumed
    step, ck, trained, checkpoint = resumable_training(
        st, model, opt, total, extra=lambda: {"eader": eader.state_dict() if eader else None})
    if ck is not None and eader is not None:
        eader.load_state_dict(ck["eader"])

    amp = autocast(device, s["bf16"])
    st.log.info("variant %s: %d training images; %d steps (%d epochs x %d), batch %d, crop %d, augment %s, "
                "Grad-CAM norm %s, EADER %s",
                st.variant, len(ids), total, s["epochs"], steps_per_epoch, s["batch_size"], s["crop"], s["augment"],
                s["gradcam_norm"],
                f"on (alpha {cfg['eader']['alpha']:g}, turns of {cfg['eader']['phase_steps']})" if eader else "off")
    model.train()

    def step_fn(batch):
        _, x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with model.labelled(y):
            return train_step(trained, opt, eader, x, y, amp)

    return st.train(loader, sampler, dataset, step_fn, step, total, steps_per_epoch, s, checkpoint,
                    lambda: opt.param_groups[0]["lr"], "localizer.pth", lambda: model.loc.state_dict(),
                    stop_after=stop_after, show=("loss", "l_cls", "adv_acc"))


# ------------------------------------------------------------------------------------------ inference

def attention_dict(loc, img, label, scales=(1.0,), flip=False, device="cpu", norm="minmax"):
    """Grad-CAM attention of one image as PSA's CAM dict {class: HxW float32 in [0, 1]}.

    The defaults are the authors' evaluation: one forward at the original size, the layer4 Grad-CAM
    upsampled (bilinear) to H x W, then min-max normalised. With more scales (image resized bicubic) or
    flip (the mirror in the same batch), the upsampled maps are un-flipped and summed first, as PSA fuses
    its CAMs; norm 'max' divides by the max (+1e-5) as PSA does. Present classes only.
    """
    device = torch.device(device)
    h, w = img.shape[:2]
    label_t = torch.as_tensor(np.asarray(label, dtype=np.float32), device=device)
    if not (label_t > 0.5).any():
        return {}
    cams, flips = [], []
    for sc in scales:
        im = resize_image(img, sc)
        batch = np.stack([im, im[:, ::-1]]) if flip else im[None]
        x = normalise_batch(batch, device)
        _, att = loc.forward_with_attention(x, label_t.expand(len(batch), -1), create_graph=False)
        att = F.interpolate(att.detach(), (h, w), mode="bilinear", align_corners=False)
        for i in range(att.shape[0]):
            cams.append(att[i])
            flips.append(i == 1)
    return to_cam_dict(fuse_attention(cams, label_t, flips, norm), label)


def fuse_attention(cams, label, flips, norm="minmax"):
    """Sum of the (C,H,W) maps (un-flipped, absent classes zeroed), each class normalised to max 1 as
    `norm` says (psa_eader.masks.normalise_attention); numpy (C,H,W). With norm 'max' this is
    cam_infer.fuse_cams."""
    total = sum((c.flip(-1) if f else c) * label.view(-1, 1, 1) for c, f in zip(cams, flips))
    return normalise_attention(total.float(), norm=norm).cpu().numpy()


def sweep_values(cfg):
    a, b, step = cfg["standalone"]["sweep"]
    return [round(float(v), 6) for v in np.arange(a, b + step / 2, step)]


def evaluate_localizer(cfg, loc, ids, root, labels, device, cam_dir=None):
    """mIoU / precision / recall (%) of argmax over [rho, A_1..A_C] on `ids`, plus a rho sweep.

    CamSweep's rule (class with the highest attention where it beats rho, else background; ties go to
    background) is exactly psa_eader.standalone.segment_from_attention (tests check the two agree).
    """
    s = cfg["standalone"]
    rho = float(s["rho"])
    sweep = CamSweep(sorted(set(sweep_values(cfg)) | {rho}))
    loc.eval()
    for i in with_progress(ids, "standalone eval"):
        gt = root.read_seg(i)
        cam = attention_dict(loc, root.read_image(i), labels[i], s["infer_scales"], s["infer_flip"], device,
                             s["gradcam_norm"])
        if cam_dir is not None:
            save_npy(cam_dir / f"{i}.npy", cam)
        sweep.add(gt, cam)
    by_rho = sweep.results()
    res = dict(by_rho[rho])
    res["rho"] = rho
    res["sweep"] = {format(t, "g"): by_rho[t]["miou"] for t in sorted(set(sweep_values(cfg)))}
    best = max(res["sweep"].items(), key=lambda kv: kv[1])
    res["best_rho"], res["best_miou"] = float(best[0]), best[1]
    res["n_images"] = len(ids)
    res["split"] = cfg["data"]["eval_list"]
    return res


def run_eval(cfg, force=False):
    cfg = eader_cfg(cfg)
    check_config(cfg)
    deps = [upstream_fp(cfg, TRAIN), {k: cfg["standalone"][k] for k in EVAL_KEYS + ("gradcam_norm",)},
            cfg["data"]["eval_list"],
            cfg["data"]["eval_seg_dir"]]
    st = Stage(cfg, EVAL, deps, force)
    out = st.dir / "metrics.json"
    if not st.is_done():
        device = resolve_device(cfg["device"])
        root = voc.VOCRoot(voc_root(cfg).root, seg_dir=cfg["data"]["eval_seg_dir"])
        ids = split_ids(cfg, cfg["data"]["eval_list"])
        labels = labels_for(cfg, root, ids, st.log)
        voc.check_dataset(root, ids, need_seg=True, labels=labels)
        loc = load_stage_weights(build_localizer(cfg, pretrained=False),
                                 st.work_dir / st.variant / TRAIN / "localizer.pth", "the standalone localizer",
                                 "standalone.*", "standalone")
        loc.to(device)
        t0 = time.time()
        res = evaluate_localizer(cfg, loc, ids, root, labels, device,
                                 st.dir / "cams" if cfg["standalone"]["save_cams"] else None)
        res["seconds"] = round(time.time() - t0, 1)
        write_json(out, res)
        st.finish(metrics="metrics.json", n_images=len(ids))
    res = json.loads(out.read_text())
    st.log.info("standalone [%s] on %s: mIoU %.2f precision %.2f recall %.2f at rho %.2f (best mIoU %.2f at "
                "rho %.2f)", st.variant, res["split"], res["miou"], res["precision"], res["recall"], res["rho"],
                res["best_miou"], res["best_rho"])
    return res


def run(cfg, force=False, stop_after=None):
    """Train (resumable) then evaluate; returns the metrics dict (None if stopped early)."""
    if run_train(cfg, force=force, stop_after=stop_after) is None:
        return None
    with solo() as lead:  # under torchrun rank 0 scores alone; the others wait
        return run_eval(cfg, force=force) if lead else None


def add_arguments(p):
    p.add_argument("--stop-after", type=int, help="end (with a checkpoint) after this many steps")


def main(args):
    from .cli import config_from_args
    return run(config_from_args(args), force=args.force, stop_after=args.stop_after)


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("standalone")
