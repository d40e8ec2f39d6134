"""A straightforward per-element implementation of Learning from Noisy Anchors (candidate
list, cleanliness, soft targets, weights, losses) in Python floats, for the tests."""
import math

SCALE_CLAMP = math.log(1000.0 / 16)


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if inter > 0 else 0.0


def candidate_list(ious, n):
    """ious[g][a] -> the list of candidate anchors, GT by GT, duplicates kept; checks that the
    n-th and (n+1)-th IoUs of every GT differ (no tie decides the set)."""
    out = []
    for row in ious:
        order = sorted(range(len(row)), key=lambda a: -row[a])
        if n < len(row):
            assert row[order[n - 1]] != row[order[n]], "tie at the top-n boundary"
        out += order[:n]
    return out


def matched_gt(ious, a):
    best, g_best = -1.0, 0
    for g, row in enumerate(ious):
        if row[a] > best:
            best, g_best = row[a], g
    return g_best


def decode(delta, anchor):
    w, h = anchor[2] - anchor[0], anchor[3] - anchor[1]
    cx, cy = anchor[0] + 0.5 * w, anchor[1] + 0.5 * h
    dx, dy, dw, dh = delta
    pcx, pcy = dx * w + cx, dy * h + cy
    pw, ph = math.exp(min(dw, SCALE_CLAMP)) * w, math.exp(min(dh, SCALE_CLAMP)) * h
    return [pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph]


def encode(anchor, box):
    w, h = anchor[2] - anchor[0], anchor[3] - anchor[1]
    cx, cy = anchor[0] + 0.5 * w, anchor[1] + 0.5 * h
    gw, gh = box[2] - box[0], box[3] - box[1]
    gx, gy = box[0] + 0.5 * gw, box[1] + 0.5 * gh
    return [(gx - cx) / w, (gy - cy) / h, math.log(gw / w), math.log(gh / h)]


def soft_targets_and_weights(loc, cls, alpha):
    """The authors' formulas over one image's candidate list (lists of floats, duplicates
    included), without guards. Returns (t, r) per list entry."""
    k = len(loc)
    ml, mc = sum(loc) / k, sum(cls) / k
    s = [alpha * l / ml + (1 - alpha) * c / mc for l, c in zip(loc, cls)]
    lo, hi = min(s), max(s)
    t = [ml + (x - lo) * (1 - ml) / (hi - lo) for x in s]
    fl = [1 / (1 - l) for l in loc]
    fc = [1 / (1 - c) for c in cls]
    mfl, mfc = sum(fl) / k, sum(fc) / k
    r = [alpha * a / mfl + (1 - alpha) * b / mfc for a, b in zip(fl, fc)]
    return t, r


def soft_focal(x, t, alpha, gamma):
    p = 1 / (1 + math.exp(-x))
    log_p = -(max(-x, 0.0) + math.log1p(math.exp(-abs(x))))
    log_1mp = -(max(x, 0.0) + math.log1p(math.exp(-abs(x))))
    return -alpha * t * (1 - p) ** gamma * log_p - (1 - alpha) * (1 - t) * p ** gamma * log_1mp


def smooth_l1(d, beta):
    d = abs(d)
    return 0.5 * d * d / beta if d < beta else d - 0.5 * beta
