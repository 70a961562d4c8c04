"""AffinityNet: pair structure, affinity labels, seg labels from la/ha CRF dicts, loss, shapes."""
import math

import numpy as np
import pytest
import torch

from psa_baseline.affinity import (AffinityLabels, AffinityNet, affinity_loss, feature_affinities,
                                   make_seg_label, pair_indices, pair_offsets)
from psa_baseline.errors import InputError
from psa_baseline.resnet38 import Res38Spec

TINY = Res38Spec(width=0.125, blocks=(1, 1, 1, 1), frozen_bn=False, frozen_stem=False)


def test_offsets_are_psa_half_disc():
    offs = pair_offsets(5)
    assert len(offs) == 34 and len(set(offs)) == 34
    assert all(dy * dy + dx * dx < 25 for dy, dx in offs)
    assert not any((-dy, -dx) in offs for dy, dx in offs)  # each unordered pair once
    assert pair_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]


def test_pair_indices_psa_crop_and_full():
    h, w = 10, 12
    to_idx, valid = pair_indices(h, w, 5, True)
    # PSA: "from" pixels only in rows [0, h-4) x cols [4, w-4); all their targets lie in the image
    from_ok = valid.any(0).reshape(h, w).numpy()
    exp = np.zeros((h, w), bool)
    exp[:h - 4, 4:w - 4] = True
    assert (from_ok == exp).all() and valid.sum() == 34 * exp.sum()
    to_idx, valid = pair_indices(h, w, 5, False)
    n_pairs = sum(max(0, h - abs(dy)) * max(0, w - abs(dx)) for dy, dx in pair_offsets(5))
    assert valid.sum() == n_pairs
    p = pair_offsets(5).index((2, -3))
    assert valid[p, 1 * w + 5] and to_idx[p, 1 * w + 5] == 3 * w + 2
    assert not valid[p, 1 * w + 2]  # target column -1 is outside


def test_affinity_labels_hand_map():
    lab = np.array([[0, 0, 1],
                    [255, 1, 2]])
    # radius 2 offsets: p0 (0,1), p1 (1,-1), p2 (1,0), p3 (1,1); pixel index = y*3 + x
    bg, fg, neg = AffinityLabels(radius=2, psa_crop=False)(lab)
    assert bg.shape == (4, 6)
    assert bg.nonzero().tolist() == [[0, 0]]               # (0,0)-(0,1): both background
    assert fg.nonzero().tolist() == [[1, 2]]               # (0,2)-(1,1): same class 1
    assert sorted(neg.nonzero().tolist()) == [[0, 1], [0, 4], [2, 1], [2, 2], [3, 0], [3, 1]]
    # pairs touching 255 ((0,1)-(1,0), (0,0)-(1,0), (1,0)-(1,1)) and out-of-image pairs are in no class
    assert (bg + fg + neg).max() == 1 and (bg + fg + neg).sum() == 8
    # PSA's crop: only pixel (0,1) is a "from" pixel at radius 2 on a 2x3 grid
    bg, fg, neg = AffinityLabels(radius=2, psa_crop=True)(lab)
    assert bg.sum() == 0 and fg.sum() == 0
    assert sorted(neg.nonzero().tolist()) == [[0, 1], [2, 1], [3, 1]]


def test_affinity_labels_ignore_region_and_counts():
    lab = np.full((12, 14), 255)
    lab[2:10, 3:11] = 0
    lab[4:8, 5:9] = 7
    bg, fg, neg = AffinityLabels(radius=5)(torch.from_numpy(lab))
    to_idx, valid = pair_indices(12, 14, 5, True)
    lf = torch.from_numpy(lab).reshape(1, -1).expand_as(to_idx)
    lt = torch.from_numpy(lab).reshape(-1)[to_idx]
    touched = (bg + fg + neg) > 0
    assert not (touched & ((lf == 255) | (lt == 255) | ~valid)).any()
    assert ((lf[bg > 0] == 0) & (lt[bg > 0] == 0)).all()
    assert ((lf[fg > 0] == 7) & (lt[fg > 0] == 7)).all()
    assert (lf[neg > 0] != lt[neg > 0]).all()
    assert bg.sum() > 0 and fg.sum() > 0 and neg.sum() > 0
    with pytest.raises(InputError):
        AffinityLabels()(np.zeros((2, 3, 4)))


def _block(values, s=8):
    return np.kron(np.asarray(values, np.float32), np.ones((s, s), np.float32))


def test_make_seg_label_la_ha_rules():
    # 1 x 4 grid of 8x8 blocks, classes: background key 0 and class 2 (key 3)
    la = {0: _block([[0.1, 0.9, 0.9, 0.0]]), 3: _block([[0.8, 0.2, 0.1, 0.0]])}
    ha = {0: _block([[0.05, 0.2, 0.7, 0.0]]), 3: _block([[0.9, 0.6, 0.2, 0.0]])}
    lab = make_seg_label(la, ha)
    # la fg -> class id; la bg but ha fg -> ignore; ha bg -> bg; no score (crop padding) -> ignore
    assert lab.dtype == np.uint8 and lab.tolist() == [[3, 255, 0, 255]]
    # ha background wins even where la says foreground (PSA applies the ha rule last)
    la2 = {0: _block([[0.1]]), 3: _block([[0.8]])}
    ha2 = {0: _block([[0.9]]), 3: _block([[0.1]])}
    assert make_seg_label(la2, ha2).tolist() == [[0]]


