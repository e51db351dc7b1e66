"""5-point face alignment to the ArcFace template (insightface ``utils/face_align.py``, metrics.md §5.1).

A similarity transform (rotation, uniform scale, translation) is fitted from the detected landmarks
(left eye, right eye, nose, left and right mouth corners; pixel x, y) to the template by Umeyama's
least squares (what ``skimage.transform.SimilarityTransform.estimate`` does), and the image is warped
bilinearly with black outside, like ``cv2.warpAffine(img, M, (S, S), borderValue=0)``. Landmark
detection itself is the caller's (eval/ or data_prep/) job.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# insightface arcface_dst: landmark positions in a 112x112 ArcFace crop (x, y).
ARCFACE_TEMPLATE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)
_TEMPLATE_SIZE = 112  # the template above is for 112x112 crops
_ALT_TEMPLATE_SIZE = 128  # insightface also serves multiples of 128, shifting x by 8 * ratio
_ALT_X_SHIFT = 8.0


def arcface_template(size: int = _TEMPLATE_SIZE) -> Tensor:
    """Template ``(5, 2)`` float64 for an output of ``size`` (a multiple of 112 or of 128)."""
    template = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64)
    if size % _TEMPLATE_SIZE == 0:
        return template * (size / _TEMPLATE_SIZE)
    if size % _ALT_TEMPLATE_SIZE == 0:
        ratio = size / _ALT_TEMPLATE_SIZE
        return template * ratio + torch.tensor([_ALT_X_SHIFT * ratio, 0.0], dtype=torch.float64)
    raise ValueError(
        f"ArcFace alignment size must be a multiple of {_TEMPLATE_SIZE} or {_ALT_TEMPLATE_SIZE}, got {size}"
    )


def similarity_transform(source: Tensor, target: Tensor) -> Tensor:
    """Least-squares similarity transform (Umeyama 1991, with scaling) mapping ``source`` to ``target``.

    Args:
        source, target: ``(K, 2)`` points (x, y), K >= 2.

    Returns:
        ``(2, 3)`` float64 matrix M with ``target ≈ M @ [x, y, 1]``.
    """
    src, dst = source.to(torch.float64), target.to(torch.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(
            f"similarity_transform needs two (K, 2) point sets with K >= 2, got {tuple(src.shape)}, {tuple(dst.shape)}"
        )
    src_mean, dst_mean = src.mean(dim=0), dst.mean(dim=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / src.shape[0]
    u, singular, vh = torch.linalg.svd(covariance)
    # Reflection guard: force det(R) = +1 so the fit is a rotation, not a mirror image.
    d = torch.ones(2, dtype=torch.float64)
    if torch.det(u) * torch.det(vh) < 0:
        d[-1] = -1
    rotation = u @ torch.diag(d) @ vh
    scale = (singular * d).sum() / src_c.square().sum(dim=1).mean()
    translation = dst_mean - scale * rotation @ src_mean
    return torch.cat([scale * rotation, translation[:, None]], dim=1)


def warp_affine(images: Tensor, matrices: Tensor, size: int) -> Tensor:
    """Warp ``images`` ``(B, C, H, W)`` in [-1, 1] by ``matrices`` ``(B, 2, 3)`` (source pixel -> output
    pixel, cv2 convention: pixel centres at integer coordinates) into ``(B, C, size, size)``; bilinear,
    black (-1) outside the image."""
    b, _, h, w = images.shape
    full = torch.zeros(b, 3, 3, dtype=torch.float64, device=images.device)
    full[:, :2] = matrices.to(device=images.device, dtype=torch.float64)
    full[:, 2, 2] = 1
    inverse = torch.linalg.inv(full)[:, :2]  # output pixel -> source pixel
    coords = torch.arange(size, dtype=torch.float64, device=images.device)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    grid = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(-1, 3)  # (size*size, 3)
    source = grid @ inverse.transpose(1, 2)  # (B, size*size, 2) source pixel x, y
    # Normalise for grid_sample with align_corners=True, where -1 and 1 are the outer pixel centres.
    norm = torch.stack([source[..., 0] * 2 / (w - 1) - 1, source[..., 1] * 2 / (h - 1) - 1], dim=-1)
    norm = norm.reshape(b, size, size, 2).to(images.dtype)
    # Shift to [0, 2] so grid_sample's zero padding is black (-1 after shifting back), like borderValue=0.
    warped = F.grid_sample(images + 1, norm, mode="bilinear", padding_mode="zeros", align_corners=True)
    return warped - 1


def align_faces(images: Tensor, landmarks: Tensor, size: int = _TEMPLATE_SIZE) -> Tensor:
    """Aligned ArcFace crops ``(B, 3, size, size)`` from images ``(B, 3, H, W)`` in [-1, 1] and their
    5-point landmarks ``(B, 5, 2)`` in pixels (x, y)."""
    if landmarks.ndim != 3 or landmarks.shape[1:] != (5, 2) or landmarks.shape[0] != images.shape[0]:
        raise ValueError(
            f"landmarks must be (B, 5, 2) with B={images.shape[0]}, got {tuple(landmarks.shape)}"
        )
    template = arcface_template(size)
    matrices = torch.stack([similarity_transform(points.cpu(), template) for points in landmarks])
    return warp_affine(images, matrices, size)
