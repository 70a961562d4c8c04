"""EADER hook: tiny networks, tiny images (CPU)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from psa_baseline.cam_net import CAMNet
from psa_baseline.errors import InputError
from psa_baseline.resnet38 import Res38Spec
from psa_eader.adversary import adversary_optimizer, build_adversary
from psa_eader.gradcam import grad_cam
from psa_eader.hook import EADER, EaderConfig
from psa_eader.losses import adversary_loss, attention_mining_loss, regularisation_loss
from psa_eader.masks import EPS, erase_pairs, normalise_attention, pair_masks, soft_mask
from psa_eader.standalone import StandaloneLocalizer, segment_from_attention

C = 20


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops: one thread avoids oversubscription slowdowns on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_localizer():
    return CAMNet(Res38Spec(width=0.125, blocks=(1, 1, 1, 1), frozen_bn=False, frozen_stem=False))


def batch(labels=((0, 2), (1,))):
    torch.manual_seed(0)
    x = torch.randn(len(labels), 3, 32, 32)
    y = torch.zeros(len(labels), C)
    for i, cs in enumerate(labels):
        y[i, list(cs)] = 1
    return x, y


def make(phase_steps=3, **kw):
    torch.manual_seed(1)
    cfg = EaderConfig(enabled=True, phase_steps=phase_steps, adv_width=0.125, **kw)
    adv = build_adversary(width=0.125)
    return EADER(cfg, adv, adversary_optimizer(adv))


def snapshot(m):
    return {k: v.detach().clone() for k, v in m.named_parameters()}


def moved(m, snap):
    return [k for k, v in m.named_parameters() if not torch.equal(v, snap[k])]


def test_adversary_frozen_in_localizer_turn():
    net, eader = tiny_localizer(), make()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = batch()
    adv0, net0 = snapshot(eader.adversary), snapshot(net)
    assert eader.phase == "localizer"
    logits, att = net(x, with_cam=True)
    loss, stats = eader.localizer_loss(x, y, att, F.multilabel_soft_margin_loss(logits, y))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in eader.adversary.parameters())
    assert all(p.requires_grad for p in eader.adversary.parameters())  # restored after the forward
    assert moved(eader.adversary, adv0) == []
    assert moved(net, net0)
    assert {"loss_loc", "l_am", "l_reg", "adv_acc", "num_erased", "loss"} <= stats.keys()
    assert stats["num_erased"] == 3


def test_localizer_untouched_in_adversary_turn():
    net, eader = tiny_localizer(), make()
    x, y = batch()
    for _ in range(3):
        eader.advance()
    assert eader.phase == "adversary"
    net0, adv0 = snapshot(net), snapshot(eader.adversary)
    with torch.no_grad():
        att = net.forward_cam(x)
    stats = eader.adversary_step(x, y, att)
    assert moved(net, net0) == [] and all(p.grad is None for p in net.parameters())
    assert moved(eader.adversary, adv0)
    assert stats["num_erased"] == 3 and 0 <= stats["adv_acc"] <= 1 and stats["adv_loss"] > 0
    # even with an attention that is still in the localizer's graph, nothing reaches the localizer
    _, att = net(x, with_cam=True)
    eader.adversary_step(x, y, att)
    assert all(p.grad is None for p in net.parameters())


def test_wrong_turn_is_refused():
    eader = make()
    x, y = batch()
    with pytest.raises(RuntimeError):
        eader.adversary_step(x, y, torch.rand(2, C, 4, 4))
    for _ in range(3):
        eader.advance()
    with pytest.raises(RuntimeError):
        eader.localizer_loss(x, y, torch.rand(2, C, 4, 4), torch.tensor(0.0))


def test_gradient_reaches_localizer_through_soft_mask():
    x, y = batch()
    eader = make(omega=10.0, beta=0.0)  # softer mask: more pixels carry a gradient
    att = torch.rand(2, C, 4, 4, requires_grad=True)
    loss, stats = eader.localizer_loss(x, y, att, torch.tensor(0.0))
    loss.backward()
    assert att.grad.abs().sum() > 0
    assert att.grad[y == 0].abs().sum() == 0  # absent classes are never erased

    net = tiny_localizer()
    logits, cam = net(x, with_cam=True)
    loss, _ = eader.localizer_loss(x, y, cam, 0 * logits.sum())  # L_am only
    loss.backward()
    assert sum(p.grad.abs().sum() for p in net.parameters() if p.grad is not None) > 0

    # alpha = 0 (and beta = 0): the adversary path is cut, the loss is L_loc itself
    eader0 = make(alpha=0.0, beta=0.0)
    att = torch.rand(2, C, 4, 4, requires_grad=True)
    loss_loc = (att * 0).sum()
    loss, stats = eader0.localizer_loss(x, y, att, loss_loc)
    assert loss is loss_loc and "l_am" not in stats
    loss.backward()
    assert att.grad.abs().sum() == 0


def test_adversary_batch_is_number_of_positive_labels():
    x, y = batch(((0, 2), (1,), (3, 4, 5)))
    erased, img_idx, cls_idx = erase_pairs(x, y, torch.rand(3, C, 4, 4))
    assert erased.shape == (6, 3, 32, 32)
    assert img_idx.tolist() == [0, 0, 1, 2, 2, 2] and cls_idx.tolist() == [0, 2, 1, 3, 4, 5]
    eader = make()
    seen = []
    eader.adversary.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    eader.localizer_loss(x, y, torch.rand(3, C, 4, 4), torch.tensor(0.0))
    for _ in range(3):
        eader.advance()
    eader.adversary_step(x, y, torch.rand(3, C, 4, 4))
    assert seen == [6, 6]


def test_erasing_hand_made():
    x = torch.ones(1, 3, 4, 4)
    y = torch.zeros(1, C)
    y[0, 5] = 1
    att = torch.zeros(1, C, 4, 4)
    att[0, 5, :2] = 3.0  # top half: normalised to ~1 -> erased to ~0 (mean colour)
    erased, _, _ = erase_pairs(x, y, att)
    assert erased[0, :, :2].abs().max() < 1e-3
    assert torch.allclose(erased[0, :, 2:], torch.ones(3, 2, 4), atol=1e-3)


def test_schedule_alternates_and_survives_round_trip():
    eader = make(phase_steps=3)
    seq = ""
    for _ in range(12):
        seq += eader.phase[0].upper()
        eader.advance()
    assert seq == "LLLAAALLLAAA"

    eader = make(phase_steps=3)
    for _ in range(4):  # mid adversary turn
        eader.advance()
    x, y = batch()
    eader.adversary_step(x, y, torch.rand(2, C, 4, 4))
    sd = eader.state_dict()
    fresh = make(phase_steps=3)
    fresh.load_state_dict(sd)
    seq = ""
    for _ in range(6):
        seq += fresh.phase[0].upper()
        fresh.advance()
    assert seq == "AALLLA"
    for a, b in zip(fresh.adversary.state_dict().values(), eader.adversary.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh.adv_optimizer.state_dict()["state"].keys() == eader.adv_optimizer.state_dict()["state"].keys()

    uneven = make(phase_steps=2, adv_phase_steps=1)
    seq = ""
    for _ in range(6):
        seq += uneven.phase[0].upper()
        uneven.advance()
    assert seq == "LLALLA"

    off = EADER(EaderConfig(enabled=False))
    for _ in range(500):
        assert off.phase == "localizer"
        off.advance()
    loss_loc = torch.tensor(1.5)
    assert off.localizer_loss(None, None, None, loss_loc)[0] is loss_loc


def test_losses_hand_computed():
    logits = torch.zeros(3, C)
    logits[0, 4] = 0.0                # sigmoid 0.5
    logits[1, 7] = math.log(3.0)      # sigmoid 0.75
    logits[2, 4] = -math.log(3.0)     # sigmoid 0.25
    logits[2, 9] = 5.0                # not the erased class: ignored
    cls_idx = torch.tensor([4, 7, 4])
    assert attention_mining_loss(logits, cls_idx, "authors").item() == pytest.approx(0.5)
    assert attention_mining_loss(logits, cls_idx, "paper", num_classes=20, batch_size=2).item() == pytest.approx(0.0)
    logits[2, 4] = 2.0
    assert attention_mining_loss(logits, cls_idx, "authors").item() == pytest.approx(
        (0.5 + 0.75 + 1 / (1 + math.exp(-2))) / 3)
    # Eq. 6 is per image: the sum over the pairs of a batch of 2 images is divided by C and by 2
    assert attention_mining_loss(logits, cls_idx, "paper", batch_size=2).item() == pytest.approx(
        (math.log(3) + 2) / (20 * 2))
    with pytest.raises(ValueError, match="batch_size"):
        attention_mining_loss(logits, cls_idx, "paper")
    with pytest.raises(ValueError):
        attention_mining_loss(logits, cls_idx, "other")

    att = torch.zeros(2, 3, 2, 2)
    att[0, 0] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])   # sum 2
    att[0, 1] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])   # sum 4
    att[0, 2] = 9.0                                       # absent: ignored
    att[1, 1] = torch.tensor([[0.0, 0.0], [0.0, 1.0]])   # sum 1
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    assert regularisation_loss(att, labels).item() == pytest.approx(7 / (2 * 2 * 3))

    assert adversary_loss(torch.zeros(2, C), torch.ones(2, C)).item() == pytest.approx(math.log(2))


def test_soft_mask_and_normalisation():
    m = soft_mask(torch.tensor([[0.5, 1.0], [0.0, 0.55]]), (2, 2))
    assert m[0, 0].item() == pytest.approx(0.5)
    assert m[0, 1].item() > 0.9999 and m[1, 0].item() < 1e-4
    assert m[1, 1].item() == pytest.approx(1 / (1 + math.exp(-5)))
    assert soft_mask(torch.rand(2, 3, 4, 4), (32, 32)).shape == (2, 3, 32, 32)
    att = torch.rand(2, 3, 5, 5) * 7
    n = normalise_attention(att)
    assert torch.allclose(n.flatten(2).amax(-1), torch.ones(2, 3), atol=1e-5)


class TinyNet(nn.Module):
    """Features then a non-linear head, so Grad-CAM weights are not just fc rows."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 6, 3, 2, 1)
        self.head = nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        f = torch.tanh(self.body(x))
        return self.fc(F.relu(self.head(f)).mean((2, 3))), f