def test_make_seg_label_pooling_and_shape():
    # block mean of the scores (PSA AvgPool2d(8)), then argmax: 6 of 8 columns foreground -> foreground
    fg = np.zeros((8, 16), np.float32)
    fg[:, 2:8] = 1.0
    la = {0: 1 - fg * 0.9, 7: fg}
    lab = make_seg_label(la, la)
    assert lab.tolist() == [[7, 0]]
    # 10 x 20 maps zero-padded to a 2 x 3 grid; explicit larger grid pads with "no score"
    la = {0: np.full((10, 20), 0.9, np.float32), 1: np.full((10, 20), 0.1, np.float32)}
    assert make_seg_label(la, la).shape == (2, 3)
    lab = make_seg_label(la, la, shape=(3, 4))
    assert lab[:2, :3].tolist() == [[0] * 3] * 2 and (lab[2] == 255).all() and (lab[:, 3] == 255).all()
    with pytest.raises(InputError):
        make_seg_label(la, la, shape=(1, 1))
    with pytest.raises(InputError):
        make_seg_label(la, {0: la[0], 2: la[1]})


def test_affinity_loss_hand_values():
    aff = torch.tensor([[0.5, 0.9, 0.2, 0.7]])
    bg = torch.tensor([[1., 0, 0, 0]])
    fg = torch.tensor([[0, 1., 0, 0]])
    neg = torch.tensor([[0, 0, 1., 1.]])
    total, lb, lf, ln = affinity_loss(aff, bg, fg, neg)
    e = 1e-5
    exp_bg = -math.log(0.5 + e) / (1 + e)
    exp_fg = -math.log(0.9 + e) / (1 + e)
    exp_neg = -(math.log(1 + e - 0.2) + math.log(1 + e - 0.7)) / (2 + e)
    assert lb.item() == pytest.approx(exp_bg, rel=1e-5)
    assert lf.item() == pytest.approx(exp_fg, rel=1e-5)
    assert ln.item() == pytest.approx(exp_neg, rel=1e-5)
    assert total.item() == pytest.approx(exp_bg / 4 + exp_fg / 4 + exp_neg / 2, rel=1e-5)
    # count normalisation: repeating the batch leaves every term unchanged
    rep = [x.repeat(3, 1) for x in (aff, bg, fg, neg)]
    assert affinity_loss(*rep)[0].item() == pytest.approx(total.item(), rel=1e-5)
    # a class without pairs contributes 0, not NaN
    t0, lb0, _, _ = affinity_loss(aff, torch.zeros_like(bg), fg, neg)
    assert lb0.item() == 0 and torch.isfinite(t0)


def test_affinitynet_shapes_groups_and_psa_keys():
    torch.manual_seed(0)
    net = AffinityNet(TINY)
    x = torch.randn(1, 3, 64, 72)
    feats = net(x)
    assert feats.shape == (1, 448, 8, 9)
    aff = net.affinities(feats)
    _, valid = pair_indices(8, 9, 5, True)
    assert aff.shape == (1, 34, 72)
    assert (aff[0][~valid] == 0).all() and (aff[0][valid] > 0).all() and (aff <= 1).all()
    aff.sum().backward()
    assert net.f9.weight.grad is not None and net.f8_3.weight.grad is not None
    groups = net.param_groups()
    assert {id(p) for p in groups[2]} == {id(m.weight) for m in net.new_layers} and not groups[3]
    # PSA's res38_aff.pth has flat backbone keys next to f8_3 / f8_4 / f8_5 / f9
    flat = {k.replace("backbone.", "", 1): v for k, v in net.state_dict().items()}
    assert "f8_5.weight" in flat and "bn7.running_mean" in flat
    net2 = AffinityNet(TINY)
    net2.load_psa_state_dict(flat)
    assert torch.equal(net2.f9.weight, net.f9.weight) and torch.equal(net2.backbone.conv1a.weight,
                                                                       net.backbone.conv1a.weight)


def test_feature_affinity_values():
    f = torch.zeros(1, 2, 3, 9)
    f[0, 0, 1, 5] = 2.0  # differs from every neighbour by |2| / 2 channels = mean 1
    aff = feature_affinities(f, radius=2, psa_crop=False)[0]
    to_idx, valid = pair_indices(3, 9, 2, False)
    touched = valid & ((to_idx == 14) | (torch.arange(27) == 14))
    assert torch.allclose(aff[touched], torch.full_like(aff[touched], math.exp(-1)))
    assert (aff[valid & ~touched] == 1).all()
