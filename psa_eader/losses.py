"""EADER's three losses. Pairs k = (image, present class), as returned by masks.erase_pairs."""
import torch
import torch.nn.functional as F

AM_FORMS = ("authors", "paper")
REG_RESOLUTIONS = ("full", "attention")  # L_reg at the image's size (the authors') or at the map's own


def attention_mining_loss(adv_logits, cls_idx, form="authors", num_classes=20, batch_size=None):
    """The adversary's score for the erased class, which the localizer minimises.

    adv_logits (K,C): the adversary on the K erased images; cls_idx (K,): the class erased in each.
    - 'authors' (their training_utils.compute_am_loss): mean over pairs of sigmoid(logit). Bounded,
      independent of the batch size.
    - 'paper': Eq. 6, (1/C) * sum over an image's erased classes of the raw logit, C = num_classes,
      averaged over the batch: sum over all pairs / (C * batch_size). batch_size (the number of
      images, not of pairs) is required here. Unbounded; kept for comparison.
    An empty set of pairs gives 0.
    """
    if form not in AM_FORMS:
        raise ValueError(f"am_form must be one of {AM_FORMS}, got {form!r}")
    if form == "paper" and not (batch_size and batch_size > 0):
        raise ValueError("am_form 'paper' is per image: give batch_size (the number of images)")
    scores = adv_logits.gather(1, cls_idx.view(-1, 1)).squeeze(1)
    if scores.numel() == 0:
        return adv_logits.sum() * 0
    if form == "authors":
        return torch.sigmoid(scores).mean()
    return scores.sum() / (num_classes * batch_size)


def regularisation_loss(att, labels):
    """Mean attention over present classes: 1/(W*H*C) * sum over present (image, class) of sum of
    pixels, where C = number of present (image, class) pairs in the batch (the authors' code takes
    the mean of the stacked per-pair maps). att (B,C,h,w) should be normalised (max 1) attention.
    """
    present = labels > 0.5
    if not present.any():
        return att.sum() * 0
    return att[present].mean()


def adversary_loss(adv_logits, targets):
    """BCE of the adversary on erased images against each image's full label vector (the erased
    class stays a positive target: the adversary must find it in what is left)."""
    return F.binary_cross_entropy_with_logits(adv_logits, targets.to(adv_logits.dtype))
