"""Learning-free detector of burned-in text: thin, high-contrast strokes that form rows of similar glyphs.

Camera overlays (names, ids, dates) are drawn as strokes 1-4 px wide in a colour that stands out from the
photograph. Each colour channel is searched for light and for dark strokes separately (text that is light in
one channel is often dark in another, and mixing the two merges letters with the gaps between them) with a
morphological top-hat. The top-hat is cut at a few contrast levels (like MSER): low levels catch faint or thin
text, high levels separate letters that anti-aliasing glues together (levels below five times the image's
noise are skipped). At each level, connected components that look like glyphs -- glyph-sized, thin strokes
relative to their height, not a filled blob, wide ones crossing many strokes, and still glyph-sized when the
top-hat is cut at half the level -- are chained into rows: similar heights, overlapping vertically, side by
side with letter-sized gaps.

Rows that run top to bottom (labels printed at a quarter turn) are rows of the transposed masks; they need
``min_glyphs_vertical`` glyphs. A row of at least ``min_glyphs`` glyphs, two of them letter-like (neither a
thin bar nor a single straight stroke), is text. Fundus anatomy fails these tests in known ways: vessels are
long curves that grow at half the level, and their pieces are bars or straight strokes (parallel trunks at the
optic disc); lesions and drusen are filled blobs; the optic disc and the field-of-view edge are larger than
the top-hat and vanish.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ...data.fov import resize_image


@dataclass(frozen=True)
class TextOptions:
    """Parameters of the structural text detector (units: pixels of the analysed image, intensities in [0, 1])."""

    footprint: int = 7
    """Side of the top-hat square: strokes narrower than this are kept (text up to ~24 px has strokes <= 4)."""
    levels: tuple[float, ...] = (0.08, 0.15, 0.25, 0.4, 0.6)
    """Contrast levels at which the top-hat is cut (0.08: grey or dark stamps over the dark fundus periphery; the
    text check asks more glyphs of rows found only there inside the field of view)."""
    noise_factor: float = 5.0
    """Levels below this many noise standard deviations (estimated per image) are skipped."""
    min_height: int = 4
    max_height: int = 34
    """Glyph heights searched: lower-case letters of 8 px text to capitals of 24 px text, with slack."""
    min_glyphs: int = 3
    """A row needs this many glyphs (a word blob counts as the number of strokes it crosses)."""
    max_side: int = 1600
    """Larger images are reduced by an integer factor first (their overlays are drawn larger)."""
    vertical: bool = True
    """Also search rows that run top to bottom (text at a quarter turn)..."""
    min_glyphs_vertical: int = 4
    """...which need this many glyphs: texture turned sideways (tissue, fabric) mimics short rows more often."""


@dataclass(frozen=True)
class TextRow:
    """One detected row of glyphs."""

    box: tuple[int, int, int, int]
    """(x0, y0, x1, y1) in pixels of the input image."""
    glyphs: int
    polarity: str
    """``"light"`` or ``"dark"`` text."""
    channel: int
    level: float
    vertical: bool = False
    """The row runs top to bottom (text printed at a quarter turn, as on some scanner and slide labels)."""


def noise_sigma(channel: np.ndarray) -> float:
    """Robust noise estimate (Immerkaer's Laplacian, median-based) over the lit part of a channel."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    # = scipy.ndimage.convolve(channel, kernel, mode="nearest") (a symmetric kernel) within float rounding, 20x faster
    resp = np.abs(cv2.filter2D(np.asarray(channel, dtype=np.float32), -1, kernel, borderType=cv2.BORDER_REPLICATE))
    lit = channel > 0.03
    if lit.sum() < 100:
        return 0.0
    return float(np.median(resp[lit]) / (0.6745 * 6.0))


def top_hat(chan: np.ndarray, size: int, polarity: str) -> np.ndarray:
    """White (``"light"``: strokes brighter than their surround) or black (``"dark"``) top-hat of a float32
    channel with a ``size`` x ``size`` square, borders reflected: equal to ``scipy.ndimage.white_tophat`` /
    ``black_tophat`` (min and max are exact), in OpenCV's time (~0.1 ms instead of 3 ms at 256 px)."""
    op = cv2.MORPH_TOPHAT if polarity == "light" else cv2.MORPH_BLACKHAT
    return cv2.morphologyEx(np.ascontiguousarray(chan, dtype=np.float32), op, np.ones((size, size), np.uint8),
                            borderType=cv2.BORDER_REFLECT)


def chessboard_distance(mask: np.ndarray) -> np.ndarray:
    """Chessboard distance of each pixel of ``mask`` to the nearest pixel outside it, as
    ``scipy.ndimage.distance_transform_cdt(mask, metric="chessboard")`` gives it (the frame is not outside; -1
    everywhere when nothing is), in OpenCV's time."""
    if mask.all():
        return np.full(mask.shape, -1, dtype=np.int32)
    return cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_C, 3).astype(np.int32)


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected components of ``mask``: their count, the label image (0 = background) and each component's
    bounding box ``(x0, y0, x1, y1)``. OpenCV numbers components in another order than ``scipy.ndimage.label``;
    :func:`_glyph_table` renumbers the ones it keeps by their first pixel, as scipy does. Grana's block-based
    algorithm (BBDT): the same components and boxes as OpenCV's default (Spaghetti) in 0.18 instead of 0.42 ms per
    256 px mask on one thread, its statistics pass being the cost."""
    n, lab, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(np.ascontiguousarray(mask, dtype=np.uint8), 8,
                                                                     cv2.CV_32S, cv2.CCL_GRANA)
    x0, y0 = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
    box = np.column_stack([x0, y0, x0 + stats[1:, cv2.CC_STAT_WIDTH], y0 + stats[1:, cv2.CC_STAT_HEIGHT]])
    return n - 1, lab, box


def _extents(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The label image of ``mask``'s connected components (0 = background) and the height, and the width, of
    each label's bounding box (label 0: 0); the widths are the heights of the transposed mask's components. A
    pixel's extent is read where needed (``heights[labels[...]]``), not gathered for the whole image."""
    n, lab, box = _components(mask)
    heights = np.concatenate([[0], box[:, 3] - box[:, 1]]).astype(np.int32)
    widths = np.concatenate([[0], box[:, 2] - box[:, 0]]).astype(np.int32)
    return lab, heights, widths


