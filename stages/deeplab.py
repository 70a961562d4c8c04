"""Stage 3's network: DeepLabV3+ from segmentation-models-pytorch, its training data and its inference.

Shared by train-seg and make-seg. The paper trains DeepLabV3+ with ResNet-101 and Xception-65 backbones and
"the default training strategy" of DeepLabV3+ (configs/voc.yaml seg_train; docs/reference.md).

How segmentation-models-pytorch's DeepLabV3Plus differs from the paper's network (DeepLabV3+, Chen et al.
ECCV 2018, and its TensorFlow code), written down here because this is where the model is built:
- ASPP and decoder 3x3 convolutions are depthwise-separable for every encoder; DeepLab uses them with
  Xception-65 (and plain convolutions in its ResNet-101 variant);
- the ASPP projection has dropout 0.5 (DeepLab's TF code: 0.9 keep probability, i.e. dropout 0.1), and a
  separable 3x3 conv + BN + ReLU follows the projection before the decoder (not in DeepLab's TF code);
- BatchNorm momentum 0.1 and eps 1e-5 (TF: decay 0.9997, eps 1e-5);
- the ResNet-101 encoder is torchvision's (its ImageNet file), not DeepLab's ResNet-101 "beta" with a
  three-conv stem; Xception-65 is timm's port of DeepLab's TF ImageNet checkpoint (the same network).
"""
import re

import numpy as np
import torch
import torch.nn.functional as F

from psa_baseline import voc
from psa_baseline.constants import IGNORE, IMAGENET_MEAN, IMAGENET_STD, NUM_CLASSES
from psa_baseline.errors import InputError
from psa_baseline.training import PolySGD
from psa_eader.adversary import ARCHS
from .builders import weights_file

N_OUT = NUM_CLASSES + 1  # background + 20 classes