def test_grad_cam_matches_direct_autograd():
    torch.manual_seed(0)
    net = TinyNet()
    x = torch.randn(3, 3, 8, 8)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]])
    logits, f = net(x)
    cams = grad_cam(f, logits, labels, create_graph=True)
    assert cams.shape == (3, 4, 4, 4)
    for b in range(3):
        for c in range(4):
            if labels[b, c] == 0:
                assert cams[b, c].abs().sum() == 0
                continue
            g, = torch.autograd.grad(logits[b, c], f, retain_graph=True)
            w = g[b].mean((1, 2))
            expect = F.relu((w[:, None, None] * f[b]).sum(0))
            assert torch.allclose(cams[b, c], expect, atol=1e-6)
    # create_graph=True: the map also depends on the head through the weights
    gh, = torch.autograd.grad(cams.sum(), net.head.weight, retain_graph=True)
    assert gh.abs().sum() > 0
    # create_graph=False (the authors' hooks): weights are constants, the map still depends on F
    cams2 = grad_cam(f, logits, labels, create_graph=False)
    assert torch.allclose(cams, cams2)
    gh2, gb2 = torch.autograd.grad(cams2.sum(), [net.head.weight, net.body.weight], allow_unused=True)
    assert gh2 is None and gb2.abs().sum() > 0


