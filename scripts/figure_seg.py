"""The report's stage-3 figure: per val image a row of (image, [per variant: pseudo label, DeepLabV3+
prediction], ground truth), for a fixed set of images (the first --n of data.eval_list, or --ids).

Reads a work dir's <variant>/make_pseudo/pseudo and <variant>/make_seg/pred label PNGs and the VOC root;
draws and saves with scripts/figure_attention.py (VOC palette, 255 white, letterboxed cells).

    .venv/bin/python scripts/figure_seg.py --voc-root work/demo-data --work-dir work/demo \\
        --variants baseline eader --n 6 --out work/demo/figure_seg.png
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from figure_attention import figure, save_figure  # noqa: E402
from psa_baseline import voc  # noqa: E402
from psa_baseline.errors import InputError  # noqa: E402


def label_dirs(work_dir, variants):
    """([folders], [titles]): each variant's pseudo labels and DeepLabV3+ predictions, checked to exist."""
    dirs, titles = [], []
    for v in variants:
        for sub, what in (("make_pseudo/pseudo", "pseudo"), ("make_seg/pred", "DeepLabV3+")):
            d = Path(work_dir) / v / sub
            if not d.is_dir():
                raise InputError(f"{d} does not exist: run the pipeline with --until seg for variant {v}")
            dirs.append(d)
            titles.append(f"{v} {what}")
    return dirs, titles


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc-root", required=True, help="VOC2012 folder (JPEGImages, SegmentationClass)")
    p.add_argument("--work-dir", required=True, help="the pipeline's work dir")
    p.add_argument("--variants", nargs="+", default=["baseline", "eader"], help="default %(default)s")
    p.add_argument("--ids", nargs="+", help="image ids (default: the first --n of --split)")
    p.add_argument("--split", default="val", help="split name or list file (default %(default)s)")
    p.add_argument("--n", type=int, default=6, help="number of images (default %(default)s)")
    p.add_argument("--cell", type=int, nargs=2, default=[200, 150], metavar=("W", "H"), help="cell size")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)

    def build():
        dirs, titles = label_dirs(args.work_dir, args.variants)
        ids = args.ids or voc.read_split(args.split, args.voc_root)[:args.n]
        return ids, figure(args.voc_root, [], ids, ["image"], cell_w=args.cell[0], cell_h=args.cell[1],
                           label_dirs=dirs, label_titles=titles)
    return save_figure("figure_seg", build, args.out)


if __name__ == "__main__":
    sys.exit(main())
