"""Stage train-seg: train DeepLabV3+ (segmentation-models-pytorch) on this variant's pseudo labels.

Reads: the ids of seg_train.list, their images under the VOC root, <work>/<variant>/make_pseudo/pseudo/<id>.png,
seg_train.encoder_weights (the encoder's ImageNet file, `psa-eader weights list`; `random`: random init on purpose).
Writes: <work>/<variant>/train_seg/{checkpoint.pth, seg_net.pth, DONE.json}, logs/<variant>.train_seg.log.
The paper's recipe, DeepLabV3+'s own (configs/voc.yaml): SGD momentum 0.9, weight decay 4e-5, lr 0.007 with the
poly schedule (power 0.9; the encoder at seg_train.encoder_lr_mult of it, 1.0), batch 16 with BatchNorm trained,
crop 512, random scale 0.5-2.0, flip, cross-entropy with 255 ignored, 30k iterations, output stride 16 (ASPP
6/12/18). `--config voc-seg-port` takes a PyTorch port's recipe instead. A rerun resumes from checkpoint.pth.
"""

from psa_baseline import voc
from psa_baseline.errors import InputError
from psa_baseline.training import autocast, epoch_loader, unwrap
from .builders import require_weights, split_ids, voc_root, weights_identity
from .distributed import launched_world_size, resolve_device
from .stage import Stage, resumable_training, seed_everything, upstream_fp
from .deeplab import (NARROW_ENCODERS, SegTrainDataset, build_deeplab, init_encoder, input_stats, seg_loss,
                      seg_optimizer)

NAME = "train_seg"


def check_config(cfg):
    t = cfg["seg_train"]
    for k in ("iterations", "crop", "checkpoint_every", "log_every", "lr"):
        if not t[k] > 0:
            raise InputError(f"config key 'seg_train.{k}': must be positive, got {t[k]!r}")
    if t["batch_size"] < 2:
        raise InputError(f"config key 'seg_train.batch_size': at least 2 (DeepLabV3+'s image-pooling branch "
                         f"has BatchNorm over a 1x1 map, which needs more than one value), got {t['batch_size']}")
    if t["sync_bn"] and launched_world_size() > 1 and not str(cfg["device"]).startswith("cuda"):
        # refused here, before the stage starts (and by `psa-eader check` under torchrun), not at the first step
        raise InputError("config key 'seg_train.sync_bn': SyncBatchNorm runs on CUDA only (torch refuses CPU "
                         "tensors): set seg_train.sync_bn=false for a multi-process CPU run")
    if t["output_stride"] not in (8, 16):
        raise InputError(f"config key 'seg_train.output_stride': 8 or 16, got {t['output_stride']!r}")
    if t["crop"] % 32:
        raise InputError(f"config key 'seg_train.crop': a multiple of 32 (the encoder's stride), got {t['crop']}; "
                         f"the public recipe's 513 becomes 512")
    lo_hi = t["scale_range"]
    if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
        raise InputError(f"config key 'seg_train.scale_range': [low, high] with 0 < low <= high, got {lo_hi!r}")
    if len(t["atrous_rates"]) != 3 or not all(isinstance(r, int) and r > 0 for r in t["atrous_rates"]):
        raise InputError(f"config key 'seg_train.atrous_rates': three positive integers, got {t['atrous_rates']!r}")
    if not 0 < t["encoder_width"] <= 1:
        raise InputError(f"config key 'seg_train.encoder_width': in (0, 1], got {t['encoder_width']!r}")
    if t["encoder_width"] != 1 and t["encoder"] not in NARROW_ENCODERS:
        raise InputError(f"config key 'seg_train.encoder_width': {t['encoder_width']:g} needs a ResNet encoder "
                         f"({', '.join(NARROW_ENCODERS)}), not {t['encoder']!r}; set it to 1.0")
    i = cfg["seg_infer"]
    if not i["scales"] or not all(s > 0 for s in i["scales"]):
        raise InputError(f"config key 'seg_infer.scales': a non-empty list of positive scales, got {i['scales']!r}")


def depends(cfg):
    return [{k: cfg[k] for k in ("seed", "voc_root", "seg_train")},
            weights_identity(cfg, ["seg_train.encoder_weights"]), upstream_fp(cfg, "make_pseudo")]


def pseudo_dir(st):
    return st.work_dir / st.variant / "make_pseudo" / "pseudo"


def seg_step(model, opt, amp, x, target):
    """One training step on a batch already on the device; the loss tensor. scripts/bench_seg.py times it."""
    with amp():
        logits = model(x)
    loss = seg_loss(logits, target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def run(cfg, force=False, sampler_factory=None, stop_after=None):
    """sampler_factory(n, seed) -> EpochSampler-like (set_epoch(epoch, start)); DDP passes a sharded one.
    stop_after: end (with a checkpoint) after this many steps; for tests and debugging."""
    check_config(cfg)
    require_weights(cfg, "train-seg")
    st = Stage(cfg, NAME, depends(cfg), force)
    if st.is_done():
        return st.dir / "seg_net.pth"
    t = cfg["seg_train"]
    device = resolve_device(cfg["device"])
    seed_everything(cfg["seed"])

    root = voc_root(cfg)
    ids = split_ids(cfg, t["list"])
    voc.check_dataset(root, ids, need_seg=False, labels=None)
    labels = pseudo_dir(st)
    missing = [i for i in ids if not (labels / f"{i}.png").is_file()]
    if missing:
        raise InputError(f"{len(missing)} of {len(ids)} ids of seg_train.list ({t['list']}) have no pseudo label "
                         f"in {labels}: {voc._list_ids(missing)}; add the list to data.infer_lists and rerun "
                         f"make-pseudo, or train on a list of ids that have labels")
    st.log.info("variant %s: %d training images from %s, pseudo labels from %s", st.variant, len(ids),
                root.root, labels)

    dataset = SegTrainDataset(root, ids, labels, t["crop"], t["scale_range"], flip=t["flip"], seed=cfg["seed"],
                              stats=input_stats(t["encoder"]))
    sampler, loader, steps_per_epoch = epoch_loader(dataset, t["batch_size"], t["num_workers"], device,
                                                    cfg["seed"], sampler_factory, "seg_train")
    if loader.batch_size < 2:  # the global batch split over torchrun's processes
        raise InputError(f"config key 'seg_train.batch_size': {t['batch_size']} over the processes of this run gives "
                         f"{loader.batch_size} image per process; DeepLabV3+'s BatchNorm needs at least 2 per "
                         f"process: raise it or use fewer processes")
    total = t["iterations"]

    net = build_deeplab(cfg)
    init_encoder(cfg, net, st.log)
    net = net.to(device)
    opt = seg_optimizer(cfg, net, total)
    step, _, model, checkpoint = resumable_training(st, net, opt, total, sync_bn=t["sync_bn"])

    amp = autocast(device, t["bf16"])
    st.log.info("training DeepLabV3+ (%s, output stride %d) %d iterations (%d per epoch), batch %d, crop %d, "
                "lr %g poly", t["encoder"], t["output_stride"], total, steps_per_epoch, t["batch_size"],
                t["crop"], t["lr"])
    model.train()

    def step_fn(batch):
        _, x, target = batch
        x, target = x.to(device, non_blocking=True), target.to(device, non_blocking=True)
        return {"loss": seg_step(model, opt, amp, x, target).item()}

    return st.train(loader, sampler, dataset, step_fn, step, total, steps_per_epoch, t, checkpoint,
                    lambda: opt.param_groups[-1]["lr"], "seg_net.pth", lambda: unwrap(model).state_dict(),
                    stop_after=stop_after)


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("train-seg")
