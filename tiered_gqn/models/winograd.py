"""Winograd minimal-filtering convolution, F(m x m, k x k), for stride-1 "same" convs.

A k x k correlation over m x m output tiles needs (m + k - 1)^2 products per
channel pair instead of m^2 k^2: 64 instead of 400 for F(4 x 4, 5 x 5), the
ConvDRAW gate convs. Each tile of the padded input is transformed (B^T d B),
multiplied channel-wise with the transformed kernel (G g G^T) in one batched
matmul per tile position, and transformed back (A^T M A). The transforms
come from the modified Toom-Cook construction with the points 0, +-1, +-2,
+-1/2 and infinity (Lavin and Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016).

The result equals the direct convolution up to float rounding, which grows
about fourfold for F(4 x 4, 5 x 5) in float32 (relative error near 1e-5);
in 16-bit types it is too large, so the model uses this only in float32.
The kernel transform depends only on the weights, so a kernel used at every
DRAW step is transformed once per forward pass.
"""

import functools
from fractions import Fraction

import numpy as np
from keras import ops

TILE = 4
# Interpolation points in the order they are taken; infinity is always added.
_POINTS = (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2), 4, -4, Fraction(1, 4), Fraction(-1, 4))


def _poly_from_roots(roots):
    """Ascending coefficients of prod (X - a) over `roots`."""
    coeffs = [Fraction(1)]
    for a in roots:
        coeffs = [Fraction(0)] + coeffs
        for i in range(len(coeffs) - 1):
            coeffs[i] -= a * coeffs[i + 1]
    return coeffs


@functools.lru_cache(maxsize=None)
def transforms(kernel_size, tile=TILE):
    """(A^T [m, n], G [n, k], B^T [n, n]) float64 of F(m, k), with m = tile and n = m + k - 1.

    They satisfy y = A^T ((G g) * (B^T d)) for the correlation
    y_i = sum_j g_j d_(i+j) of a length-n input d with a length-k filter g.
    """
    m, k = tile, kernel_size
    n = m + k - 1
    if not 2 <= n <= len(_POINTS) + 1:
        raise ValueError(f"F({m}, {k}) needs {n - 1} interpolation points; expected 1 to {len(_POINTS)}.")
    points = [Fraction(p) for p in _POINTS[: n - 1]]
    a_t = [[p**i for p in points] + [Fraction(int(i == m - 1))] for i in range(m)]
    g, b_t = [], []
    for j, p in enumerate(points):
        others = points[:j] + points[j + 1 :]
        scale = np.prod([p - q for q in others]) if others else Fraction(1)
        g.append([p**i / scale for i in range(k)])
        b_t.append(_poly_from_roots(others) + [Fraction(0)])
    g.append([Fraction(int(i == k - 1)) for i in range(k)])
    b_t.append(_poly_from_roots(points))
    return tuple(np.array(matrix, dtype=np.float64) for matrix in (a_t, g, b_t))


def transform_kernel(kernel, tile=TILE):
    """The transformed kernel [n * n, in, out] of a square kernel [k, k, in, out]."""
    k, _, channels_in, channels_out = kernel.shape
    _, g, _ = transforms(k, tile)
    n = g.shape[0]
    g2 = ops.convert_to_tensor(np.kron(g, g), kernel.dtype)  # [(a, b), (i, j)]
    flat = ops.reshape(kernel, (k * k, channels_in * channels_out))
    return ops.reshape(ops.matmul(g2, flat), (n * n, channels_in, channels_out))


def _placement(b_t, tiles, m, length, dtype):
    """B^T of every tile at its offset, [tiles * n, length]: one matmul transforms all tiles of an axis."""
    n = b_t.shape[0]
    placed = np.zeros((tiles, n, length))
    for t in range(tiles):
        placed[t, :, t * m : t * m + n] = b_t
    return ops.convert_to_tensor(placed.reshape(tiles * n, length), dtype)


def conv(inputs, transformed_kernel, kernel_size, tile=TILE):
    """Stride-1 "same" correlation of inputs [B, H, W, in] with a `transform_kernel` result.

    Returns [B, H, W, out], equal to `ops.conv(inputs, kernel, padding="same")`
    up to float rounding, for an odd `kernel_size`.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"Winograd 'same' convolution needs an odd kernel size, got {kernel_size}.")
    a_t, _, b_t = transforms(kernel_size, tile)
    m, n = tile, b_t.shape[0]
    _, height, width, channels = inputs.shape
    channels_out = transformed_kernel.shape[-1]
    dtype = inputs.dtype
    tiles_h, tiles_w = -(-height // m), -(-width // m)
    padded_h, padded_w = (tiles_h - 1) * m + n, (tiles_w - 1) * m + n
    pad = kernel_size // 2
    x = ops.pad(inputs, [[0, 0], [pad, padded_h - height - pad], [pad, padded_w - width - pad], [0, 0]])
    # Input transform B^T d B of every tile: plain 2-D matmuls with the
    # transformed axis leading (their gradients are cheap; sliced tiles' are not).
    x = ops.transpose(x, (1, 0, 2, 3))  # [H', B, W', in]
    x = ops.matmul(_placement(b_t, tiles_h, m, padded_h, dtype), ops.reshape(x, (padded_h, -1)))
    x = ops.reshape(x, (tiles_h, n, -1, padded_w, channels))  # [th, a, B, W', in]
    x = ops.transpose(x, (3, 1, 2, 0, 4))  # [W', a, B, th, in]
    x = ops.matmul(_placement(b_t, tiles_w, m, padded_w, dtype), ops.reshape(x, (padded_w, -1)))
    x = ops.reshape(x, (tiles_w, n, n, -1, tiles_h, channels))  # [tw, b, a, B, th, in]
    v = ops.reshape(ops.transpose(x, (2, 1, 3, 4, 0, 5)), (n * n, -1, channels))
    # One matmul per tile position: [n * n, B * th * tw, in] x [n * n, in, out].
    y = ops.matmul(v, transformed_kernel)
    # Output transform A^T M A of every tile, then back to the image layout.
    a_t = ops.convert_to_tensor(a_t, dtype)
    y = ops.matmul(a_t, ops.reshape(y, (n, -1)))  # [i, (b, B, th, tw, out)]
    y = ops.matmul(a_t, ops.reshape(y, (m, n, -1)))  # [i, j, (B, th, tw, out)]
    y = ops.reshape(y, (m, m, -1, tiles_h, tiles_w, channels_out))
    y = ops.transpose(y, (2, 3, 0, 4, 1, 5))  # [B, th, i, tw, j, out]
    y = ops.reshape(y, (-1, tiles_h * m, tiles_w * m, channels_out))
    if tiles_h * m != height or tiles_w * m != width:
        y = y[:, :height, :width]
    return y


def conv2d(inputs, kernel, tile=TILE):
    """`conv` with the kernel [k, k, in, out] transformed on the way."""
    return conv(inputs, transform_kernel(kernel, tile), kernel.shape[0], tile)