def test_standalone_localizer_and_segmentation():
    torch.manual_seed(0)
    loc = StandaloneLocalizer(arch="resnet18", width=0.0625)
    x, y = batch()
    x = torch.randn(2, 3, 64, 64)
    logits, feats = loc(x)
    assert logits.shape == (2, C) and feats.shape == (2, 32, 2, 2)
    with torch.no_grad():
        logits, att = loc.forward_with_attention(x, y)
    assert att.shape == (2, C, 2, 2)
    assert att[y == 0].abs().sum() == 0

    eader = make(omega=10.0)
    logits, att = loc.forward_with_attention(x, y)
    loss, _ = eader.localizer_loss(x, y, att, 0 * logits.sum())
    loss.backward()
    assert sum(p.grad.abs().sum() for p in loc.parameters() if p.grad is not None) > 0

    a = torch.zeros(3, 2, 2)
    a[0] = torch.tensor([[0.9, 0.2], [0.5, 0.1]])
    a[1] = torch.tensor([[0.5, 0.25], [0.8, 0.0]])
    a[2] = 1.0  # absent
    seg = segment_from_attention(a, torch.tensor([1.0, 1.0, 0.0]), rho=0.3)
    assert seg.tolist() == [[1, 0], [2, 0]]
    assert StandaloneLocalizer.segment_from_attention(a, torch.tensor([0.0, 0, 0])).eq(0).all()


