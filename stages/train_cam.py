"""Stage train-cam: train PSA's WideResNet-38 classifier (optionally with the EADER hook).

Reads: the train list, images and image-level labels under the VOC root (net.weights if given; with
EADER on and adv_pretrain.epochs > 0, train-adv's adversary.pth).
Writes: <work>/<variant>/train_cam/{checkpoint.pth, cam_net.pth, DONE.json}, logs/<variant>.train_cam.log.
A rerun resumes from checkpoint.pth (model, optimisers, schedule step, EADER turn, RNG states).
"""
import contextlib
import dataclasses
import logging

import torch
import torch.nn.functional as F

from psa_baseline.hardware import channels_last_ok, memory_format
from psa_baseline.training import PolyOptimizer, autocast, epoch_loader, unwrap
from . import train_adv
from .builders import (build_cam_net, cls_train_dataset, cls_train_inputs, require_weights, weights_file,
                       weights_identity)
from .distributed import resolve_device
from .stage import Stage, resumable_training, seed_everything, upstream_fp

NAME = "train_cam"


def depends(cfg):
    # EADER's settings cannot change a run with the hook off
    keys = ("seed", "net", "cam_train") + (("eader",) if cfg["eader"]["enabled"] else ())
    deps = [{k: eader_section(cfg) if k == "eader" else cfg[k] for k in keys}, cls_train_inputs(cfg),
            weights_identity(cfg, ["net.weights"] + (["eader.adv_weights"] if cfg["eader"]["enabled"] else []))]
    if train_adv.enabled(cfg):
        deps.append(upstream_fp(cfg, "train_adv"))
    return deps


def eader_section(cfg):
    """The eader section as fingerprinted: eader.autocast and eader.channels_last only when on, so runs
    from before the keys existed (and runs with them off) keep their fingerprints."""
    e = dict(cfg["eader"])
    for k in ("autocast", "channels_last"):
        if not e.get(k):
            e.pop(k, None)
    return e


def build_eader(cfg, device, pretrained=None):
    """The EADER hook (None when off). Its adversary starts from `pretrained` (train-adv's output, head
    included: same classes) if given, else from eader.adv_weights (ImageNet; head dropped) or random init."""
    if not cfg["eader"]["enabled"]:
        return None
    from psa_eader.hook import EADER, EaderConfig
    from psa_eader.adversary import adversary_optimizer, build_adversary
    # localizer_poly is train-cam's optimiser schedule (poly_max_step), not the hook's
    e = EaderConfig(**{k: v for k, v in cfg["eader"].items() if k != "localizer_poly"})
    if e.channels_last and not channels_last_ok(device, cfg["cam_train"]["bf16"] and e.autocast):
        # the adversary's float32 NHWC backward would run the CPU's broken kernel (hardware.py)
        logging.getLogger("psa_eader").warning("eader.channels_last ignored: float32 NHWC convolution backward "
                                               "is not safe on a CPU (docs/performance.md); the adversary runs NCHW")
        e = dataclasses.replace(e, channels_last=False)
    adv = build_adversary(width=e.adv_width, weights=pretrained or weights_file(cfg, "eader.adv_weights"),
                          keep_head=bool(pretrained)).to(device)
    opt = adversary_optimizer(adv, lr=e.adv_lr, momentum=e.adv_momentum, weight_decay=e.adv_weight_decay)
    return EADER(e, adv, opt)