def _per_label_max(values: np.ndarray, comp: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=values.dtype)
    np.maximum.at(out, comp, values)
    return out


def _stroke_crossings(pix: np.ndarray, comp: np.ndarray, box: np.ndarray, width: int) -> np.ndarray:
    """Mean number of strokes each component crosses along its middle rows (1 for a bar or blob, more for a
    word). ``pix`` are flat indices of the components' pixels in raster order, ``comp`` their component."""
    ys = pix // width
    first_in_run = np.ones(pix.size, dtype=bool)
    first_in_run[1:] = (pix[1:] != pix[:-1] + 1) | (comp[1:] != comp[:-1])
    h = box[:, 3] - box[:, 1]
    cy, band = (box[:, 1] + box[:, 3]) / 2, np.maximum(h / 6, 0.5)
    mid = first_in_run & (np.abs(ys + 0.5 - cy[comp]) <= band[comp])
    crossings = np.bincount(comp[mid], minlength=len(box))
    lo_row = np.maximum(np.ceil(cy - band - 0.5), box[:, 1])
    hi_row = np.minimum(np.floor(cy + band - 0.5), box[:, 3] - 1)
    return crossings / np.maximum(hi_row - lo_row + 1, 1)


def _roundness(pix: np.ndarray, comp: np.ndarray, area: np.ndarray, width: int) -> np.ndarray:
    """sqrt(minor / major) second moment of each component: ~0.1 for a straight stroke, ~1 for a ring."""
    n = len(area)
    ys, xs = (pix // width).astype(float), (pix % width).astype(float)
    mx, my = np.bincount(comp, xs, n) / area, np.bincount(comp, ys, n) / area
    cxx = np.bincount(comp, xs * xs, n) / area - mx**2 + 1 / 12
    cyy = np.bincount(comp, ys * ys, n) / area - my**2 + 1 / 12
    cxy = np.bincount(comp, xs * ys, n) / area - mx * my
    root = np.sqrt(((cxx - cyy) / 2) ** 2 + cxy**2)
    return np.sqrt(np.maximum((cxx + cyy) / 2 - root, 0) / ((cxx + cyy) / 2 + root))


def _glyph_sized(box: np.ndarray, opts: TextOptions) -> np.ndarray:
    """Which components' boxes ``(x0, y0, x1, y1)`` have a glyph's size: height within the searched range, width
    at most 12 heights (a word)."""
    h, w = box[:, 3] - box[:, 1], box[:, 2] - box[:, 0]
    return (h >= opts.min_height) & (h <= opts.max_height) & (w <= 12 * h)


def _transposed(components: tuple[int, np.ndarray, np.ndarray]) -> tuple[int, np.ndarray, np.ndarray]:
    """:func:`_components` of the transposed mask, from those of the mask."""
    n, lab, box = components
    return n, lab.T, box[:, [1, 0, 3, 2]]


def _glyph_table(components: tuple[int, np.ndarray, np.ndarray], support: tuple[np.ndarray, np.ndarray],
                 opts: TextOptions) -> np.ndarray:
    """Components of a mask (:func:`_components`) that look like glyphs: rows of (x0, y0, x1, y1, glyph count,
    letter-like).

    A glyph is glyph-sized, drawn with strokes thin for its height, not a filled blob, and, when wide, a word
    that crosses many strokes. ``support`` (a label image and each label's height, :func:`_extents`) gives the
    component heights of the same top-hat cut at half the level: a glyph keeps its height there, while a piece of
    vessel grows into the long structure it belongs to. "Letter-like" glyphs are neither thin bars nor single
    straight strokes.
    """
    n, lab, box = components
    if n == 0:
        return np.zeros((0, 6))
    box = box.astype(float)
    h, w = box[:, 3] - box[:, 1], box[:, 2] - box[:, 0]
    keep = _glyph_sized(box, opts)
    if not keep.any():
        return np.zeros((0, 6))
    # Work inside the kept components' bounding box and a one-pixel frame around it (clipped to the image): every
    # pixel outside it is outside the kept components, so each kept pixel's chessboard distance to the nearest of
    # them is reached inside the frame, and raster order within the crop is the image's. Same table, less work.
    kb = box[keep].astype(np.int64)
    r0, c0 = max(int(kb[:, 1].min()) - 1, 0), max(int(kb[:, 0].min()) - 1, 0)
    r1, c1 = min(int(kb[:, 3].max()) + 1, lab.shape[0]), min(int(kb[:, 2].max()) + 1, lab.shape[1])
    sub = np.ascontiguousarray(lab[r0:r1, c0:c1])
    # kept components numbered 1..m in raster order of their first pixel (as scipy.ndimage.label numbers them)
    flat = sub.ravel()  # raster order of this (possibly transposed) mask
    kept_pixels = np.concatenate([[False], keep])[flat]
    pix = np.flatnonzero(kept_pixels)
    labels = flat[pix]
    first = np.full(n + 1, sub.size, dtype=np.int64)
    np.minimum.at(first, labels, pix)
    kept = np.flatnonzero(keep) + 1
    kept = kept[np.argsort(first[kept], kind="stable")]
    lut = np.zeros(n + 1, dtype=np.int64)
    lut[kept] = np.arange(len(kept))
    b, hk, wk, m = box[kept - 1], h[kept - 1], w[kept - 1], len(kept)
    comp = lut[labels]
    area = np.bincount(comp, minlength=m)
    dist = chessboard_distance(kept_pixels.reshape(sub.shape))
    stroke = np.maximum(2 * _per_label_max(dist.ravel()[pix], comp, m) - 1, 1)
    strokes = _stroke_crossings(pix, comp, b - np.array([c0, r0, c0, r0], dtype=float), sub.shape[1])
    thin = hk / stroke >= 2.2
    not_blob = (area / (hk * wk) <= 0.85) | (wk <= 0.45 * hk)
    word_ok = (wk <= 1.6 * hk) | (strokes >= np.maximum(2.5, wk / hk))
    support_labels, support_heights = support
    isolated = (_per_label_max(support_heights[support_labels[r0:r1, c0:c1].ravel()[pix]], comp, m)
                <= np.maximum(1.5 * hk, hk + 6))
    ok = thin & not_blob & word_ok & isolated
    glyphs = np.where(wk > 1.6 * hk, np.maximum(np.round(strokes / 1.5), 1), 1)
    letter = ((_roundness(pix, comp, area, sub.shape[1]) >= 0.35) | (strokes >= 2.5)) & (wk >= 0.45 * hk)
    return np.column_stack([b[ok], glyphs[ok], letter[ok]])


def _component_minima(adj: np.ndarray) -> np.ndarray:
    """For each node of a symmetric adjacency matrix, the smallest node of its connected component (so components
    come in the order ``scipy.sparse.csgraph.connected_components`` numbers them, without its per-call cost)."""
    label = np.arange(len(adj))
    while True:
        nxt = np.where(adj, label[None, :], label[:, None]).min(axis=1)
        nxt = nxt[nxt]  # pointer jumping: follow the minimum's own minimum
        if np.array_equal(nxt, label):
            return label
        label = nxt


def _rows(table: np.ndarray, min_glyphs: int) -> list[tuple[np.ndarray, int]]:
    """Chain glyphs into rows; returns (member boxes, glyph count) for rows with enough glyphs."""
    if len(table) == 0:
        return []
    x0, y0, x1, y1, g, letter = table.T
    h = y1 - y0
    overlap = np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None])
    lo, hi = np.minimum(h[:, None], h[None]), np.maximum(h[:, None], h[None])
    gap = np.maximum(x0[None] - x1[:, None], x0[:, None] - x1[None])
    adj = (overlap >= 0.6 * lo) & (hi <= 2.2 * lo) & (gap <= hi) & (gap >= -0.3 * lo)
    label = _component_minima(adj)
    out = []
    for k in np.unique(label):
        idx = np.flatnonzero(label == k)
        count = int(g[idx].sum())
        # Real text has letters that are neither thin bars nor single straight strokes; a row of those only
        # is vessels (parallel trunks at the optic disc, crossings).
        if count >= min_glyphs and letter[idx].sum() >= 2:
            out.append((table[idx, :4], count))
    return out


