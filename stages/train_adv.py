"""Stage train-adv: pre-train EADER's adversary on the clean training images (not in the paper).

The paper's adversary starts from ImageNet weights (eader.adv_weights): it already recognises objects
from any of their parts when EADER begins. A run without such weights (the CPU demo trains from random
init) can give the adversary the same head start here: a plain multi-label classifier (ResNet-18 at
eader.adv_width, SGD momentum 0.9, weight decay 1e-4, poly lr) on the CAM classifier's training images,
labels and augmentation (cam_train crop / resize_long / color_jitter). train-cam then starts its
adversary from it, head included (same classes). Runs only when eader.enabled and adv_pretrain.epochs > 0.

Reads: the train list, images and image-level labels under the VOC root.
Writes: <work>/eader/train_adv/{checkpoint.pth, adversary.pth, DONE.json}, logs/eader.train_adv.log.
A rerun resumes from checkpoint.pth.
"""


from psa_baseline.training import autocast, epoch_loader, poly_classifier_step, unwrap
from .builders import cls_train_dataset, cls_train_inputs
from .distributed import resolve_device
from .stage import Stage, resumable_training, seed_everything

NAME = "train_adv"


def enabled(cfg):
    return bool(cfg["eader"]["enabled"]) and cfg["adv_pretrain"]["epochs"] > 0


def depends(cfg):
    return [{k: cfg[k] for k in ("seed", "cam_train", "adv_pretrain")}, cls_train_inputs(cfg),
            {"adv_width": cfg["eader"]["adv_width"]}]


def output_path(cfg):
    return Stage.folder(cfg, NAME) / "adversary.pth"


def run(cfg, force=False, sampler_factory=None, stop_after=None):
    """Returns adversary.pth, or None when the stage is off (or stopped early)."""
    if not enabled(cfg):
        return None
    from psa_eader.adversary import adversary_optimizer, build_adversary
    st = Stage(cfg, NAME, depends(cfg), force)
    if st.is_done():
        return st.dir / "adversary.pth"
    p = cfg["adv_pretrain"]
    device = resolve_device(cfg["device"])
    seed_everything(cfg["seed"])
    root, ids, dataset = cls_train_dataset(cfg, "cam_train", st.log)
    sampler, loader, steps_per_epoch = epoch_loader(dataset, p["batch_size"], cfg["cam_train"]["num_workers"],
                                                    device, cfg["seed"], sampler_factory, "adv_pretrain")
    total = steps_per_epoch * p["epochs"]
    net = build_adversary(width=cfg["eader"]["adv_width"]).to(device)
    opt = adversary_optimizer(net, lr=p["lr"], momentum=cfg["eader"]["adv_momentum"],
                              weight_decay=cfg["eader"]["adv_weight_decay"])
    step, _, model, checkpoint = resumable_training(st, net, opt, total)

    amp = autocast(device, p["bf16"])
    st.log.info("pre-training the adversary (ResNet-18 width %g) on %d clean images from %s: %d steps "
                "(%d epochs x %d), batch %d", cfg["eader"]["adv_width"], len(ids), root.root, total,
                p["epochs"], steps_per_epoch, p["batch_size"])
    model.train()
    step_fn = poly_classifier_step(model, opt, amp, p["lr"], total, p["poly_power"], step, device)

    return st.train(loader, sampler, dataset, step_fn, step, total, steps_per_epoch, cfg["cam_train"], checkpoint,
                    lambda: opt.param_groups[0]["lr"], "adversary.pth", lambda: unwrap(model).state_dict(),
                    stop_after=stop_after, batch_size=p["batch_size"])


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("train-adv")
