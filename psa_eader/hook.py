"""EADER as a hook in a localizer's (CAM classifier's) training loop.

Plugging in: the few lines a WSSS method adds to its classification training. The localizer's own
optimizer stays in the loop; EADER owns the adversary and its optimizer.

    from psa_eader.hook import EADER, EaderConfig
    eader = EADER(EaderConfig(enabled=True, adv_weights="resnet18-f37072fd.pth")).to(device)  # ResNet-18 + SGD
    for x, y in loader:                               # x normalised images, y (B,20) 0/1 labels
        if eader.phase == "localizer":
            logits, att = net(x, with_cam=True)       # one forward: logits + attention
            loss_loc = F.multilabel_soft_margin_loss(logits, y)
            loss, stats = eader.localizer_loss(x, y, att, loss_loc)
            opt.zero_grad(); loss.backward(); opt.step()
        else:
            with torch.no_grad():
                att = net.forward_cam(x)              # Grad-CAM: see standalone.py (needs grad on)
            stats = eader.adversary_step(x, y, att)
        eader.advance()
    checkpoint["eader"] = eader.state_dict()

Alternation (from the authors' train.py / training_utils.TrainingPhase): a global step counter that
runs across epochs; step s belongs to the localizer when s % (L + A) < L (L = A = 200), localizer
first. During the adversary's turn the authors do not train the localizer at all (its loss is
replaced by 0 and its optimizer does not step; it only runs forward to make the masks), and during
the localizer's turn the adversary's optimizer does not step. That is the default here. Option
`loc_in_adv_turn=True` (not the authors') lets the loop also train the localizer on L_loc alone
during the adversary's turn; the loop then checks `eader.trains_localizer`:

        if eader.phase == "adversary" and eader.trains_localizer:
            logits, att = net(x, with_cam=True)
            loss = F.multilabel_soft_margin_loss(logits, y)
            opt.zero_grad(); loss.backward(); opt.step()
            stats = eader.adversary_step(x, y, att)   # detaches att: no gradient crosses over

Modes: EADER never calls .train()/.eval(). The authors keep both networks in train mode through
training, so the adversary's BatchNorm running statistics are also updated by its forward in the
localizer's turn (buffers, not parameters; no gradient from L_am reaches its parameters).

Several processes (torch.distributed, one shard of each global batch per rank): each rank erases its
own images, so the ranks hold different numbers of (image, class) pairs, possibly none. Every loss
that is a mean over pairs (L_am 'authors', L_reg, the adversary's BCE) is therefore weighted by
world * pairs_here / pairs_everywhere (one all-reduce of the counts): once the gradients are averaged
over the ranks (DDP for the localizer, sync_gradients below for the adversary) they are the gradients
of the mean over all pairs of the global batch, as one process computes it. The adversary is kept in
step by hand rather than by a DDP wrapper, with DDP's semantics: after its backward every rank
all-reduces (sums) its gradients, zeros where it had no pair, and divides by the world size; after
each adversary forward the ranks take rank 0's BatchNorm buffers (DDP's broadcast_buffers). A DDP
wrapper would need a forward and backward on every rank, which a rank without pairs does not have,
and it would see the frozen forward of the localizer's turn as a step. BatchNorm batch statistics stay
per rank, as with DDP (and PSA's DataParallel).
"""
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Optional

import torch

from .adversary import adversary_optimizer, build_adversary
from .losses import REG_RESOLUTIONS, adversary_loss, attention_mining_loss, regularisation_loss
from .masks import NORMS, erase_maps, erase_pairs, normalise_attention, pair_maps

PHASES = ("localizer", "adversary")