def test_adversary_build_and_weights(tmp_path):
    full = build_adversary()
    assert full.fc.out_features == 20 and full.fc.in_features == 512
    narrow = build_adversary(width=0.0625)
    assert narrow.fc.in_features == 32 and narrow(torch.randn(2, 3, 32, 32)).shape == (2, 20)

    src = build_adversary(num_classes=1000, width=0.0625)  # stands in for an ImageNet file
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    m = build_adversary(width=0.0625, weights=str(path))
    assert torch.equal(m.conv1.weight, src.conv1.weight)
    assert m.fc.out_features == 20
    assert m.weights_report["missing"] == [] and m.weights_report["unexpected"] == []

    bad = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, bad)
    with pytest.raises(InputError, match="other.pth"):
        build_adversary(width=0.0625, weights=str(bad))
    with pytest.raises(InputError, match="missing.pth"):
        build_adversary(width=0.0625, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(InputError, match="r18.pth"):  # narrow weights into the full-width model
        build_adversary(weights=str(path))


def test_short_training_loop_runs():
    """The loop from the hook's docstring, 4 steps, phase_steps=1, both forms of L_am."""
    for form in ("authors", "paper"):
        net, eader = tiny_localizer(), make(phase_steps=1, am_form=form)
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        x, y = batch()
        log = []
        for _ in range(4):
            if eader.phase == "localizer":
                logits, att = net(x, with_cam=True)
                loss, stats = eader.localizer_loss(x, y, att, F.multilabel_soft_margin_loss(logits, y))
                opt.zero_grad()
                loss.backward()
                opt.step()
            else:
                with torch.no_grad():
                    att = net.forward_cam(x)
                stats = eader.adversary_step(x, y, att)
            assert all(math.isfinite(v) for v in stats.values())
            log.append("adv_loss" in stats)
            eader.advance()
        assert log == [False, True, False, True]


def test_no_positive_labels():
    x = torch.randn(2, 3, 32, 32)
    y = torch.zeros(2, C)
    erased, img_idx, _ = erase_pairs(x, y, torch.rand(2, C, 4, 4))
    assert erased.shape == (0, 3, 32, 32) and img_idx.numel() == 0
    eader = make()
    att = torch.rand(2, C, 4, 4, requires_grad=True)
    loss, stats = eader.localizer_loss(x, y, att, (att * 0).sum())
    assert stats["num_erased"] == 0 and math.isfinite(loss.item())
    for _ in range(3):
        eader.advance()
    assert eader.adversary_step(x, y, att) == {"num_erased": 0}


# ---------------------------------------------------------------------------- EADER's direction

class FixedLogits(nn.Module):
    """A stand-in adversary whose logits are one learnable row, whatever the image (hand values)."""

    def __init__(self, row):
        super().__init__()
        self.row = nn.Parameter(torch.as_tensor(row, dtype=torch.float32))

    def forward(self, x):
        return self.row.expand(x.shape[0], -1) + 0 * x.sum()


def hand_attention():
    """Raw attention whose maxima are not 1, so normalised and raw maps give different L_reg."""
    att = torch.zeros(2, C, 2, 2)
    att[0, 0] = torch.tensor([[4.0, 0.0], [0.0, 0.0]])   # normalised mean 1/4 (raw mean 1)
    att[0, 2] = 2.0                                       # normalised mean 1   (raw mean 2)
    att[1, 1] = torch.tensor([[0.0, 1.0], [1.0, 2.0]])   # normalised mean 1/2 (raw mean 1)
    att[1, 5] = 7.0                                       # absent class: ignored
    return att


@pytest.mark.parametrize("form", ["authors", "paper"])
def test_localizer_total_loss_is_l_loc_plus_alpha_l_am_plus_beta_l_reg(form):
    """Hand values: pairs (image 0, class 0), (0, 2), (1, 1) with adversary logits log 9, 0, -log 4
    (sigmoid 0.9, 0.5, 0.2)."""
    x, y = batch()  # image 0: classes 0 and 2; image 1: class 1
    row = torch.zeros(C)
    row[0], row[2], row[1], row[5] = math.log(9), 0.0, -math.log(4), 9.0  # class 5 is not erased
    cfg = EaderConfig(enabled=True, alpha=0.5, beta=0.25, am_form=form)
    eader = EADER(cfg, FixedLogits(row), torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))
    l_loc = torch.tensor(0.7)
    if form == "authors":  # mean sigmoid score of the erased class
        l_am = (0.9 + 0.5 + 0.2) / 3
    else:  # Eq. 6: per image (1/C) sum of the erased classes' logits, averaged over the 2 images
        l_am = (math.log(9) + 0.0 - math.log(4)) / (C * 2)
    l_reg = (0.25 + 1.0 + 0.5) / 3  # normalised maps; raw maps would give 4/3
    loss, stats = eader.localizer_loss(x, y, hand_attention(), l_loc)
    assert stats["l_am"] == pytest.approx(l_am, abs=1e-6)
    assert stats["l_reg"] == pytest.approx(l_reg, abs=1e-4)
    assert loss.item() == pytest.approx(0.7 + 0.5 * l_am + 0.25 * l_reg, abs=1e-4)