# seg_train.encoder -> segmentation-models-pytorch's name: Xception-65 through its timm encoders ("tu-")
ENCODERS = {"xception65": "tu-xception65"}
# input scaling the encoder's ImageNet weights were trained with: DeepLab's TF Xception takes pixels in [-1, 1]
# (its preprocessing, and timm's pretrained config), torchvision's ResNets the ImageNet mean/std
INPUT_STATS = {"xception65": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
# encoders that seg_train.encoder_width may narrow: torchvision's ResNets, as psa_eader.adversary builds them
NARROW_ENCODERS = tuple(ARCHS)


def smp_encoder_name(encoder):
    return ENCODERS.get(encoder, encoder)


def input_stats(encoder):
    """(mean, std) on pixels / 255 for this encoder's inputs."""
    return INPUT_STATS.get(encoder, (IMAGENET_MEAN, IMAGENET_STD))


def narrow_resnet_encoder(arch, width):
    """The name of segmentation-models-pytorch's encoder for torchvision's ResNet `arch` with every stage width
    times `width` (psa_eader.adversary.ScaledResNet: the demo's pre-trained ResNet-18 is one), registered in
    its encoder table on first use; that library builds ResNets at full width only."""
    from psa_eader.adversary import ScaledResNet, stage_widths
    from segmentation_models_pytorch.encoders import encoders
    from segmentation_models_pytorch.encoders._base import EncoderMixin

    class ScaledResNetEncoder(ScaledResNet, EncoderMixin):
        """ScaledResNet as an encoder: the six feature maps of a ResNet encoder (input, stem, layer1-4)."""

        def __init__(self, out_channels, depth=5, output_stride=32, **params):
            ScaledResNet.__init__(self, **params)
            self._depth, self._in_channels, self._out_channels = depth, 3, out_channels
            self._output_stride = output_stride
            del self.fc, self.avgpool

        def get_stages(self):
            return {16: [self.layer3], 32: [self.layer4]}

        def forward(self, x):
            feats = [x, self.relu(self.bn1(self.conv1(x)))]
            x = self.maxpool(feats[-1])
            for layer in (self.layer1, self.layer2, self.layer3, self.layer4)[:self._depth - 1]:
                x = layer(x)
                feats.append(x)
            return feats

    block, layers = ARCHS[arch]
    planes = stage_widths(width)
    name = f"psa-{arch}-w{width:g}"
    encoders.setdefault(name, {"encoder": ScaledResNetEncoder, "pretrained_settings": {}, "params": {
        "block": block, "layers": layers, "width": width,
        "out_channels": [3, planes[0]] + [p * block.expansion for p in planes]}})
    return name


def build_deeplab(cfg):
    """DeepLabV3+ as seg_train says, randomly initialised (init_encoder loads the ImageNet file)."""
    import segmentation_models_pytorch as smp
    t = cfg["seg_train"]
    name = smp_encoder_name(t["encoder"])
    if t["encoder_width"] != 1.0:
        name = narrow_resnet_encoder(t["encoder"], t["encoder_width"])
    try:
        return smp.DeepLabV3Plus(encoder_name=name, encoder_weights=None,
                                 encoder_output_stride=t["output_stride"],
                                 decoder_atrous_rates=tuple(t["atrous_rates"]), classes=N_OUT)
    except (KeyError, ValueError, RuntimeError) as e:
        raise InputError(f"config key 'seg_train.encoder' / 'seg_train.output_stride': segmentation-models-pytorch "
                         f"cannot build DeepLabV3+ with encoder {t['encoder']!r} at output stride "
                         f"{t['output_stride']} ({e}); use resnet101 or xception65 and 16") from e


def _timm_key(key):
    """A timm classifier's key as the features model of a "tu-" encoder names it: that model flattens the
    top-level sequences (stem.0.conv.weight -> stem_0.conv.weight, blocks.3... -> blocks_3...)."""
    return re.sub(r"^([A-Za-z]\w*)\.(\d+)\.", r"\1_\2.", key)


def load_encoder_weights(encoder, path, name):
    """Load an ImageNet file into DeepLabV3+'s encoder (name: seg_train.encoder); returns load_backbone_weights'
    report. torchvision files load as they are (fc dropped); timm files (Xception-65) are mapped onto the
    features model's names and their classifier (head.*) dropped."""
    from psa_eader.adversary import load_backbone_weights
    if not smp_encoder_name(name).startswith("tu-"):
        return load_backbone_weights(encoder, path)
    return load_backbone_weights(encoder.model, path, skip_prefixes=("head.",), rename=_timm_key)


def init_encoder(cfg, net, log=None):
    """Load seg_train.encoder_weights (the ImageNet file of seg_train.encoder: `psa-eader weights list`) into
    the encoder. `random` keeps random init; a file that leaves encoder tensors unset is refused."""
    path = weights_file(cfg, "seg_train.encoder_weights")
    if path is None:
        if log:
            log.info("seg_train.encoder_weights is %s: encoder from random init", cfg["seg_train"]["encoder_weights"])
        return
    encoder = cfg["seg_train"]["encoder"]
    rep = load_encoder_weights(net.encoder, path, encoder)
    # a file of another architecture (e.g. resnet34 for resnet18) leaves tensors out or brings extra ones
    bad = [k for k in rep["missing"] if not k.endswith("num_batches_tracked")] + rep["mismatched"] + rep["unexpected"]
    if bad:
        raise InputError(f"seg_train.encoder_weights: {path} does not fit the {encoder} "
                         f"encoder ({len(bad)} tensors missing, extra or of the wrong shape, e.g. {bad[:3]}); give the "
                         f"ImageNet file of that architecture (`psa-eader weights list`)")
    if log:
        log.info("encoder weights: %d tensors from %s", rep["loaded"], path)


def seg_optimizer(cfg, net, total):
    t = cfg["seg_train"]
    enc = list(net.encoder.parameters())
    enc_ids = {id(p) for p in enc}
    rest = [p for p in net.parameters() if id(p) not in enc_ids]
    groups = [{"params": enc, "lr": t["lr"] * t["encoder_lr_mult"]}, {"params": rest, "lr": t["lr"]}]
    return PolySGD(groups, total, t["momentum"], t["weight_decay"], t["poly_power"])


def read_pair(root, label_dir, img_id):
    """(image HxWx3 uint8, label HxW uint8) checked to be the same size."""
    img = root.read_image(img_id)
    path = label_dir / f"{img_id}.png"
    lab = voc.read_label_png(path, img_id)
    if lab.shape != img.shape[:2]:
        raise InputError(f"label {path} is {lab.shape[1]}x{lab.shape[0]} (WxH) but image {root.image_path(img_id)} "
                         f"is {img.shape[1]}x{img.shape[0]}; rerun make-pseudo --force")
    return img, lab


def resize(a, h, w, nearest=False):
    import cv2
    return cv2.resize(a, (w, h), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


class SegTrainDataset(voc.EpochSeededDataset):
    """(id, image float32[3, crop, crop], label int64[crop, crop]) for DeepLabV3+ training.

    The public recipe's augmentation: random scale in scale_range (image bilinear, label nearest),
    random crop (padded: image with the mean colour, label with 255), horizontal flip, the encoder's input
    normalisation (input_stats). Item i of epoch e draws from a generator seeded by (seed, e, i), so a resumed run sees
    the same crops as an unbroken one.
    """

    def __init__(self, root, ids, label_dir, crop, scale_range, flip=True, seed=0, stats=(IMAGENET_MEAN, IMAGENET_STD)):
        self.root, self.ids, self.label_dir = root, list(ids), label_dir
        self.crop, self.scale_range, self.flip, self.seed = crop, tuple(scale_range), flip, int(seed)
        self.stats = stats  # (mean, std) of the encoder's inputs (input_stats)

    def __getitem__(self, index):
        img_id = self.ids[index]
        rng = self.item_rng(index)
        img, lab = read_pair(self.root, self.label_dir, img_id)
        s = rng.uniform(*self.scale_range)
        h, w = max(1, round(img.shape[0] * s)), max(1, round(img.shape[1] * s))
        x = voc.normalize(resize(img, h, w), *self.stats)
        lab = resize(lab, h, w, nearest=True)
        c = self.crop
        sy, sx, dy, dx, ch, cw = voc.random_crop_offsets(h, w, c, rng)
        out = torch.zeros(3, c, c)  # 0 after normalising = the mean colour
        out[:, dy:dy + ch, dx:dx + cw] = x[:, sy:sy + ch, sx:sx + cw]
        target = torch.full((c, c), IGNORE, dtype=torch.int64)
        target[dy:dy + ch, dx:dx + cw] = torch.from_numpy(lab[sy:sy + ch, sx:sx + cw].astype(np.int64))
        if self.flip and rng.random() < 0.5:
            out, target = out.flip(2), target.flip(1)
        return img_id, out, target


def seg_loss(logits, target):
    """Cross-entropy over labelled pixels (255 ignored); 0 (with a graph) for a crop without any."""
    if not (target != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE)


def stride_of(net):
    return int(getattr(net.encoder, "output_stride", 32))


def _forward_padded(net, x, stride):
    """Logits for x (1, 3, h, w): zero-padded (the mean colour) at the bottom/right to a multiple of the
    encoder's stride, which the model needs, and cropped back."""
    h, w = x.shape[2:]
    xp = F.pad(x, (0, -(-w // stride) * stride - w, 0, -(-h // stride) * stride - h))
    return net(xp)[:, :, :h, :w].float()


@torch.no_grad()
def predict_probs(net, img, scales=(1.0,), flip=False, device="cpu", amp=None, stats=(IMAGENET_MEAN, IMAGENET_STD)):
    """Softmax (21, H, W) float32 of one HxWx3 uint8 image, averaged over scales (and flips); stats: the
    encoder's input (mean, std) (input_stats)."""
    import contextlib
    amp = amp or contextlib.nullcontext
    H, W = img.shape[:2]
    stride = stride_of(net)
    total = torch.zeros(N_OUT, H, W)
    n = 0
    for s in scales:
        h, w = max(1, round(H * s)), max(1, round(W * s))
        x = voc.normalize(img if (h, w) == (H, W) else resize(img, h, w), *stats)[None].to(device)
        for flipped in ((False, True) if flip else (False,)):
            with amp():
                logits = _forward_padded(net, x.flip(3) if flipped else x, stride)
            if flipped:
                logits = logits.flip(3)
            logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
            total += torch.softmax(logits, 1)[0].cpu()
            n += 1
    return (total / n).numpy()


def probs_to_label(probs, img=None, crf=False, crf_scale_factor=1.0, name="image"):
    """argmax of the class probabilities, after PSA's dense CRF when crf is true."""
    if crf:
        from psa_baseline.crf import crf_inference
        probs = crf_inference(img, probs, scale_factor=crf_scale_factor, name=name)
    return probs.argmax(0).astype(np.uint8)