@dataclass
class EaderConfig:
    enabled: bool = False
    alpha: float = 0.05          # weight of L_am
    beta: float = 1e-5           # weight of L_reg
    omega: float = 100.0         # soft-mask sharpness
    psi: float = 0.5             # soft-mask threshold
    phase_steps: int = 200       # steps per localizer turn (and per adversary turn unless set below)
    am_form: str = "authors"     # 'authors': mean sigmoid score; 'paper': Eq. 6, sum of logits / C, per image
    adv_lr: float = 0.01         # PSA integration (docs/reference.md)
    adv_momentum: float = 0.9
    adv_weight_decay: float = 1e-4
    adv_width: float = 1.0       # ResNet-18 channel multiplier (<1 for CPU)
    adv_weights: Optional[str] = None  # local torchvision resnet18 ImageNet state dict
    adv_phase_steps: Optional[int] = None  # adversary turn length; None -> phase_steps (authors: 200/200)
    loc_in_adv_turn: bool = False  # not the authors': also train the localizer on L_loc in the adversary's turn
    att_norm: str = "max"        # attention scaled to max 1: 'max' (PSA's CAMs) or 'minmax' (the authors' Grad-CAM)
    reg_resolution: str = "full"  # L_reg on the maps at the image's size (authors) or 'attention' (their own size)
    autocast: bool = False       # run the hook (adversary, masks) under the localizer's autocast (bf16) too
    channels_last: bool = False  # feed the adversary NHWC: faster on the CPU, float32 gradients differ (see adversary_forward)
    num_classes: int = 20


@contextmanager
def frozen(module):
    """requires_grad off while the graph is built: that graph then has no edges into the module's
    parameters, so a later backward cannot accumulate gradients there."""
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