def test_l_reg_sees_the_normalised_attention():
    """Normalised maps (max 1) do not change when the raw attention is scaled; raw ones would."""
    x, y = batch()
    eader = make(alpha=0.0, beta=1.0)
    att = hand_attention()
    _, small = eader.localizer_loss(x, y, att, torch.tensor(0.0))
    _, large = eader.localizer_loss(x, y, 10 * att, torch.tensor(0.0))
    assert small["l_reg"] == pytest.approx(large["l_reg"], abs=1e-5)
    assert small["l_reg"] == pytest.approx(regularisation_loss(normalise_attention(att), y).item())
    assert small["l_reg"] != pytest.approx(regularisation_loss(att, y).item(), abs=0.1)


def test_one_localizer_step_lowers_the_adversarys_score_for_the_erased_class():
    """With the adversary fixed, a localizer step on alpha * L_am alone makes the adversary find the
    erased classes less (L_am 'authors' is the mean sigmoid score of the erased class). Flipping the
    sign of alpha * L_am would raise it."""
    x, y = batch()
    net = tiny_localizer().eval()  # no dropout: the two forwards below see the same network
    eader = make(omega=10.0, beta=0.0, alpha=1.0)
    eader.adversary.eval()  # fixed: BatchNorm on running statistics
    adv_before = snapshot(eader.adversary)

    def score():
        with torch.no_grad():
            erased, _, cls_idx = erase_pairs(x, y, net.forward_cam(x), eader.cfg.omega, eader.cfg.psi)
            return torch.sigmoid(eader.adversary(erased).gather(1, cls_idx.view(-1, 1))).mean().item()

    before = score()
    _, cam = net(x, with_cam=True)
    loss, stats = eader.localizer_loss(x, y, cam, torch.tensor(0.0))
    assert stats["l_am"] == pytest.approx(before, abs=1e-5)
    net.zero_grad()
    loss.backward()
    grad_sq = sum((p.grad ** 2).sum() for p in net.parameters() if p.grad is not None)
    lr = 0.02 * before / grad_sq  # a small step, sized to lower L_am by about 2% at first order
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    after = score()
    assert after < before - 0.005 * before, (before, after)
    assert moved(eader.adversary, adv_before) == []


