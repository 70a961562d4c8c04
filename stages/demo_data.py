"""Stage demo-data: write the built-in synthetic dataset (VOC layout) to the config's voc_root.

Writes: JPEGImages/, SegmentationClass/ (palette PNG, 255 borders), PartMasks/ (1 strong part, 2 weak part),
ImageSets/Segmentation/{train,val,trainval}.txt, cls_labels.npy, demo_meta.json. Deterministic in the seed;
skipped when the same dataset is already there. Default target (demo config): work/demo-data.
"""
from psa_baseline.errors import InputError

from . import demo_module

_data = demo_module("data")
DEFAULT_OBJECTS, DEFAULT_STYLE, STYLES = _data.DEFAULT_OBJECTS, _data.DEFAULT_STYLE, _data.STYLES
generate, is_current, read_meta, style_of = _data.generate, _data.is_current, _data.read_meta, _data.style_of

DEFAULTS = {"n_train": 500, "n_val": 150}


def add_arguments(p):
    p.add_argument("--n-train", type=int, default=DEFAULTS["n_train"], help="training images (default %(default)s)")
    p.add_argument("--n-val", type=int, default=DEFAULTS["n_val"], help="validation images (default %(default)s)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the dataset (default %(default)s)")
    p.add_argument("--style", choices=STYLES, default=DEFAULT_STYLE,
                   help="rendering style (default %(default)s; docs/notes/demo_v7.md): v6 = the demo's data, hue = parts "
                        "share a hue, spots = a second family for robustness checks, tone = hue with the class's tone on the "
                        "whole object")
    p.add_argument("--body-scale", type=float, default=DEFAULT_OBJECTS["body_scale"],
                   help="object body radius vs generator v5's thin objects (default %(default)s)")
    p.add_argument("--aspect-scale", type=float, default=DEFAULT_OBJECTS["aspect_scale"],
                   help="body length/width ratio vs v5's (default %(default)s)")
    p.add_argument("--headless-share", type=float, default=DEFAULT_OBJECTS["headless_share"],
                   help="share of objects drawn without their head (default %(default)s)")


def run(cfg, force=False, n_train=DEFAULTS["n_train"], n_val=DEFAULTS["n_val"], data_seed=0, log=print,
        objects=DEFAULT_OBJECTS, style=DEFAULT_STYLE):
    if not cfg["voc_root"]:
        raise InputError("demo-data needs a target folder: --voc-root DIR (the demo config uses work/demo-data)")
    summary = generate(cfg["voc_root"], seed=data_seed, n_train=n_train, n_val=n_val, overwrite=force,
                       objects=objects, style=style)
    state = "written" if summary.get("generated") else "already present"
    log(f"demo dataset {state} at {cfg['voc_root']} (style {style}): {summary['splits']} images, {summary['objects']} objects, "
        f"strong-part fraction of object pixels {summary['strong_part_fraction']:.2f}")
    return summary


def ensure(cfg, log=print):
    """The pipeline's demo-data step: a demo dataset of this generator version already at voc_root is used
    as it is, whatever its seed and sizes (one made by `demo-data --n-train ...`, or at another image size
    from Python); otherwise run() writes the default one (and replaces an older version's)."""
    meta = read_meta(cfg["voc_root"]) if cfg["voc_root"] else None
    if meta and is_current(meta):
        p = meta["params"]
        style = style_of(meta)
        log(f"demo dataset at {cfg['voc_root']}: using it as it is (data seed {meta['seed']}, {p['n_train']} train / "
            f"{p['n_val']} val images, style {style}, sizes {p['size'][0]}-{p['size'][1]} px, objects {p['objects']})")
        if style != DEFAULT_STYLE:
            # a dataset made before the default changed, or on purpose: kept, but the figures will not be the demo's
            log(f"note: style {style} is not the demo's default ({DEFAULT_STYLE}), so results will differ from the "
                f"README's; `psa-eader demo-data --force --voc-root {cfg['voc_root']}` replaces it with the default")
        return meta.get("summary", {})
    return run(cfg, log=log)


def main(args):
    from .cli import config_from_args
    if args.config is None:
        args.config = "demo"
    objects = {"body_scale": args.body_scale, "aspect_scale": args.aspect_scale, "headless_share": args.headless_share}
    run(config_from_args(args), force=args.force, n_train=args.n_train, n_val=args.n_val, data_seed=args.data_seed,
        objects=objects, style=args.style)


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("demo-data")
