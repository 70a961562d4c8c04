"""Stage make-seg: DeepLabV3+ predictions for the evaluation list.

Reads: <work>/<variant>/train_seg/seg_net.pth, the images of data.eval_list.
Writes: <work>/<variant>/make_seg/pred/<id>.png (VOC palette PNG: 0 bg, c+1 class c), DONE.json.
seg_infer: scales (single scale by default; e.g. [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] for multi-scale),
flip (adds the mirrored image at every scale), crf (PSA's dense CRF on the averaged softmax; off by default).
Files are written atomically; a rerun does the missing ones.
"""
import time


from psa_baseline import voc
from psa_baseline.fileio import looks_complete
from psa_baseline.progress import with_progress
from psa_baseline.training import autocast
from .builders import load_stage_weights, split_ids, voc_root
from .distributed import barrier, rank, resolve_device, world_size
from .stage import Stage, upstream_fp
from .deeplab import build_deeplab, input_stats, predict_probs, probs_to_label
from .train_seg import check_config

NAME = "make_seg"


def load_seg_net(cfg, path, device):
    net = load_stage_weights(build_deeplab(cfg), path, "the DeepLabV3+",
                             "seg_train.encoder, output_stride, atrous_rates", "train-seg")
    return net.to(device).eval()


def run(cfg, force=False):
    check_config(cfg)
    i = cfg["seg_infer"]
    deps = [upstream_fp(cfg, "train_seg"), i, cfg["data"]["eval_list"], cfg["voc_root"]]
    st = Stage(cfg, NAME, deps, force)
    out_dir = st.dir / "pred"
    if st.is_done():
        return out_dir
    device = resolve_device(cfg["device"])
    root = voc_root(cfg)
    ids = split_ids(cfg, cfg["data"]["eval_list"])
    voc.check_dataset(root, ids, need_seg=False, labels=None)
    net = load_seg_net(cfg, st.work_dir / st.variant / "train_seg" / "seg_net.pth", device)
    amp = autocast(device, cfg["seg_train"]["bf16"])

    mine = ids[rank()::world_size()]
    todo = [k for k in mine if not looks_complete(out_dir / f"{k}.png")]  # an emptied or torn one is redone
    st.log.info("DeepLabV3+ predictions (scales %s, flip %s, crf %s) for %d images (%d already on disk) -> %s",
                i["scales"], i["flip"], i["crf"], len(mine), len(mine) - len(todo), out_dir)
    t0 = time.time()
    for k in with_progress(todo, f"make-seg[{st.variant}]", enabled=rank() == 0):
        img = root.read_image(k)
        probs = predict_probs(net, img, i["scales"], i["flip"], device, amp, input_stats(cfg["seg_train"]["encoder"]))
        label = probs_to_label(probs, img, i["crf"], i["crf_scale_factor"], name=f"id {k}")
        voc.save_label_png(out_dir / f"{k}.png", label)
    dt = time.time() - t0
    st.log.info("%d predictions in %.1f s (%.3f s/image)", len(todo), dt, dt / max(1, len(todo)))
    barrier()
    st.finish(pred_dir="pred", n_images=len(ids), seconds=round(dt, 1))
    return out_dir


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("make-seg")