def test_adversary_step_is_bce_against_the_full_label_vector():
    """adversary_step equals an independent BCE of the adversary on the erased images against each
    image's FULL label vector (the erased class and the image's other classes stay targets): same
    loss and the same updated weights as a hand-made SGD step."""
    import copy
    x, y = batch(((0, 2), (1,), (3, 4, 5)))
    eader = make(phase_steps=1)
    with torch.no_grad():
        eader.adversary.fc.bias.copy_(torch.linspace(-2, 2, C))  # logits far from 0: targets matter
    twin = copy.deepcopy(eader.adversary)
    twin_opt = adversary_optimizer(twin)
    att = torch.rand(3, C, 4, 4)
    eader.advance()  # the adversary's turn
    stats = eader.adversary_step(x, y, att)

    erased, img_idx, cls_idx = erase_pairs(x, y, att)
    assert img_idx.tolist() == [0, 0, 1, 2, 2, 2]
    targets = y[img_idx]  # row k: the full label vector of the image of pair k
    assert targets[0].nonzero().flatten().tolist() == [0, 2] and targets[1].equal(targets[0])
    logits = twin(erased)
    expected = F.binary_cross_entropy_with_logits(logits, targets)
    assert stats["adv_loss"] == pytest.approx(expected.item(), abs=1e-6)
    # the targets the other readings would use give other losses here
    only_erased = F.one_hot(cls_idx, C).float()
    dropped = targets.clone()
    dropped[torch.arange(len(cls_idx)), cls_idx] = 0
    for wrong in (only_erased, dropped):
        assert abs(F.binary_cross_entropy_with_logits(logits, wrong).item() - expected.item()) > 1e-3
    twin_opt.zero_grad()
    expected.backward()
    twin_opt.step()
    for (name, a), b in zip(eader.adversary.named_parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


@pytest.mark.parametrize("norm", ["max", "minmax"])
def test_masks_follow_att_norm_in_both_turns(norm):
    """A map of 2s with one half at 3: max-normalised every pixel is >= 2/3 > psi (all erased);
    min-max normalised only the half at 3 is erased. Both turns erase the same way."""
    x = torch.ones(1, 3, 4, 4)
    y = torch.zeros(1, C)
    y[0, 3] = 1
    att = torch.full((1, C, 4, 4), 2.0)
    att[0, 3, :2] = 3.0
    seen = []
    adv = FixedLogits(torch.zeros(C))
    adv.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    eader = EADER(EaderConfig(enabled=True, phase_steps=1, beta=0.0, att_norm=norm), adv,
                  torch.optim.SGD(adv.parameters(), lr=0.0))
    eader.localizer_loss(x, y, att, torch.tensor(0.0))
    eader.advance()
    eader.adversary_step(x, y, att)
    assert len(seen) == 2
    for erased in seen:
        assert erased[0, :, :2].abs().max() < 1e-3  # the peak half is erased either way
        kept = erased[0, :, 2:].mean().item()
        assert kept == pytest.approx(0.0 if norm == "max" else 1.0, abs=1e-3)


def test_eader_autocast_runs_the_hook_under_the_steps_bf16_only_when_asked():
    """eader.autocast: the adversary's forwards follow the localizer step's bf16 autocast (both turns);
    off (the default) they stay float32 as before."""
    from contextlib import nullcontext
    from conftest import tiny_spec
    from psa_eader.hook import EADER, EaderConfig
    from stages.train_cam import train_step
    torch.manual_seed(0)
    net = CAMNet(tiny_spec())
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(2, 3, 32, 32), torch.zeros(2, 20)
    y[0, 3] = y[1, 5] = 1
    amp = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    for on in (False, True):
        adv = build_adversary(width=0.25)
        e = EADER(EaderConfig(enabled=True, phase_steps=1, autocast=on), adv,
                  adversary_optimizer(adv, 0.01, 0.9, 1e-4))
        seen = []
        adv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        stats = [train_step(net, opt, e, x, y, amp) for _ in range(2)]  # a localizer then an adversary turn
        want = torch.bfloat16 if on else torch.float32
        assert seen == [want, want] and all(math.isfinite(s[k]) for s in stats for k in ("loss_loc", "adv_loss")
                                            if k in s)
        assert e.amp is (amp if on else nullcontext)
    from stages.config import load_config
    assert EaderConfig().autocast is False and load_config("voc")["eader"]["autocast"] is False  # off by default


def test_eader_channels_last_feeds_the_adversary_nhwc_with_nearly_the_nchw_results():
    """eader.channels_last (default off): the adversary gets NHWC input in both turns, and the backward
    runs (a channels_last one crashed in WRN-38 on this torch). Results agree with NCHW up to float32
    rounding, amplified where noted: the loss, the gradient into the attention, the adversary's update
    and BN buffers."""
    import copy
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 64, 64), torch.zeros(4, C)
    y[0, [1, 4]] = y[1, 2] = y[2, 7] = y[3, [0, 19]] = 1
    att0 = torch.rand(4, C, 8, 8)
    adv0 = build_adversary(width=0.25)
    out = {}
    for cl in (True, False):
        adv = copy.deepcopy(adv0)
        e = EADER(EaderConfig(enabled=True, phase_steps=1, channels_last=cl), adv, adversary_optimizer(adv))
        seen = []
        adv.conv1.register_forward_pre_hook(lambda m, i: seen.append(i[0].is_contiguous(
            memory_format=torch.channels_last)))
        att = att0.clone().requires_grad_()
        loss, stats = e.localizer_loss(x, y, att, torch.zeros(()))
        loss.backward()
        e.advance()
        adv_stats = e.adversary_step(x, y, att0)
        out[cl] = (loss.detach(), att.grad, adv_stats["adv_loss"], copy.deepcopy(adv.state_dict()))
        assert seen == [cl, cl]
    (l1, g1, a1, s1), (l0, g0, a0, s0) = out[True], out[False]
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    assert a1 == pytest.approx(a0, rel=1e-5)
    # NHWC BatchNorm sums in float (NCHW: double); the backward amplifies it: here the attention's
    # gradient differs by 2e-3 of its norm, the early layers' SGD update by ~2%. A layout bug is O(1)
    assert (g1 - g0).norm() <= 1e-2 * g0.norm()
    init = adv0.state_dict()
    for k in s0:
        if "running" in k or "num_batches" in k:  # forward statistics
            torch.testing.assert_close(s1[k], s0[k], rtol=1e-4, atol=1e-5)
        else:
            assert (s1[k] - s0[k]).norm() <= 0.1 * (s0[k] - init[k]).norm() + 1e-8, k
    from stages.config import load_config
    assert EaderConfig().channels_last is False and load_config("voc")["eader"]["channels_last"] is False


