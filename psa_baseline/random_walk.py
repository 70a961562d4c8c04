"""Random walk of CAMs over AffinityNet affinities (PSA, infer_aff.py), dense and sparse.

PSA's operator: A = affinity matrix (pairs within the radius, symmetric, diagonal 1, 0 elsewhere),
A = A ** beta, T = A / A.sum(0) (column-normalised), T <- T @ T logt times (T^(2^logt)), and
cams_rw = cams_vec (C x N) @ T. Because A is symmetric, one step of `v @ T` is, for each pixel j,
the A^beta-weighted mean of v over j's neighbours (itself included):
    v'_j = sum_i A_ij^beta v_i / sum_i A_ij^beta.
The sparse path applies that neighbourhood mean t = 2^logt times: O(t * N * K) with K = 2P + 1
neighbours instead of the dense O(logt * N^3) time and O(N^2) memory.

Every step runs on the device of the affinities (a GPU when AffinityNet ran there: the operator, the
t SpMMs over the present classes at once, the upsampling and the argmax), and only the label comes
back to the CPU; on the CPU the arithmetic is what it always was.
"""
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .affinity import pair_indices
from .errors import InputError


def _aff_pn(aff, h, w, radius, psa_crop):
    aff = torch.as_tensor(aff)
    if aff.ndim == 3 and aff.shape[0] == 1:
        aff = aff[0]
    to_idx, valid = pair_indices(h, w, radius, psa_crop)
    if tuple(aff.shape) != tuple(to_idx.shape):
        raise InputError(f"neighbour affinities have shape {tuple(aff.shape)}, expected (P, N) = "
                         f"{tuple(to_idx.shape)} for a {h} x {w} grid at radius {radius}; compute them "
                         "with AffinityNet.affinities on the padded image of this CAM")
    aff = aff.detach()  # stays on its device
    to_idx, valid = to_idx.to(aff.device), valid.to(aff.device)
    return (aff if aff.is_floating_point() else aff.float()), to_idx, valid


def dense_affinity_matrix(aff, h, w, radius=5, psa_crop=True):
    """N x N matrix as PSA's `forward(to_dense=True)`: pair affinities both ways, diagonal 1, else 0."""
    aff, to_idx, valid = _aff_pn(aff, h, w, radius, psa_crop)
    n = h * w
    frm = torch.arange(n, device=aff.device).expand_as(to_idx)
    mat = torch.zeros(n, n, dtype=aff.dtype, device=aff.device)
    mat[frm[valid], to_idx[valid]] = aff[valid]
    mat[to_idx[valid], frm[valid]] = aff[valid]
    mat.diagonal().fill_(1.0)
    return mat


def random_walk_dense(aff_dense, cams, beta=8, logt=8):
    """PSA's dense walk: cams (C, h, w) @ (column-normalised aff^beta)^(2^logt) -> (C, h, w)."""
    a = aff_dense ** beta
    trans = a / a.sum(0, keepdim=True)
    for _ in range(logt):
        trans = trans @ trans
    c = cams.shape[0]
    return (cams.reshape(c, -1).to(trans.device, trans.dtype) @ trans).reshape(cams.shape)


def sparse_transition(aff, h, w, radius=5, beta=8, psa_crop=True):
    """Neighbour lists of the normalised operator: (nbr, weight), both (K, N), K = 2P + 1.

    Slot 0 is the pixel itself (affinity 1), slots 1..P the forward pairs (i -> i + offset),
    slots P+1..2P the same pairs seen from the other end. weight[:, j] sums to 1 for every j: it is
    column j of PSA's T.
    """
    aff, to_idx, valid = _aff_pn(aff, h, w, radius, psa_crop)
    p, n = to_idx.shape
    dev = aff.device
    frm = torch.arange(n, device=dev).expand(p, n)
    a = torch.where(valid, aff ** beta, torch.zeros((), dtype=aff.dtype, device=dev))
    # backward slots: for pair (i -> j = to[p, i]) store neighbour i and weight a[p, i] at pixel j
    rows = torch.arange(p, device=dev).unsqueeze(1).expand(p, n)
    back_nbr = frm.clone()
    back_w = torch.zeros(p, n, dtype=aff.dtype, device=dev)
    back_nbr[rows[valid], to_idx[valid]] = frm[valid]
    back_w[rows[valid], to_idx[valid]] = a[valid]
    nbr = torch.cat([torch.arange(n, device=dev).unsqueeze(0), to_idx, back_nbr])
    wgt = torch.cat([torch.ones(1, n, dtype=aff.dtype, device=dev), a, back_w])
    return nbr, wgt / wgt.sum(0, keepdim=True)