def detect_text(image: np.ndarray, options: TextOptions = TextOptions()) -> list[TextRow]:
    """Rows of burned-in text in a float RGB image; empty when none is found."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[..., None]
    h, w = img.shape[:2]
    factor = max(1, int(np.ceil(max(h, w) / options.max_side)))
    if factor > 1:
        img = resize_image(img, h // factor, w // factor)
    rows: list[TextRow] = []
    for c in range(img.shape[2]):
        chan = np.ascontiguousarray(img[..., c])
        sigma = noise_sigma(chan)
        levels = [v for v in options.levels if v >= options.noise_factor * sigma] or [options.levels[-1]]
        for polarity in ("light", "dark"):
            resp = top_hat(chan, options.footprint, polarity)
            floor = options.noise_factor * sigma
            peak = float(resp.max())
            for level in levels:
                if level > peak:  # nothing reaches this level: no component, no row
                    continue
                comps = _components(resp >= level)
                directions = [vertical for vertical in (False, True)[: 1 + options.vertical]
                              if _glyph_sized((_transposed(comps) if vertical else comps)[2], options).any()]
                if not directions:  # no glyph-sized component (2/3 of the levels of a fundus image): no row
                    continue
                half, heights, widths = _extents(resp >= max(level / 2, floor))
                for vertical in directions:  # quarter-turned text: rows of the transposed mask
                    m, support = (_transposed(comps), (half.T, widths)) if vertical else (comps, (half, heights))
                    need = options.min_glyphs_vertical if vertical else options.min_glyphs
                    for boxes, count in _rows(_glyph_table(m, support, options), need):
                        bx = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())
                        bx = (bx[1], bx[0], bx[3], bx[2]) if vertical else bx
                        rows.append(TextRow(tuple(int(v * factor) for v in bx), count, polarity, c, level, vertical))
    return rows