def poly_max_step(total, cfg):
    """max_step of the localizer's poly schedule, which advances only when its optimiser steps.

    Without EADER (or with eader.loc_in_adv_turn) that is every step. With EADER the localizer rests in the
    adversary's turns, and eader.localizer_poly picks one of two defensible readings:
    - own_steps: its own steps (its turns), so its lr reaches 0 at the end, as a baseline run's does;
    - all_steps: every training step, as PSA's train_cls.py sets max_step with the hook dropped into its loop;
      the lr then ends near (1 - 1/2) ** 0.9 = 0.54 of its start (turns of equal length).
    """
    e = cfg["eader"]  # localizer_poly: one of config.POLY_READINGS (config.validate)
    if not e["enabled"] or e["loc_in_adv_turn"] or e["localizer_poly"] == "all_steps":
        return total
    return sum(1 for s in range(total) if (s // e["phase_steps"]) % 2 == 0)


def run(cfg, force=False, sampler_factory=None, stop_after=None):
    """sampler_factory(n, seed) -> EpochSampler-like (set_epoch(epoch, start)) replaces the default, an
    EpochSampler sharded over the ranks of a torchrun (psa_baseline.training.epoch_loader).
    stop_after: end (with a checkpoint) after this many steps; for tests and debugging."""
    require_weights(cfg, "train-cam")
    st = Stage(cfg, NAME, depends(cfg), force)
    if st.is_done():
        return st.dir / "cam_net.pth"
    t = cfg["cam_train"]
    device = resolve_device(cfg["device"])
    seed_everything(cfg["seed"])

    root, ids, dataset = cls_train_dataset(cfg, "cam_train", st.log)
    st.log.info("variant %s: %d training images from %s", st.variant, len(ids), root.root)

    sampler, loader, steps_per_epoch = epoch_loader(dataset, t["batch_size"], t["num_workers"], device,
                                                    cfg["seed"], sampler_factory, "cam_train")
    total = steps_per_epoch * t["epochs"]

    # NHWC where it is safe and fast (CUDA, CPU bf16): with frozen BN the same weights as NCHW to float
    # noise (tests/test_stages.py); trained BN in float32 differs more (NHWC sums its statistics in float).
    # The CPU's float32 NHWC backward is broken on narrow convs: NCHW there (hardware.py).
    fmt = memory_format(device, t["bf16"])
    st.log.info("precision %s, layout %s", "bf16 autocast" if t["bf16"] else "float32",
                "NHWC" if fmt == torch.channels_last else "NCHW")
    net = build_cam_net(cfg, st.log).to(device, memory_format=fmt)
    eader = build_eader(cfg, device, train_adv.output_path(cfg) if train_adv.enabled(cfg) else None)
    opt = PolyOptimizer(net.param_groups(), t["lr"], t["weight_decay"], poly_max_step(total, cfg),
                        momentum=t["momentum"], momentum_quirk=t["momentum_quirk"], power=t["poly_power"],
                        new_mult=t["new_lr_mult"])
    step, ck, model, checkpoint = resumable_training(
        st, net, opt, total, extra=lambda: {"eader": eader.state_dict() if eader else None})
    if ck is not None and eader is not None:
        eader.load_state_dict(ck["eader"])

    amp = autocast(device, t["bf16"])
    st.log.info("training %d steps (%d epochs x %d), batch %d, crop %d, EADER %s",
                total, t["epochs"], steps_per_epoch, t["batch_size"], t["crop"],
                "on" if eader else "off")
    model.train()

    def step_fn(batch):
        _, x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = x.contiguous(memory_format=fmt)
        return train_step(model, opt, eader, x, y, amp)

    return st.train(loader, sampler, dataset, step_fn, step, total, steps_per_epoch, t, checkpoint,
                    lambda: opt.param_groups[0]["lr"], "cam_net.pth", lambda: unwrap(model).state_dict(),
                    stop_after=stop_after, show=("loss", "l_cls", "adv_acc"))


def train_step(model, opt, eader, x, y, amp):
    """One step of the baseline classifier, or of whichever network's turn it is under EADER."""
    adversary_turn = eader is not None and eader.phase == "adversary"
    if eader is not None:  # the hook under the step's autocast only when eader.autocast says so
        eader.amp = amp if eader.cfg.autocast else contextlib.nullcontext
    if adversary_turn and not eader.trains_localizer:  # the authors' schedule: localizer only looks
        with torch.no_grad(), amp():
            cams = unwrap(model).forward_cam(x)
        stats = eader.adversary_step(x, y, cams.float())
        eader.advance()
        return stats
    with amp():
        logits, cams = model(x, with_cam=True) if eader is not None else (model(x), None)
    loss = F.multilabel_soft_margin_loss(logits.float(), y)
    stats = {"l_cls": loss.item()}
    if adversary_turn:  # loc_in_adv_turn: L_loc alone for the localizer, then the adversary's step
        stats.update(eader.adversary_step(x, y, cams.detach().float()))
    elif eader is not None:
        loss, extra = eader.localizer_loss(x, y, cams.float(), loss)
        stats.update(extra)
    if eader is not None:
        eader.advance()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    stats["loss"] = loss.item()
    return stats


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("train-cam")