class EADER:
    def __init__(self, cfg: EaderConfig, adversary=None, adv_optimizer=None):
        self.cfg = cfg
        if cfg.am_form not in ("authors", "paper"):
            raise ValueError(f"am_form must be 'authors' or 'paper', got {cfg.am_form!r}")
        if cfg.att_norm not in NORMS:
            raise ValueError(f"att_norm must be one of {NORMS}, got {cfg.att_norm!r}")
        if cfg.reg_resolution not in REG_RESOLUTIONS:
            raise ValueError(f"reg_resolution must be one of {REG_RESOLUTIONS}, got {cfg.reg_resolution!r}")
        if cfg.phase_steps < 1 or (cfg.adv_phase_steps is not None and cfg.adv_phase_steps < 1):
            raise ValueError("phase_steps and adv_phase_steps must be >= 1")
        if cfg.enabled and adversary is None:
            if cfg.adv_weights is None:  # a silently random adversary is not the paper's (ImageNet) start
                raise ValueError("EaderConfig.adv_weights is unset: give the path of torchvision's ImageNet "
                                 "ResNet-18 state dict, adv_weights='random' for random initialisation on "
                                 "purpose, or pass an adversary of your own")
            adversary = build_adversary(cfg.num_classes, cfg.adv_width,
                                        None if cfg.adv_weights == "random" else cfg.adv_weights)
        if adversary is not None and adv_optimizer is None:
            adv_optimizer = adversary_optimizer(adversary, cfg.adv_lr, cfg.adv_momentum,
                                                cfg.adv_weight_decay)
        self.adversary = adversary
        self.adv_optimizer = adv_optimizer
        self.step = 0  # global steps taken (advance() calls), across epochs
        # context factory for the hook's forwards: the training loop sets its autocast here when
        # cfg.autocast (train_cam.train_step); float32 otherwise
        self.amp = nullcontext

    def to(self, device):
        """Move the adversary and its optimiser's state to `device` (the localizer's); returns self."""
        if self.adversary is not None:
            self.adversary.to(device)
        if self.adv_optimizer is not None:
            for state in self.adv_optimizer.state.values():
                for k, v in state.items():
                    if torch.is_tensor(v):
                        state[k] = v.to(device)
        return self

    def _check_inputs(self, x, y, att):
        """Shapes and class counts named with the fix, instead of a broadcasting error deep inside."""
        c = self.cfg.num_classes
        if x.dim() != 4 or y.dim() != 2 or att.dim() != 4:
            raise ValueError(f"EADER expects images (B,3,H,W), labels (B,C) and attention (B,C,h,w); got "
                             f"{tuple(x.shape)}, {tuple(y.shape)}, {tuple(att.shape)}")
        if not (x.shape[0] == y.shape[0] == att.shape[0]):
            raise ValueError(f"batch sizes differ: images {x.shape[0]}, labels {y.shape[0]}, attention {att.shape[0]}")
        if y.shape[1] != c or att.shape[1] != c:
            raise ValueError(f"EaderConfig.num_classes is {c}, but the labels have {y.shape[1]} classes and the "
                             f"attention {att.shape[1]}: set num_classes to your dataset's class count (no "
                             f"background channel) and give one attention map per class")

    # ---- schedule -------------------------------------------------------------------------
    @property
    def turn_lengths(self):
        a = self.cfg.adv_phase_steps or self.cfg.phase_steps
        return self.cfg.phase_steps, a

    @property
    def phase(self):
        """'localizer' or 'adversary' for the current step; always 'localizer' when disabled."""
        if not self.cfg.enabled:
            return "localizer"
        n_loc, n_adv = self.turn_lengths
        return "localizer" if self.step % (n_loc + n_adv) < n_loc else "adversary"

    @property
    def trains_localizer(self):
        return self.phase == "localizer" or self.cfg.loc_in_adv_turn

    def advance(self):
        self.step += 1

    # ---- the two turns --------------------------------------------------------------------
    def localizer_loss(self, x, y, att, loss_loc):
        """L_loc + alpha * L_am + beta * L_reg, and float stats for logging.

        att (B,C,h,w): the localizer's raw attention (ReLU'd CAM or Grad-CAM), still in its graph.
        The adversary is frozen while its forward is recorded, so backward passes through it (into
        the soft masks and the attention) without touching its parameters. alpha = 0 skips the
        adversary entirely; beta = 0 skips L_reg.
        """
        if self.phase != "localizer":
            raise RuntimeError("localizer_loss called during the adversary's turn")
        if self.cfg.enabled:
            self._check_inputs(x, y, att)
        cfg = self.cfg
        loss = loss_loc
        stats = {"loss_loc": float(loss_loc.detach())}
        if not cfg.enabled:
            return loss, stats
        full_reg = cfg.beta > 0 and cfg.reg_resolution == "full"
        if cfg.alpha > 0 or full_reg:
            # the K (image, class) maps at the image's size, normalised there: the masks and L_reg share them
            with self.amp():
                maps, img_idx, cls_idx = pair_maps(y, att.to(x.dtype), x.shape[-2:], cfg.att_norm)
        if cfg.alpha > 0:
            with self.amp():
                erased = erase_maps(x, maps, img_idx, cfg.omega, cfg.psi)
            stats["num_erased"] = int(cls_idx.numel())
            # 'authors' is a mean over pairs, 'paper' a sum over the (equal) per-rank batch
            share = pair_share(cls_idx.numel(), x.device) if cfg.am_form == "authors" else 1.0
            if cls_idx.numel():
                with frozen(self.adversary):
                    adv_logits = self.adversary_forward(erased)
                l_am = attention_mining_loss(adv_logits, cls_idx, cfg.am_form, cfg.num_classes, x.shape[0])
                loss = loss + cfg.alpha * share * l_am
                stats["l_am"] = float(l_am.detach())
                stats["adv_acc"] = erased_class_accuracy(adv_logits, cls_idx)
            sync_buffers(self.adversary)
        if cfg.beta > 0:
            if full_reg:  # the authors' train.py: the mean of the K normalised maps at the image's size
                l_reg = maps.float().mean() if maps.numel() else att.sum() * 0
            else:  # 'attention': at the map's own resolution, without K image-sized maps when alpha is 0; the
                # mean is close (a bilinear upsample keeps it up to borders), the max and the gradients are not
                l_reg = regularisation_loss(normalise_attention(att, norm=cfg.att_norm), y)
            loss = loss + cfg.beta * pair_share(int((y > 0.5).sum()), x.device) * l_reg
            stats["l_reg"] = float(l_reg.detach())
        stats["loss"] = float(loss.detach())
        return loss, stats

    def adversary_step(self, x, y, att):
        """One adversary update: BCE on the erased images against their full label vectors.

        att is detached, so nothing here can reach the localizer. Skips the step when no image has
        a positive label.
        """
        if self.phase != "adversary" or self.adversary is None:
            raise RuntimeError("adversary_step called outside the adversary's turn")
        self._check_inputs(x, y, att)
        with torch.no_grad(), self.amp():
            erased, img_idx, cls_idx = erase_pairs(x, y, att.detach(), self.cfg.omega, self.cfg.psi,
                                                   self.cfg.att_norm)
        n = int(cls_idx.numel())
        stats = {"num_erased": n}
        share, total = pair_share(n, x.device, with_total=True)
        if not total:  # no rank has a pair: every rank skips the step
            return stats
        self.adv_optimizer.zero_grad(set_to_none=True)
        if n:
            adv_logits = self.adversary_forward(erased)
            loss = adversary_loss(adv_logits, y[img_idx])
            (loss * share if share != 1.0 else loss).backward()
            stats["adv_loss"] = float(loss.detach())
            stats["adv_acc"] = erased_class_accuracy(adv_logits, cls_idx)
        sync_gradients(self.adversary)
        self.adv_optimizer.step()
        sync_buffers(self.adversary)
        return stats

    def adversary_forward(self, erased):
        """The adversary's float logits of the erased images (under self.amp). cfg.channels_last feeds it
        NHWC (the layout then carries through the network): on the CPU oneDNN's convolutions and pooling
        are faster there (docs/performance.md; not measured on a GPU). Not the default: NHWC BatchNorm sums
        in float, not double, and in float32 the early layers' updates then differ by ~2% from NCHW (which is
        within ~1e-5 of float64). Off, the adversary gets NCHW whatever layout the localizer's images come in
        (train-cam feeds NHWC)."""
        erased = erased.contiguous(memory_format=torch.channels_last if self.cfg.channels_last
                                   else torch.contiguous_format)
        with self.amp():
            return self.adversary(erased).float()

    # ---- checkpoints ----------------------------------------------------------------------
    def state_dict(self):
        return {
            "step": self.step,
            "turn_lengths": self.turn_lengths,  # informative; the phase is recomputed from `step`
            "adversary": None if self.adversary is None else self.adversary.state_dict(),
            "adv_optimizer": None if self.adv_optimizer is None else self.adv_optimizer.state_dict(),
        }

    def load_state_dict(self, sd):
        self.step = int(sd["step"])
        if self.adversary is not None and sd.get("adversary") is not None:
            self.adversary.load_state_dict(sd["adversary"])
        if self.adv_optimizer is not None and sd.get("adv_optimizer") is not None:
            self.adv_optimizer.load_state_dict(sd["adv_optimizer"])