def test_the_hook_as_a_library_refuses_what_it_cannot_honour():
    """adv_weights unset is refused (a silently random adversary is not the paper's start); 'random' asks for
    it; .to() moves the adversary and its optimiser state; mismatched shapes and class counts are named."""
    with pytest.raises(ValueError, match="adv_weights is unset"):
        EADER(EaderConfig(enabled=True, adv_width=0.125))
    e = EADER(EaderConfig(enabled=True, adv_width=0.125, adv_weights="random", phase_steps=1))
    assert e.to("cpu") is e and next(e.adversary.parameters()).device.type == "cpu"
    x, y = batch()
    with pytest.raises(ValueError, match="num_classes is 20, but the labels have 21 classes"):
        e.localizer_loss(x, torch.zeros(2, 21), torch.rand(2, 21, 4, 4), torch.zeros(()))
    with pytest.raises(ValueError, match="batch sizes differ"):
        e.localizer_loss(x, y, torch.rand(3, C, 4, 4), torch.zeros(()))
    e.advance()
    with pytest.raises(ValueError, match=r"attention \(B,C,h,w\)"):
        e.adversary_step(x, y, torch.rand(2, C, 4))


# ---- fidelity to the authors' code: exact max, full-resolution L_reg, the config keys --------------------

def test_maps_are_normalised_by_their_exact_max_whatever_their_scale():
    """attention_map_wrapper.py divides by the exact max (a zero map stays zero): a Grad-CAM with a small max
    early in training peaks at 1 and erases as much as a large one. PSA's +1e-5 (its CAM inference) would
    leave a map of max 4e-4 peaking at 0.976."""
    att = torch.tensor([[0.0, 2.0], [1.0, 4.0]])
    want = torch.tensor([[0.0, 0.5], [0.25, 1.0]])
    for scale in (1e-4, 1.0, 1e3):
        n = normalise_attention(att * scale)
        assert torch.allclose(n, want, rtol=0, atol=1e-7)
        assert n.max().item() == 1.0
    assert torch.equal(normalise_attention(torch.zeros(2, 2)), torch.zeros(2, 2))
    assert normalise_attention(att * 1e-4, eps=EPS).max().item() == pytest.approx(4e-4 / (4e-4 + 1e-5))
    y = torch.zeros(1, C)
    y[0, 3] = 1
    raw = torch.zeros(1, C, 4, 4)
    raw[0, 3] = torch.rand(4, 4)
    small, _, _ = pair_masks(y, raw * 1e-4, (16, 16))
    large, _, _ = pair_masks(y, raw * 10, (16, 16))
    assert torch.allclose(small, large, atol=1e-5)


