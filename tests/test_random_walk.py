"""Random walk: sparse neighbourhood propagation == PSA's dense matrix power; normalisation; labels."""
import numpy as np
import pytest
import torch

from psa_baseline.affinity import feature_affinities, pair_offsets
from psa_baseline.errors import InputError
from psa_baseline.random_walk import (dense_affinity_matrix, propagate_cams, random_walk_dense,
                                      random_walk_sparse, sparse_transition, transition_csr)


def _setup(h, w, psa_crop, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, 6, h, w, generator=g)
    aff = feature_affinities(feats, 5, psa_crop)[0]
    cams = torch.rand(3, h, w, generator=g)
    return feats, aff, cams


@pytest.mark.parametrize("psa_crop", [True, False])
@pytest.mark.parametrize("h,w", [(7, 11), (12, 10)])
@pytest.mark.parametrize("beta,logt", [(1, 2), (2, 5), (8, 8)])
def test_sparse_equals_dense(h, w, psa_crop, beta, logt):
    _, aff, cams = _setup(h, w, psa_crop)
    dense = dense_affinity_matrix(aff, h, w, 5, psa_crop)
    ref = random_walk_dense(dense.double(), cams.double(), beta, logt)
    sp = random_walk_sparse(aff.double(), cams.double(), beta, 2 ** logt, 5, psa_crop)
    assert (ref - sp).abs().max() < 1e-10
    # float32 as used in practice: both paths round differently; t=256 accumulates ~3e-5
    sp32 = random_walk_sparse(aff, cams, beta, 2 ** logt, 5, psa_crop)
    d32 = random_walk_dense(dense, cams, beta, logt)
    tol = 1e-5 if logt <= 5 else 1e-4
    assert (ref - sp32).abs().max() < tol and (d32 - sp32).abs().max() < tol


def test_dense_matrix_matches_brute_force():
    h, w = 6, 11
    feats, aff, _ = _setup(h, w, psa_crop=False)
    mat = dense_affinity_matrix(aff, h, w, 5, psa_crop=False)
    f = feats[0].reshape(6, -1)
    ys, xs = np.divmod(np.arange(h * w), w)
    for i in range(h * w):
        for j in range(h * w):
            d2 = (ys[i] - ys[j]) ** 2 + (xs[i] - xs[j]) ** 2
            exp = 1.0 if i == j else (torch.exp(-(f[:, i] - f[:, j]).abs().mean()).item() if d2 < 25 else 0)
            assert mat[i, j].item() == pytest.approx(exp, abs=1e-6)


def test_psa_crop_pairs_subset_of_full():
    h, w = 9, 12
    _, aff_c, _ = _setup(h, w, True)
    _, aff_f, _ = _setup(h, w, False)
    mc = dense_affinity_matrix(aff_c, h, w, 5, True)
    mf = dense_affinity_matrix(aff_f, h, w, 5, False)
    assert torch.equal(mc, mc.T) and (mc.diagonal() == 1).all()
    nz = mc > 0
    assert torch.allclose(mc[nz], mf[nz]) and nz.sum() < (mf > 0).sum()
    # PSA quirk: the bottom-left corner pixel has no pair at all with the crop
    corner = (h - 1) * w
    assert mc[corner].sum() == 1


@pytest.mark.parametrize("psa_crop", [True, False])
def test_normalisation(psa_crop):
    h, w = 8, 13
    _, aff, cams = _setup(h, w, psa_crop)
    a = dense_affinity_matrix(aff, h, w, 5, psa_crop) ** 8
    trans = a / a.sum(0, keepdim=True)
    assert torch.allclose(trans.sum(0), torch.ones(h * w), atol=1e-6)  # column-stochastic (PSA)
    nbr, wgt = sparse_transition(aff, h, w, 5, 8, psa_crop)
    assert nbr.shape == (2 * len(pair_offsets(5)) + 1, h * w)
    assert torch.allclose(wgt.sum(0), torch.ones(h * w), atol=1e-6)
    m = transition_csr(nbr, wgt)
    assert torch.allclose(m.to_dense(), trans.T, atol=1e-6)  # sparse rows == dense columns
    # a constant map is a fixed point of the walk
    ones = torch.ones(2, h, w)
    assert torch.allclose(random_walk_sparse(aff, ones, 8, 64, 5, psa_crop), ones, atol=1e-5)


def test_propagate_cams_fills_object_region():
    H, W = 64, 120  # grid 8 x 15
    h, w = 8, 15
    feats = torch.zeros(1, 4, h, w)
    feats[:, :, :, 8:] = 5.0  # two regions: affinity exp(-5) ~ 0.007 across, 1 within
    aff = feature_affinities(feats)[0]
    rng = np.random.default_rng(0)
    cam = np.zeros((H, W), np.float32)
    left = np.zeros((H, W), bool)
    left[:, :64] = True
    cam[left & (rng.random((H, W)) < 0.7)] = 0.6  # holey CAM on the left object
    aff_full = feature_affinities(feats, psa_crop=False)[0]
    label = propagate_cams({2: cam}, aff_full, (H, W, 3), psa_crop=False)
    assert label.shape == (H, W) and label.dtype == np.uint8
    assert set(np.unique(label)) <= {0, 3}
    assert (label[:, :56] == 3).all() and (label[:, 72:] == 0).all()
    dense = propagate_cams({2: cam}, aff_full, (H, W, 3), psa_crop=False, dense=True)
    assert (dense == label).mean() > 0.999
    # PSA's pair crop leaves grid cells such as row 0, cols 0..3 without any pair: they keep their
    # own pooled CAM; away from those cells the result is the same
    label_crop = propagate_cams({2: cam}, aff, (H, W, 3))
    assert (label_crop[12:36, :56] == 3).all() and (label_crop[:, 72:] == 0).all()
    with pytest.raises(InputError):
        propagate_cams({2: cam[:-1]}, aff, (H, W, 3))
    with pytest.raises(InputError):
        propagate_cams({2: cam}, aff[:, :-1], (H, W, 3))
    with pytest.raises(InputError):
        propagate_cams({2: cam}, aff, (H, W, 3), dense=True, t=100)


def _demo_walk_inputs(seed):
    H, W = 61, 90
    g = torch.Generator().manual_seed(seed)
    aff = feature_affinities(torch.randn(1, 6, -(-H // 8), -(-W // 8), generator=g))[0]
    rng = np.random.default_rng(seed)
    cams = {c: rng.random((H, W)).astype(np.float32) for c in (4, 11)}
    return cams, aff, (H, W, 3)


def test_walk_runs_where_the_affinities_are_and_returns_a_cpu_label():
    cams, aff, shape = _demo_walk_inputs(0)
    grid = torch.rand(3, 8, 12)
    assert random_walk_sparse(aff, grid, t=4).device == aff.device
    label = propagate_cams(cams, aff, shape)
    assert isinstance(label, np.ndarray) and label.shape == shape[:2]
    assert set(np.unique(label)) <= {0, 5, 12}  # background and the present classes only


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (the walk on the device)")
def test_walk_on_the_gpu_gives_the_labels_of_the_cpu_walk():
    for seed in range(5):
        cams, aff, shape = _demo_walk_inputs(seed)
        assert np.array_equal(propagate_cams(cams, aff.cuda(), shape), propagate_cams(cams, aff, shape)), seed