# ---- several processes (see the module's docstring) ------------------------------------------------

def _world():
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def pair_share(count, device, with_total=False):
    """world * count / (count summed over the ranks): the weight that turns this rank's mean over its
    `count` items into its part of the mean over all ranks' items, once gradients are averaged over the
    ranks. 1.0 (and no communication) with one process; 0.0 when no rank has an item."""
    world = _world()
    if world == 1:
        return (1.0, count) if with_total else 1.0
    t = torch.tensor([float(count)], device=device)
    torch.distributed.all_reduce(t)
    total = int(t.item())
    share = world * count / total if total else 0.0
    return (share, total) if with_total else share


def sync_gradients(module):
    """Average the gradients of `module`'s trainable parameters over the ranks (one all-reduce of them
    flattened); a rank without a backward contributes zeros. No-op with one process."""
    world = _world()
    if world == 1:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def sync_buffers(module):
    """Every rank takes rank 0's buffers (BatchNorm running statistics), as DDP's broadcast_buffers. Into
    new tensors, not in place: in the localizer's turn this runs between the adversary's forward and the
    backward, and cuDNN's batch norm saves the running statistics for its backward, which an in-place
    write would break ("modified by an inplace operation", seen with two ranks on a GPU)."""
    if module is None or _world() == 1:
        return
    for owner in module.modules():
        for name, b in list(owner.named_buffers(recurse=False)):
            fresh = b.detach().clone()
            torch.distributed.broadcast(fresh, src=0)
            setattr(owner, name, fresh)


def erased_class_accuracy(adv_logits, cls_idx):
    """Fraction of erased images in which the adversary still finds the erased class (logit > 0)."""
    scores = adv_logits.detach().gather(1, cls_idx.view(-1, 1))
    return float((scores > 0).float().mean()) if scores.numel() else 0.0
