"""Built-in demo dataset in Pascal VOC layout that shows the problem EADER solves.

Every object is a "body" with a smaller "head" at its front end (head ~22% of the object pixels, 30% of the
objects seen from behind without one). Classes come in families of 2-3. The head (strong part) tells the
class; the body (weak part) tells the family and, more faintly, the class, like fur: a plain CAM classifier
fires on heads and misses much of the bodies, while the bodies still carry the class for a classifier that
never sees heads, which is what adversarial erasing exploits. Four styles (STYLES):
- "v6": the head in its own saturated colour, striped in one of four patterns, the body in a group
  colour and texture, with body-coloured distractor blobs in the background (docs/notes/demo_v6.md).
- "hue": head and body share the family's hue and fur; the head's fine stripes, at one of three
  orientations to the body axis, tell the class; the body's lightness steps by class. Grey background.
- "spots": as "hue", but the class is told by the head's spot lattice (square, hex, dashes) and the body's
  saturation; objects stand on legs; the background is dull coloured noise. A second family of data for
  robustness, designed before the demo was tuned.
- "tone" (default): as "hue", but the whole object (head and body alike) takes its class's tone within the family hue
  (a hue offset and a lightness step), so a body tells its class about as strongly as a v6 body does.
scripts/demo_data_check.py measures the part shares.

Layout under root (as VOC, plus PartMasks and the metadata):
    JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette PNG: 0 bg, c+1 class c, 255 void border),
    PartMasks/<id>.png (0 bg, 1 strong part, 2 weak part, 255 void),
    ImageSets/Segmentation/{train,val,trainval}.txt, cls_labels.npy (PSA's pickled dict id -> float32[20]),
    demo_meta.json (seed, params, classes, groups, summary; written last).
The whole root appears at once (built in a temporary sibling directory, then renamed).
"""
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from psa_baseline.constants import CLASS_NAMES, IGNORE, NUM_CLASSES, voc_palette
from psa_baseline.errors import InputError
from psa_baseline.safe_npy import load_dict

VERSION = 7  # bump when the rendering changes, so an old dataset is not mistaken for a new one
V6_VERSION = 6  # "v6" renders as generator v6 did: its datasets keep that version and carry no style key, so a
                # v6 dataset made before styles existed is the same dataset (same bytes), not a stale one
# Rendering styles (demo_meta.json's params["style"]); docs/notes/demo_v7.md says why each exists and what each gave.
# "hue": an object's head and body share their family's hue and differ in fine structure only (the head's
#     stripe orientation tells the class within the family), on a grey background: appearance is continuous
#     inside an object and changes at its border, as PSA's CRF and AffinityNet assume.
# "spots": a second family for robustness checks, designed before any tuning: legged objects whose parts share
#     a hue, the class within the family told by the head's spot lattice, on a background of coloured noise.
# "tone": "hue" with a body that tells its class within the family about as clearly as v6's body: the object's
#     hue is offset per class, head and body alike, so the seam stays invisible in colour; on "hue"
#     DeepLabV3+ could not read a body's class from its faint lightness step.
# "v6": generator v6 as it was, head and body of different colours and textures (kept byte-identical: its
#     results in docs/notes/demo_v6.md, and the pre-training's auxiliary images, which use it).
STYLES = ("v6", "hue", "spots", "tone")
# The demo's data: on "tone" PSA's random walk gains over the CAMs and DeepLabV3+ follows its labels, as on VOC;
# on v6 the walk could only hold the CAMs, on "hue" DeepLabV3+ could not read a body's class (docs/notes/demo_v7.md).
DEFAULT_STYLE = "tone"
# Three groups of three; consecutive classes (in this order) share a body style.
DEFAULT_CLASSES = ("cat", "dog", "bird", "horse", "cow", "sheep", "car", "bus", "motorbike")
DEFAULT_SIZE = (128, 160)
STRONG, WEAK = 1, 2

# Body styles, one per group: base RGB and texture kind. Desaturated, so no body looks like a head.
BODY_STYLES = (
    ((150, 100, 60), "mottled"),
    ((196, 190, 172), "speckle"),
    ((92, 108, 132), "banded"),
    ((110, 130, 84), "spots"),
    ((170, 140, 150), "mottled"),
    ((80, 80, 80), "speckle"),
    ((180, 160, 110), "banded"),
)
HEAD_COLOURS = ((230, 20, 20), (20, 190, 20), (30, 60, 240), (250, 225, 0), (230, 0, 220), (0, 215, 235),
                (255, 120, 0), (120, 0, 220), (255, 60, 150), (0, 120, 90))
