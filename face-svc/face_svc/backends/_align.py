"""ArcFace alignment: the similarity transform that maps five landmarks onto ArcFace's template, and the
aligned crop. The same arithmetic as insightface's ``face_align.norm_crop`` (Umeyama's least-squares
estimate, as scikit-image's ``SimilarityTransform.estimate`` computes it), without scikit-image."""

from __future__ import annotations

import numpy as np

# ArcFace's five points (left eye, right eye, nose tip, left and right mouth corner) in a 112x112 crop.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 similarity transform (rotation, uniform scale, translation) that best maps ``src`` onto
    ``dst`` in the least-squares sense (Umeyama 1991, eq. 40-43)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    a = dst_c.T @ src_c / n
    d = np.ones((dim,))
    if np.linalg.det(a) < 0:
        d[dim - 1] = -1
    t = np.eye(dim + 1)
    u, s, vt = np.linalg.svd(a)
    rank = np.linalg.matrix_rank(a)
    if rank == 0:
        return np.full((dim + 1, dim + 1), np.nan)
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(vt) > 0:
            t[:dim, :dim] = u @ vt
        else:
            s_last = d[dim - 1]
            d[dim - 1] = -1
            t[:dim, :dim] = u @ np.diag(d) @ vt
            d[dim - 1] = s_last
    else:
        t[:dim, :dim] = u @ np.diag(d) @ vt
    scale = 1.0 / src_c.var(axis=0).sum() * (s @ d)
    t[:dim, dim] = dst_mean - scale * (t[:dim, :dim] @ src_mean.T)
    t[:dim, :dim] *= scale
    return t


def template(size: int) -> np.ndarray:
    """ArcFace's template for a ``size`` x ``size`` crop (insightface: multiples of 112 scale it, multiples
    of 128 scale it from 128 and shift it right by 8/128 of the size)."""
    if size % 112 == 0:
        return ARCFACE_TEMPLATE * (size / 112.0)
    if size % 128 == 0:
        dst = ARCFACE_TEMPLATE * (size / 128.0)
        dst[:, 0] += 8.0 * size / 128.0
        return dst
    raise ValueError(f"an ArcFace crop must be a multiple of 112 or 128 pixels, not {size}")


def norm_crop(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` crop of ``image`` aligned on its five ``landmarks`` (black outside)."""
    import cv2

    matrix = umeyama(np.asarray(landmarks, dtype=np.float32), template(size))[:2]
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)