def transition_csr(nbr, wgt):
    """The K-neighbour lists as a sparse CSR matrix M (N x N) with v'^T = M @ v^T (M = T^T)."""
    k, n = nbr.shape
    keep = wgt > 0  # drop empty slots (invalid pairs); COO coalesce sorts each row's columns
    rows = torch.arange(n, device=nbr.device).expand(k, n)
    # torch flags CSR as beta (SpMM on CSR is the fast CPU path), and torch 2.11 on CUDA warned at every
    # image that the coalesce's invariant checks were off (the indices are checked at construction)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        coo = torch.sparse_coo_tensor(torch.stack([rows[keep], nbr[keep]]), wgt[keep], (n, n),
                                      check_invariants=True).coalesce()
        return coo.to_sparse_csr()


def random_walk_sparse(aff, cams, beta=8, t=256, radius=5, psa_crop=True):
    """Same operator as `random_walk_dense` (t = 2^logt), applied t times as a sparse mat-vec.

    aff: (P, N) or (1, P, N) neighbour affinities from `AffinityNet.affinities`; cams (C, h, w), moved
    to aff's device; the result is there too.
    Each step is the K-neighbour weighted sum of `sparse_transition`, done by a CSR SpMM (a plain
    gather-and-sum over (C, K, N) gives the same numbers but is ~20x slower on CPU).
    Each SpMM is small, so one intra-op thread can be the fastest on a busy CPU (docs/performance.md); the
    caller decides (torch.set_num_threads).
    """
    c, h, w = cams.shape
    m = transition_csr(*sparse_transition(aff, h, w, radius, beta, psa_crop))
    vt = cams.reshape(c, -1).to(m.device, m.dtype).T.contiguous()
    for _ in range(t):
        vt = m @ vt
    return vt.T.reshape(c, h, w)


def propagate_cams(cam_dict, aff, image_shape, alpha_bg=16, beta=8, t=256, radius=5, psa_crop=True,
                   dense=False, name="image"):
    """PSA's infer_aff: CAM dict {class c: HxW in [0,1]} + neighbour affinities -> uint8 label (H, W).

    The image is padded to a multiple of 8 (zeros), giving the grid h = ceil(H/8), w = ceil(W/8) on
    which `aff` must have been computed. Background (1 - max_c cam) ** alpha_bg at full size,
    zero-padded, 8x8 average-pooled, walked, bilinearly upsampled to the padded size, argmax,
    cropped; channel indices are mapped back to class ids (0 bg, c + 1).
    """
    H, W = image_shape[:2]
    h, w = -(-H // 8), -(-W // 8)
    keys = sorted(cam_dict)
    cams = np.zeros((len(keys) + 1, h * 8, w * 8), np.float32)
    for i, k in enumerate(keys):
        v = np.asarray(cam_dict[k], dtype=np.float32)
        if v.shape != (H, W) or not np.isfinite(v).all():
            raise InputError(f"{name}: CAM of class {k} is {v.shape} (finite: {np.isfinite(v).all()}) "
                             f"but the image is {H} x {W}; regenerate the CAMs for this image")
        cams[i + 1, :H, :W] = v
    cams[0, :H, :W] = (1 - cams[1:, :H, :W].max(0, initial=0)) ** alpha_bg
    grid = F.avg_pool2d(torch.from_numpy(cams)[None], 8, 8)[0]
    if dense:
        if t < 1 or t & (t - 1):
            raise InputError(f"dense random walk squares the matrix, so t must be a power of 2, got {t}")
        rw = random_walk_dense(dense_affinity_matrix(aff, h, w, radius, psa_crop), grid, beta,
                               t.bit_length() - 1)
    else:
        rw = random_walk_sparse(aff, grid, beta, t, radius, psa_crop)
    up = F.interpolate(rw[None], size=(h * 8, w * 8), mode="bilinear", align_corners=False)[0]
    pred = up.argmax(0)[:H, :W].cpu().numpy()
    ids = np.asarray([0] + [int(k) + 1 for k in keys], np.uint8)
    return ids[pred]