HEAD_PATTERNS = ("stripes_along", "stripes_across", "checker", "rings")
CUE = 20.0       # the body's class cue: RGB shift between neighbouring classes of a group (hue) ...
LIGHT_CUE = 26.0  # ... plus a lightness step, so no body gets more saturated than 0.61
TEXTURE_STEP = 0.4  # texture scale change between neighbouring classes of a group
DISTRACTOR_P = 0.6  # probability that an image has 1-2 headless distractor blobs
CUE_DIR = np.array([1.0, -0.35, -0.8]) / np.linalg.norm([1.0, -0.35, -0.8])
# Object shape, recorded in demo_meta.json's params. body_scale multiplies the body's radius, aspect_scale
# its length / width ratio; the head's radius follows so that the head keeps its share of the object.
# headless_share: the share of target objects drawn without a head (seen from behind: all body).
# V5_OBJECTS (thin: objects on 16% of the non-void pixels) is what the shipped pre-training's aux set uses.
# v6's default covers 30%, nearer VOC (24% on ../shared/data/VOCmini's 200 VOC 2012 images); its effect on
# the baseline is measured in docs/notes/demo_object_size.md.
V5_OBJECTS = {"body_scale": 1.0, "aspect_scale": 1.0, "headless_share": 0.0}
DEFAULT_OBJECTS = {"body_scale": 1.6, "aspect_scale": 1 / 1.4, "headless_share": 0.3}


# ----------------------------------------------------------------------------------------- params

def _class_names(classes):
    names = []
    for c in classes:
        if isinstance(c, (int, np.integer)):
            if not 0 <= c < NUM_CLASSES:
                raise InputError(f"demo class index {c} is out of range 0..{NUM_CLASSES - 1}")
            c = CLASS_NAMES[c]
        if c not in CLASS_NAMES:
            raise InputError(f"unknown demo class '{c}'; use VOC class names: {', '.join(CLASS_NAMES)}")
        if c in names:
            raise InputError(f"demo class '{c}' is listed twice")
        names.append(c)
    if not names:
        raise InputError("the demo dataset needs at least one class")
    return names