def centre_peak(reg_resolution, norm="max"):
    """L_reg of one (image, class) pair: a 3x3 map peaking at its centre, for a 6x6 image."""
    x = torch.randn(1, 3, 6, 6)
    y = torch.zeros(1, C)
    y[0, 4] = 1
    att = torch.zeros(1, C, 3, 3)
    att[0, 4, 1, 1] = 5.0
    eader = EADER(EaderConfig(enabled=True, alpha=0.0, beta=1.0, reg_resolution=reg_resolution, att_norm=norm),
                  FixedLogits(torch.zeros(C)), torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))
    return eader.localizer_loss(x, y, att, torch.tensor(0.0))[1]["l_reg"]


def test_l_reg_is_the_mean_of_the_image_sized_normalised_maps():
    """By hand: bilinear 3 -> 6 (align_corners False) weighs the centre cell by a = (0, 1/4, 3/4, 3/4, 1/4, 0)
    along each axis, so the upsampled map is 5 * a a^T with max 5 * 9/16, and once normalised its mean is
    (sum a)^2 / 36 / (9/16) = 4 / 20.25 (the authors' train.py: mean of the full-resolution maps). At the map's
    own size the mean is 1/9: L_reg there is 44% lower, and so are its gradients' spread."""
    assert centre_peak("full") == pytest.approx(4 / 20.25, abs=1e-6)
    assert centre_peak("attention") == pytest.approx(1 / 9, abs=1e-6)
    with pytest.raises(ValueError, match="reg_resolution"):
        centre_peak("half")


def test_config_keys_reach_the_hook():
    """eader.att_norm and eader.reg_resolution from the config (train-cam's build_eader); minmax on a map whose
    minimum is 1 and max 3 gives mean (0+0+0+2)/2/4 = 0.25 at its own size, max gives 6/4/3 = 0.5."""
    from stages.config import load_config
    from stages.train_cam import build_eader
    x = torch.randn(1, 3, 2, 2)
    y = torch.zeros(1, C)
    y[0, 7] = 1
    att = torch.ones(1, C, 2, 2)
    att[0, 7, 1, 1] = 3.0
    got = {}
    for norm in ("max", "minmax"):
        cfg = load_config("demo", ["eader.enabled=true", "eader.adv_weights=random", "eader.alpha=0",
                                   "eader.beta=1", f"eader.att_norm={norm}"])
        eader = build_eader(cfg, "cpu")
        assert eader.cfg.att_norm == norm and eader.cfg.reg_resolution == "full"
        got[norm] = eader.localizer_loss(x, y, att, torch.tensor(0.0))[1]["l_reg"]
    assert got == pytest.approx({"max": 0.5, "minmax": 0.25}, abs=1e-6)
    cfg = load_config("voc", ["eader.enabled=true", "eader.adv_weights=random"])
    assert (cfg["eader"]["att_norm"], cfg["eader"]["reg_resolution"]) == ("max", "full")  # the paper's
    with pytest.raises(InputError, match="eader.att_norm"):
        load_config("voc", ["eader.att_norm=mean"])
    with pytest.raises(InputError, match="eader.reg_resolution"):
        load_config("voc", ["eader.reg_resolution=half"])


def test_the_localizer_poly_schedule_reads_the_key():
    """Turns of 2 steps over 10 steps: the localizer steps at 0,1, 4,5, 8,9. own_steps: max_step 6 (its lr
    reaches 0); all_steps: 10, as PSA's loop with the hook dropped in (its lr ends at (1 - 6/10)^0.9)."""
    from stages.config import load_config
    from stages.train_cam import poly_max_step

    def cfg(*o):
        return load_config("voc", ["eader.phase_steps=2", *o])
    assert cfg()["eader"]["localizer_poly"] == "own_steps"
    assert poly_max_step(10, cfg("eader.enabled=true")) == 6
    assert poly_max_step(10, cfg("eader.enabled=true", "eader.localizer_poly=all_steps")) == 10
    assert poly_max_step(10, cfg("eader.enabled=true", "eader.loc_in_adv_turn=true")) == 10
    assert poly_max_step(10, cfg()) == 10  # baseline: every step is the localizer's
    with pytest.raises(InputError, match="eader.localizer_poly"):
        cfg("eader.localizer_poly=half")
