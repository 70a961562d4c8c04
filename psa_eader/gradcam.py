"""Grad-CAM (Selvaraju et al.) for several classes per image, differentiable for training."""
import torch
import torch.nn.functional as F


def grad_cam(features, logits, labels, create_graph=True):
    """Grad-CAM maps (B,C,h,w) for the classes with labels[b, c] = 1 (other maps are 0).

    features (B,K,h,w) must be in the graph of logits (B,C). For each (b, c):
    w_k = mean over pixels of d logit[b,c] / d F[b,k];  map = ReLU(sum_k w_k F[b,k]).

    create_graph=True keeps the weights in the graph (second-order), so the map is differentiable in
    both F and the weights; with False the weights are constants but the map still depends on F,
    which is what the authors' hook-based code does. Either way the localizer's graph is kept.

    Assumes image b's logits depend only on image b's features between `features` and `logits`
    (true for GAP + fc heads); that lets one backward pass serve one class of every image: the
    r-th present class of each image goes in pass r, so passes = max classes per image.
    """
    if not features.requires_grad:
        raise ValueError("grad_cam: features do not require grad (run the forward with grad enabled)")
    present = labels > 0.5
    out = features.new_zeros(logits.shape[0], logits.shape[1], *features.shape[-2:])
    rank = present.long().cumsum(1) * present  # r-th present class of an image has rank r (1-based)
    for r in range(1, int(rank.max().item()) + 1 if present.any() else 1):
        select = (rank == r).to(logits.dtype)
        grads, = torch.autograd.grad(logits, features, grad_outputs=select, retain_graph=True,
                                     create_graph=create_graph)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        maps = F.relu((weights * features).sum(1))  # (B,h,w)
        b, c = select.nonzero(as_tuple=True)
        out = out.index_put((b, c), maps[b])
    return out