def make_groups(n):
    """Split n classes (in order) into groups of 2-3; returns the group index of each class."""
    if n <= 3:
        sizes = [n]
    else:
        k = -(-n // 3)                       # fewest groups of at most 3
        sizes = [n // k + (i < n % k) for i in range(k)]
    return [g for g, s in enumerate(sizes) for _ in range(s)]


def group_positions(n):
    """Per class k of n (in order): (its group, its index j in the group, its step j - (m - 1) / 2 in a group of
    m: -1/0/+1 or -0.5/+0.5), the step scaling a class cue shared out within the group."""
    groups = make_groups(n)
    out = []
    for k, g in enumerate(groups):
        members = [i for i, gg in enumerate(groups) if gg == g]
        j = members.index(k)
        out.append((g, j, j - (len(members) - 1) / 2))
    return out


def class_designs(names):
    """Per class: group, body style, body class cue, head colour pair and head pattern."""
    designs = []
    for k, (name, (g, _, step)) in enumerate(zip(names, group_positions(len(names)))):
        # Subtle body cue: a small colour shift and texture scale, one step between the classes of a group.
        base, texture = BODY_STYLES[g % len(BODY_STYLES)]
        # Head: a saturated colour from a hand-picked list (far apart in RGB; consecutive entries,
        # which share a body, differ most) striped with black in one of four patterns. Not white:
        # after chroma subsampling and rescaling a colour/white pattern turns pastel, like the clutter.
        # Past 10 classes the colours repeat with white stripes and another pattern.
        c1 = HEAD_COLOURS[k % len(HEAD_COLOURS)]
        alt = k // len(HEAD_COLOURS)
        designs.append({"name": name, "index": CLASS_NAMES.index(name), "group": g,
                        "body": np.array(base, float) + step * (CUE * CUE_DIR + LIGHT_CUE),
                        "texture": texture, "texture_scale": 1.0 + TEXTURE_STEP * step,
                        "head": (np.array(c1, float),
                                 np.array((15, 15, 15) if alt == 0 else (245, 245, 245), float)),
                        "pattern": HEAD_PATTERNS[(k + alt) % len(HEAD_PATTERNS)]})
    return designs


FAMILY_HUE0, GOLDEN = 0.03, 0.618034   # family hues spread by the golden ratio: any number of families stay apart
STRIPE_ORIENTATIONS = (0.0, np.pi / 3, 2 * np.pi / 3)   # "hue": head stripes vs the body axis, one per class
SPOT_LATTICES = ("square", "hex", "dashes")              # "spots": the head's spot arrangement, one per class
VALUE_CUE = 0.07        # the body's class cue within a family: a lightness step ...
SAT_CUE = 0.10          # ... ("spots": a saturation step instead)
TONE_HUE_CUE = 0.025    # "tone": plus a hue step (turns): about three per-object hue jitters, while a family's
                        # span (two steps) stays a fifth of the closest families' distance, so hue tells the family first
STRIPED = ("hue", "tone")   # styles whose head pattern is fine stripes on a grey background


def family_designs(names, style):
    """Per class for the "hue", "spots" and "tone" styles: family (group), hue (the family's; "tone": offset per
    class), the body's class cue (lightness or saturation step, texture scale) and the head's strong one
    (stripe orientation or spot lattice)."""
    designs = []
    for name, (g, j, step) in zip(names, group_positions(len(names))):
        designs.append({"name": name, "index": CLASS_NAMES.index(name), "group": g,
                        "hue": (FAMILY_HUE0 + GOLDEN * g + (TONE_HUE_CUE * step if style == "tone" else 0.0)) % 1.0,
                        "sat": 0.55 + (SAT_CUE * step if style == "spots" else 0.0),
                        "value": 0.6 + (VALUE_CUE * step if style in STRIPED else 0.0),
                        "texture_scale": 1.0 + TEXTURE_STEP * step,
                        "orientation": STRIPE_ORIENTATIONS[j % len(STRIPE_ORIENTATIONS)],
                        "lattice": SPOT_LATTICES[j % len(SPOT_LATTICES)]})
    return designs


def designs_for(names, style):
    return class_designs(names) if style == "v6" else family_designs(names, style)


def _hsv(h, s, v):
    px = np.uint8([[[int(h * 180) % 180, int(s * 255), int(v * 255)]]])
    return tuple(int(x) for x in cv2.cvtColor(px, cv2.COLOR_HSV2RGB)[0, 0])


# -------------------------------------------------------------------------------------- rendering

def _smooth_noise(rng, h, w, cells, channels=1):
    """Zero-mean, unit-ish noise varying over about `cells` cells per side."""
    g = rng.standard_normal((cells + 1, cells + 1, channels)).astype(np.float32)
    out = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, channels)


def _frame(h, w, cx, cy, theta):
    """Pixel coordinates in a frame centred at (cx, cy) with u along the angle theta."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(theta), np.sin(theta)
    return dx * c + dy * s, -dx * s + dy * c


def _blob(h, w, cx, cy, radius, aspect, theta, rng, wobble):
    """Irregular blob: an ellipse (long axis radius*aspect along theta) whose radius varies with angle."""
    u, v = _frame(h, w, cx, cy, theta)
    u = u / aspect
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u)
    r = np.ones_like(phi)
    for k in (2, 3, 4, 5):
        r += rng.uniform(0, wobble / k * 2) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return rho < radius * r


def _body_colour(design, h, w, rng, cx, cy, theta, texture=None):
    """Group texture around the (class-shifted) group colour; `texture` overrides the kind."""
    # Per-object colour jitter, smaller than the class cue (v5; v4 had it as large as the cue, which
    # left bodies with the group only, so an adversary could not name the class once a head was erased).
    base = design["body"] + rng.normal(0, 6) + rng.normal(0, 4, 3)
    tex, sc = texture or design["texture"], design["texture_scale"]
    if tex == "mottled":
        t = 22 * _smooth_noise(rng, h, w, max(3, round(w / 10 / sc)))
    elif tex == "speckle":
        t = 28 * cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.8 * sc)[..., None]
    elif tex == "banded":
        u, _ = _frame(h, w, cx, cy, theta)
        t = 20 * np.sin(2 * np.pi * u / (6 * sc) + rng.uniform(0, 6.3))[..., None]
    elif tex == "plain":
        t = 8 * _smooth_noise(rng, h, w, 3)
    else:  # spots
        t = -45 * (_smooth_noise(rng, h, w, max(3, round(w / 8 / sc))) > 0.9).astype(np.float32)
    return base[None, None, :] + t


def _head_colour(design, h, w, rng, cx, cy, theta, radius):
    c1, c2 = design["head"]
    c1 = c1 + rng.normal(0, 8, 3)
    c2 = c2 + rng.normal(0, 8, 3)
    u, v = _frame(h, w, cx, cy, theta)
    period = float(np.clip(radius * 0.9, 4.0, 8.0))  # coarse enough to survive JPEG and rescaling
    f = 2 * np.pi / period
    p = design["pattern"]
    if p == "stripes_along":
        wave = np.sin(f * v)
    elif p == "stripes_across":
        wave = np.sin(f * u)
    elif p == "checker":
        wave = np.sin(f * u) * np.sin(f * v)
    else:
        wave = np.sin(f * np.hypot(u, v))
    m = wave > -0.3  # the saturated colour covers about 60%: the easiest cue there is
    return np.where(m[..., None], c1[None, None], c2[None, None])


def _hsv_image(hue, sat, val):
    """RGB (float, 0-255) of HSV maps or scalars: hue in turns, saturation and value in 0-1."""
    val = np.asarray(val, np.float32)
    hsv = np.stack([np.broadcast_to(np.float32(hue % 1.0 * 360.0), val.shape),
                    np.broadcast_to(np.float32(sat), val.shape), np.clip(val, 0, 1)], -1)
    return cv2.cvtColor(np.ascontiguousarray(hsv, np.float32), cv2.COLOR_HSV2RGB).astype(float) * 255


def _family_object(design, style, h, w, rng, g):
    """(body, head) RGB images of one "hue", "spots" or "tone" object: both parts share the object's hue,
    saturation and fur; only the head's fine pattern (stripes or spots) sets it apart, so colour stays
    continuous across the head/body seam and changes at the object's border."""
    hue = design["hue"] + rng.normal(0, 0.008)
    sat = float(np.clip(design["sat"] + rng.normal(0, 0.03), 0.2, 0.9))
    value = design["value"] + rng.normal(0, 0.025)   # per-object jitter, below the class cue's step
    sc = design["texture_scale"]
    val = value + 0.08 * _smooth_noise(rng, h, w, max(3, round(w / 10 / sc)))[..., 0]   # fur
    body = _hsv_image(hue, sat, val)
    u, v = _frame(h, w, g["hx"], g["hy"], g["theta"])
    if style in STRIPED:
        # Fine stripes (period 4 px, two CAM cells hold four of them) across the class's orientation.
        o = design["orientation"]
        wave = np.sin(2 * np.pi * (u * np.sin(o) + v * np.cos(o)) / 4.0 + rng.uniform(0, 2 * np.pi))
        head_val = val + 0.2 * np.tanh(2 * wave)
    else:
        head_val = np.where(_lattice(design["lattice"], u, v, rng), val * 0.35, val + 0.05)
    return body, _hsv_image(hue, sat, head_val)


def _lattice(kind, u, v, rng, period=5.0):
    """Dark-spot mask of the head's lattice, in the object's frame: square grid of dots, hexagonal dots, or
    dashes along the body axis."""
    u = u + rng.uniform(0, period)
    v = v + rng.uniform(0, period)
    if kind == "hex":
        row_h = period * np.sqrt(3) / 2
        row = np.floor(v / row_h)
        du = np.mod(u + (row % 2) * period / 2, period) - period / 2
        dv = np.mod(v, row_h) - row_h / 2
        return np.hypot(du, dv) < 1.3
    du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
    if kind == "dashes":
        return (np.abs(du) < 1.8) & (np.abs(dv) < 0.7)
    return np.hypot(du, dv) < 1.3


def _add_legs(g, h, w, rng):
    """"spots" objects stand on legs: two pairs of thin blobs across the body, counted as body (weak part)."""
    legs = np.zeros((h, w), bool)
    r, aspect, theta = g["r"], g["aspect"], g["theta"]
    for along in (-0.45, 0.35):
        for side in (-1, 1):
            reach = r * (0.9 + rng.uniform(0, 0.3))
            lx = g["cx"] + along * r * aspect * np.cos(theta) - side * reach * np.sin(theta)
            ly = g["cy"] + along * r * aspect * np.sin(theta) + side * reach * np.cos(theta)
            legs |= _blob(h, w, lx, ly, r * 0.22, 3.0, theta + np.pi / 2 + rng.uniform(-0.3, 0.3), rng, 0.05)
    g["body"] = (g["body"] | legs) & ~g["head"]


def _grey_background(h, w, rng):
    """"hue" background: grey textured noise with grey clutter, a third of it striped at random angles, so
    that stripes alone are no evidence of an object; object hues never occur in it."""
    img = rng.uniform(0.3, 0.85) * 255 + 35 * _smooth_noise(rng, h, w, 3) + 12 * _smooth_noise(rng, h, w, max(4, w // 6))
    img = img + 3 * _smooth_noise(rng, h, w, 4, 3)
    for _ in range(rng.integers(2, 7)):
        m = _clutter_mask(h, w, rng)
        grey = rng.uniform(0.2, 0.95) * 255 + rng.normal(0, 6, (int(m.sum()), 1))
        if rng.uniform() < 1 / 3:
            u, v = _frame(h, w, 0, 0, rng.uniform(0, np.pi))
            grey = grey + 0.2 * 255 * np.tanh(2 * np.sin(2 * np.pi * v[m] / rng.uniform(3, 6)))[:, None]
        img[m] = grey
    return img


def _noise_background(h, w, rng):
    """"spots" background: dull coloured smooth noise and dull clutter, a third of it dotted."""
    img = _background(h, w, rng) + 25 * _smooth_noise(rng, h, w, 3, 3)
    for _ in range(rng.integers(2, 7)):
        m = _clutter_mask(h, w, rng)
        col = _random_dull_colour(rng) + rng.normal(0, 6, (int(m.sum()), 3))
        if rng.uniform() < 1 / 3:
            u, v = _frame(h, w, 0, 0, rng.uniform(0, np.pi))
            col = np.where(_lattice("square", u, v, rng, rng.uniform(4, 7))[m][:, None], col * 0.35, col)
        img[m] = col
    return img


def _background(h, w, rng):
    """Textured noise: mostly brightness variation over a dull random colour, little chroma."""
    base = _random_dull_colour(rng)
    light = 35 * _smooth_noise(rng, h, w, 3) + 12 * _smooth_noise(rng, h, w, max(4, w // 6))
    chroma = 12 * _smooth_noise(rng, h, w, 4, 3)
    return base + light + chroma


def _v6_background(h, w, rng, designs, objects):
    img = _background(h, w, rng)
    for _ in range(rng.integers(2, 7)):     # clutter under everything
        m = _clutter_mask(h, w, rng)
        img[m] = _random_dull_colour(rng) + rng.normal(0, 6, (int(m.sum()), 3))
    # Distractors: headless blobs in a group's body colour but with another texture; background in
    # the GT. They make body colour alone a poor cue, so the body's evidence lies in colour + texture:
    # real, but harder to learn than the head's unique colours.
    if rng.uniform() < DISTRACTOR_P:
        for _ in range(rng.integers(1, 3)):
            d = designs[rng.integers(len(designs))]
            others = sorted({e["texture"] for e in designs} - {d["texture"]}) + ["plain"]
            g = _object_geometry(h, w, rng, 2, objects)
            m = g["body"] | g["head"]
            tex = others[rng.integers(len(others))]
            img[m] = _body_colour(d, h, w, rng, g["cx"], g["cy"], g["theta"], texture=tex)[m]
    return img


def _random_dull_colour(rng):
    """Clutter colours: saturation <= 0.45, so clutter never looks like a head (all saturation >= 0.6)."""
    return np.array(_hsv(rng.uniform(), rng.uniform(0, 0.45), rng.uniform(0.2, 0.95)), float)


def _clutter_mask(h, w, rng):
    kind = rng.integers(4)
    m = np.zeros((h, w), np.uint8)
    if kind == 0:
        x, y = rng.integers(0, w), rng.integers(0, h)
        cv2.rectangle(m, (int(x), int(y)), (int(x + rng.integers(6, w // 3)), int(y + rng.integers(6, h // 3))), 1, -1)
    elif kind == 1:
        cv2.circle(m, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(3, min(h, w) // 6)), 1, -1)
    elif kind == 2:
        pts = np.stack([rng.integers(0, w, 3), rng.integers(0, h, 3)], 1).astype(np.int32)
        cv2.fillPoly(m, [pts], 1)
    else:
        cv2.line(m, (int(rng.integers(0, w)), int(rng.integers(0, h))),
                 (int(rng.integers(0, w)), int(rng.integers(0, h))), 1, int(rng.integers(1, 4)))
    return m.astype(bool)


def _object_geometry(h, w, rng, n_obj, objects=V5_OBJECTS):
    """Body and head masks of one object at a random position, scale and orientation."""
    side = min(h, w)
    # Long bodies (many CAM cells of stride 8 from head to tail), so a CAM that spreads a few cells
    # around the head still misses most of the body, as a cat's CAM around the face misses the tail.
    s = rng.uniform(0.11, 0.15) if n_obj == 1 else rng.uniform(0.08, 0.12)
    r = s * side * objects["body_scale"]
    aspect = rng.uniform(2.4, 3.2) * objects["aspect_scale"]
    theta = rng.uniform(0, 2 * np.pi)
    # head area / body area as in v5 whatever the scales (body area ~ r^2 * aspect, head area ~ rh^2)
    rh = r * objects["aspect_scale"] ** 0.5 * rng.uniform(0.7, 0.85)
    # The head sits at the front end of the body's long axis; the body may be cut by the border
    # (as VOC objects are).
    reach = r * aspect * 0.95
    # Keep the head away from the border (as a face usually is), so training crops rarely cut it off.
    mx, my = rh + 0.08 * w, rh + 0.08 * h
    for _ in range(50):
        cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
        hx, hy = cx + reach * np.cos(theta), cy + reach * np.sin(theta)
        if mx <= hx <= w - 1 - mx and my <= hy <= h - 1 - my:
            break
    else:
        cx, cy = w / 2 - reach / 2 * np.cos(theta), h / 2 - reach / 2 * np.sin(theta)
        hx, hy = cx + reach * np.cos(theta), cy + reach * np.sin(theta)
    body = _blob(h, w, cx, cy, r, aspect, theta, rng, 0.14)
    head = _blob(h, w, hx, hy, rh, rng.uniform(1.0, 1.25), theta + rng.uniform(-0.4, 0.4), rng, 0.06)
    return {"cx": cx, "cy": cy, "theta": theta, "hx": hx, "hy": hy, "rh": rh, "r": r, "aspect": aspect,
            "body": body & ~head, "head": head}


def _void_border(inst):
    """VOC-style thin void band (2-3 px) along every object outline, inside and outside."""
    k = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(inst, k) != cv2.erode(inst, k)   # 1 px each side of any change of instance
    edge = cv2.dilate(edge.astype(np.uint8), np.array([[0, 0, 0], [0, 1, 1], [0, 1, 1]], np.uint8))
    return edge.astype(bool) & (cv2.dilate(inst, np.ones((5, 5), np.uint8)) > 0)


def render_image(seed, index, designs, size=DEFAULT_SIZE, objects=V5_OBJECTS, style="v6"):
    """One image: (rgb uint8 HxWx3, seg uint8 HxW, parts uint8 HxW, n_objects). Depends only on
    (seed, index, designs, size, objects, style), so splits can grow without changing earlier images.
    `designs` from designs_for(names, style)."""
    rng = np.random.default_rng([seed, index])
    # Which objects lose their head comes from a stream of its own, so the scenes (and the ground truth)
    # do not depend on headless_share.
    rng_headless = np.random.default_rng([seed, index, 1])
    lo, hi = size
    h, w = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    if style in STRIPED:
        img = _grey_background(h, w, rng)
    elif style == "spots":
        img = _noise_background(h, w, rng)
    else:
        img = _v6_background(h, w, rng, designs, objects)

    n_cls = int(rng.choice([1, 2, 3], p=[0.5, 0.33, 0.17]))
    n_obj = n_cls + int(rng.choice(np.arange(3 - n_cls + 1), p=_extra_p(3 - n_cls)))
    chosen = list(rng.choice(len(designs), n_cls, replace=False))
    obj_classes = chosen + [chosen[rng.integers(n_cls)] for _ in range(n_obj - n_cls)]

    inst = np.zeros((h, w), np.uint8)   # visible object id, 0 = background
    part = np.zeros((h, w), np.uint8)
    heads = np.zeros((h, w), bool)      # visible heads, drawn or not: placement ignores headless_share
    cls_of = {}
    placed = []                         # (id, full head area, full object area)
    for k in obj_classes:
        headless = rng_headless.uniform() < objects["headless_share"]
        for attempt in range(30):
            g = _object_geometry(h, w, rng, n_obj, objects)
            if style == "spots":
                _add_legs(g, h, w, rng)
            full = g["body"] | g["head"]
            new_inst = inst.copy()
            new_inst[full] = len(placed) + 1
            # Earlier objects must keep most of their head and half of their area visible.
            ok = all(((new_inst == i) & heads).sum() >= 0.6 * ha and (new_inst == i).sum() >= 0.5 * fa
                     for i, ha, fa in placed)
            ok = ok and g["head"].sum() >= 12 and (attempt < 29 or not placed)
            if ok:
                break
        if not ok:
            continue
        d = designs[k]
        # the head is drawn even when unused: it draws from rng, and the scenes must not depend on
        # headless_share
        if style == "v6":
            body = _body_colour(d, h, w, rng, g["cx"], g["cy"], g["theta"])
            head = _head_colour(d, h, w, rng, g["hx"], g["hy"], g["theta"], g["rh"])
        else:
            body, head = _family_object(d, style, h, w, rng, g)
        img[g["body"]] = body[g["body"]]
        img[g["head"]] = (body if headless else head)[g["head"]]
        inst = new_inst
        part[g["body"]] = WEAK
        part[g["head"]] = WEAK if headless else STRONG
        heads[g["body"]] = False          # as part's STRONG pixels: a head covered by a body is gone
        heads[g["head"]] = True
        placed.append((len(placed) + 1, int(g["head"].sum()), int(full.sum())))
        cls_of[len(placed)] = d["index"] + 1

    # Occluder: a clutter shape in front, allowed if every object keeps most of itself and its head.
    if rng.uniform() < 0.3:
        m = _clutter_mask(h, w, rng)
        keep = all(((inst == i) & ~m & heads).sum() >= 0.6 * ha and ((inst == i) & ~m).sum() >= 0.6 * fa
                   for i, ha, fa in placed)
        if keep:
            img[m] = rng.uniform(0.2, 0.95) * 255 if style in STRIPED else _random_dull_colour(rng)
            inst[m] = 0
    part[inst == 0] = 0

    seg = np.zeros((h, w), np.uint8)
    for i, c in cls_of.items():
        seg[inst == i] = c
    void = _void_border(inst)
    seg[void] = IGNORE
    part[void] = IGNORE
    img = img + rng.normal(0, 4, img.shape)  # sensor grain
    return np.clip(np.round(img), 0, 255).astype(np.uint8), seg, part, len(placed)


def _extra_p(m):
    p = np.array([0.55, 0.3, 0.15][:m + 1])
    return p / p.sum()


# ------------------------------------------------------------------------------------------ files

def _png_bytes(arr):
    """Palette PNG with the VOC colour map; the stored indices are the label values."""
    im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr, np.uint8).tobytes())
    im.putpalette(voc_palette().flatten().tolist())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _jpg_bytes(rgb, quality=95):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _params(n_train, n_val, classes, size, objects=DEFAULT_OBJECTS, style=DEFAULT_STYLE):
    styled = {} if style == "v6" else {"style": style}
    return {"version": style_version(style), **styled, "n_train": int(n_train), "n_val": int(n_val),
            "classes": list(classes), "size": [int(size[0]), int(size[1])],
            "objects": {k: float(objects[k]) for k in sorted(V5_OBJECTS)}}


def style_version(style):
    return V6_VERSION if style == "v6" else VERSION


def style_of(meta):
    """The style of the dataset demo_meta `meta` describes (v6's params carry none, see V6_VERSION)."""
    return meta["params"].get("style", "v6")


def is_current(meta):
    """Whether demo_meta `meta` was written by this generator for its style (not by an older version)."""
    return meta["params"].get("version") == style_version(style_of(meta))


def _check_objects(objects):
    if set(objects) != set(V5_OBJECTS):
        raise InputError(f"demo object shape {objects}: give exactly the keys {sorted(V5_OBJECTS)}")
    if not (0.25 <= objects["body_scale"] <= 3 and 0.25 <= objects["aspect_scale"] <= 3):
        raise InputError(f"demo object shape {objects}: body_scale and aspect_scale must lie in [0.25, 3]")
    if not 0 <= objects["headless_share"] <= 1:
        raise InputError(f"demo object shape {objects}: headless_share must lie in [0, 1]")


def read_meta(root):
    """demo_meta.json of a complete dataset, or None."""
    p = Path(root) / "demo_meta.json"
    if not p.is_file():
        return None
    with open(p) as f:
        return json.load(f)


def _same_dataset(meta, seed, params, any_version=False):
    """Whether demo_meta `meta` describes the dataset (seed, params); any_version: by any generator version."""
    if meta is None or meta["seed"] != seed:
        return False
    if any_version:  # the generator's own settings (version, object shape) aside
        own = ("version", "objects", "style")
        return {k: v for k, v in meta["params"].items() if k not in own} == \
            {k: v for k, v in params.items() if k not in own}
    return meta["params"] == params


def dataset_identity(root):
    """What identifies a demo dataset's content (seed and params, incl. the generator version), or None
    for other datasets: every stage's fingerprint carries it (stages.stage.Stage), so regenerated data
    is not mistaken for the data an earlier run used."""
    meta = read_meta(root) if root else None
    return None if meta is None else {"seed": meta["seed"], "params": meta["params"]}


def generate(root, seed=0, n_train=500, n_val=150, classes=DEFAULT_CLASSES, size=DEFAULT_SIZE,
             overwrite=False, objects=DEFAULT_OBJECTS, style=DEFAULT_STYLE):
    """Write the demo dataset under `root`; returns a summary dict (also stored in demo_meta.json).

    Deterministic in (seed, params). Skips the work if `root` already holds a complete dataset with the
    same seed and params (summary["generated"] is then False). A different dataset already at `root`
    is replaced only with overwrite=True. `classes`: VOC names or indices; consecutive classes form
    groups (families) of 2-3 that share a body style. `style`: one of STYLES.
    """
    if style not in STYLES:
        raise InputError(f"demo style '{style}' is unknown; use one of {', '.join(STYLES)}")
    names = _class_names(classes)
    lo, hi = int(size[0]), int(size[1])
    if not 32 <= lo <= hi:
        raise InputError(f"demo image size {size} must be (lo, hi) with 32 <= lo <= hi")
    if n_train < 1 or n_val < 0:
        raise InputError(f"demo split sizes n_train={n_train}, n_val={n_val}: need n_train >= 1, n_val >= 0")
    root, seed = Path(root), int(seed)
    _check_objects(objects)
    params = _params(n_train, n_val, names, (lo, hi), objects, style)
    meta = read_meta(root)
    if _same_dataset(meta, seed, params):
        return dict(meta["summary"], generated=False)
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} is a file, not a directory: choose another demo data root")
    # The same dataset made by an older generator version is replaced: it is ours and cheap to remake
    # (stages that used it see the new version in their fingerprint, see dataset_identity).
    older = _same_dataset(meta, seed, params, any_version=True)
    if root.exists() and any(root.iterdir()) and not (overwrite or older):
        what = "a different demo dataset" if meta else "files that are not a demo dataset"
        raise InputError(f"{root} already holds {what}: delete it, or rerun demo-data with --force to replace it")

    designs = designs_for(names, style)
    ids = [f"demo_{i:06d}" for i in range(n_train + n_val)]
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset should read like any directory
    try:
        for sub in ("JPEGImages", "SegmentationClass", "PartMasks", "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
        labels, n_objects = {}, 0
        class_images = {n: 0 for n in names}
        strong_px = weak_px = 0
        for i, id_ in enumerate(ids):
            rgb, seg, part, n = render_image(seed, i, designs, (lo, hi), params["objects"], style)
            (tmp / "JPEGImages" / f"{id_}.jpg").write_bytes(_jpg_bytes(rgb))
            (tmp / "SegmentationClass" / f"{id_}.png").write_bytes(_png_bytes(seg))
            (tmp / "PartMasks" / f"{id_}.png").write_bytes(_png_bytes(part))
            lab = np.zeros(NUM_CLASSES, np.float32)
            present = np.unique(seg[(seg > 0) & (seg != IGNORE)]) - 1  # labels = classes visible in GT
            lab[present] = 1
            labels[id_] = lab
            n_objects += n
            for c in present:
                class_images[CLASS_NAMES[c]] += 1
            strong_px += int((part == STRONG).sum())
            weak_px += int((part == WEAK).sum())
        splits = {"train": ids[:n_train], "val": ids[n_train:], "trainval": ids}
        for name, lst in splits.items():
            (tmp / "ImageSets/Segmentation" / f"{name}.txt").write_text("".join(x + "\n" for x in lst))
        buf = io.BytesIO()
        np.save(buf, labels, allow_pickle=True)
        (tmp / "cls_labels.npy").write_bytes(buf.getvalue())
        summary = {"root": str(root), "seed": seed, "params": params,
                   "splits": {k: len(v) for k, v in splits.items()}, "objects": n_objects,
                   "class_images": class_images,
                   "strong_part_fraction": round(strong_px / max(1, strong_px + weak_px), 4)}
        meta = {"seed": seed, "params": params, "classes": names,
                "class_indices": [CLASS_NAMES.index(n) for n in names],
                "groups": [[d["name"] for d in designs if d["group"] == g]
                           for g in sorted({d["group"] for d in designs})],
                "part_values": {"background": 0, "strong": STRONG, "weak": WEAK, "void": IGNORE},
                "summary": summary}
        (tmp / "demo_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        _install(tmp, root, seed, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dict(summary, generated=True)


def _install(tmp, root, seed, params):
    """Rename the finished temp dir to root. If a concurrent run with the same params got there first,
    keep its copy (identical by determinism); a different dataset at root is moved aside, then deleted."""
    if _same_dataset(read_meta(root), seed, params):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = None
    if root.exists():
        if not any(root.iterdir()):
            root.rmdir()
        else:
            old = root.with_name(f".{root.name}.old.{os.getpid()}")
            os.rename(root, old)
    try:
        os.rename(tmp, root)
    except OSError:
        meta = read_meta(root)
        if not (meta and meta["seed"] == seed and meta["params"] == params):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------- reading

def read_ids(root, split):
    p = Path(root) / "ImageSets/Segmentation" / f"{split}.txt"
    if not p.is_file():
        raise InputError(f"split list {p} not found")
    return [x.strip() for x in p.read_text().splitlines() if x.strip()]


def load_png(path):
    """Index values of a (palette or grey) PNG as uint8 HxW."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} not found")
    return np.array(Image.open(path))


def load_cls_labels(root):
    return load_dict(Path(root) / "cls_labels.npy", "image-level label file", str, "{id: float32[20]}")


# -------------------------------------------------------------------------------------- part recall

def cams_to_labels(cams, shape, threshold):
    """PSA evaluation: argmax over [threshold, CAM_c ...] -> 0 (bg) or c+1. `cams`: {c: HxW}."""
    keys = sorted(cams)
    if not keys:
        return np.zeros(shape, np.uint8)
    for c in keys:
        if not 0 <= int(c) < NUM_CLASSES:
            raise InputError(f"CAM class key {c} is out of range 0..{NUM_CLASSES - 1}")
        if np.shape(cams[c]) != tuple(shape):
            raise InputError(f"CAM of class {c} has shape {np.shape(cams[c])}, the image is {tuple(shape)}")
    stack = np.stack([np.full(shape, threshold, np.float32)] + [np.asarray(cams[c], np.float32) for c in keys])
    lut = np.array([0] + [int(c) + 1 for c in keys], np.uint8)
    return lut[stack.argmax(0)]


class PartRecall:
    """Recall (%) of strong-part and weak-part pixels: a pixel counts when predicted as its GT class."""

    def __init__(self):
        self.hits = np.zeros((2, NUM_CLASSES), np.int64)   # row 0 strong, row 1 weak
        self.total = np.zeros((2, NUM_CLASSES), np.int64)

    def add(self, pred, parts, gt):
        pred, parts, gt = np.asarray(pred), np.asarray(parts), np.asarray(gt)
        if not pred.shape == parts.shape == gt.shape:
            raise InputError(f"shapes differ: prediction {pred.shape}, part mask {parts.shape}, GT {gt.shape}")
        sel = ((parts == STRONG) | (parts == WEAK)) & (gt >= 1) & (gt <= NUM_CLASSES)
        cls = gt[sel].astype(np.int64) - 1
        row = parts[sel].astype(np.int64) - 1
        flat = row * NUM_CLASSES + cls
        n = 2 * NUM_CLASSES
        self.total += np.bincount(flat, minlength=n).reshape(2, NUM_CLASSES)
        self.hits += np.bincount(flat[pred[sel] == gt[sel]], minlength=n).reshape(2, NUM_CLASSES)

    def result(self):
        """{'strong', 'weak': pooled pixel recall %, 'strong_class_mean', 'weak_class_mean',
        'per_class': {name: {'strong', 'weak', 'strong_pixels', 'weak_pixels'}}} (None where no pixels)."""
        def pct(h, t):
            return None if t == 0 else round(100.0 * h / t, 2)

        out = {"strong": pct(self.hits[0].sum(), self.total[0].sum()),
               "weak": pct(self.hits[1].sum(), self.total[1].sum())}
        per = {}
        for c in np.flatnonzero(self.total.sum(0)):
            per[CLASS_NAMES[c]] = {"strong": pct(self.hits[0, c], self.total[0, c]),
                                   "weak": pct(self.hits[1, c], self.total[1, c]),
                                   "strong_pixels": int(self.total[0, c]), "weak_pixels": int(self.total[1, c])}
        for k, row in (("strong_class_mean", 0), ("weak_class_mean", 1)):
            v = [pct(self.hits[row, c], self.total[row, c]) for c in range(NUM_CLASSES) if self.total[row, c]]
            out[k] = round(float(np.mean(v)), 2) if v else None
        out["per_class"] = per
        return out


def part_recall_from_cams(cam_dir, root, ids, threshold=0.2):
    """PartRecall.result() for PSA-format CAM dicts `<cam_dir>/<id>.npy` against the demo root's masks."""
    acc = PartRecall()
    for id_ in ids:
        p = Path(cam_dir) / f"{id_}.npy"
        if not p.is_file():
            raise InputError(f"CAM file {p} not found")
        cams = load_dict(p, "CAM file", int, "{class_index: HxW map}")
        gt = load_png(Path(root) / "SegmentationClass" / f"{id_}.png")
        parts = load_png(Path(root) / "PartMasks" / f"{id_}.png")
        acc.add(cams_to_labels(cams, gt.shape, threshold), parts, gt)
    return acc.result()
