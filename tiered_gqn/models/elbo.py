"""Terms of the GQN objective: Gaussian pixel likelihood, latent KL, bits per dim.

Every function returns float32 values per example (summed over all non-batch
axes), whatever the dtype of its inputs, so that mixed-precision models keep
their likelihood and KL in float32.
"""

import math

from keras import ops

LOG_2PI = math.log(2.0 * math.pi)


def as_float32(x):
    """`x` (a tensor, array or variable) as a float32 tensor."""
    return ops.cast(ops.convert_to_tensor(x), "float32")


def sum_per_example(x):
    """Sums `x` [B, ...] over every axis but the first: [B]."""
    x = as_float32(x)
    return ops.sum(ops.reshape(x, (ops.shape(x)[0], -1)), axis=1)


def mean_per_example(x):
    """Averages `x` [B, ...] over every axis but the first: [B]."""
    x = as_float32(x)
    return ops.mean(ops.reshape(x, (ops.shape(x)[0], -1)), axis=1)


def gaussian_nll(target, mean, sigma):
    """Negative log-likelihood of `target` under N(mean, sigma^2), in nats.

    Args:
        target: [B, ...] observed values.
        mean: [B, ...] predicted means, same shape as `target`.
        sigma: scalar (or broadcastable) standard deviation.

    Returns:
        [B] float32, summed over every non-batch axis.
    """
    target, mean, sigma = as_float32(target), as_float32(mean), as_float32(sigma)
    z = (target - mean) / sigma
    nll = 0.5 * ops.square(z) + ops.log(sigma) + 0.5 * LOG_2PI
    return sum_per_example(nll)


def diag_gaussian_kl(q_mean, q_logscale, p_mean, p_logscale):
    """KL(q || p) of two diagonal Gaussians given by means and log standard deviations.

    Args:
        q_mean, q_logscale: [B, ...] the posterior q.
        p_mean, p_logscale: [B, ...] the prior p, same shape.

    Returns:
        [B] float32 nats, summed over every non-batch axis.
    """
    q_mean, q_logscale = as_float32(q_mean), as_float32(q_logscale)
    p_mean, p_logscale = as_float32(p_mean), as_float32(p_logscale)
    # log(sp / sq) + (sq^2 + (mq - mp)^2) / (2 sp^2) - 1/2, with s = exp(logscale).
    variance_ratio = ops.exp(2.0 * (q_logscale - p_logscale))
    scaled_distance = ops.square((q_mean - p_mean) * ops.exp(-p_logscale))
    kl = p_logscale - q_logscale + 0.5 * (variance_ratio + scaled_distance - 1.0)
    return sum_per_example(kl)


def squared_error(target, mean):
    """Mean squared error per example: [B] float32, averaged over every non-batch axis."""
    return mean_per_example(ops.square(as_float32(target) - as_float32(mean)))


def bits_per_dim(nats, num_dims):
    """Converts `nats` per example into bits per dimension (for example per subpixel).

    A plain unit conversion, right for a KL; for a likelihood of 8-bit pixels
    use `discretised_bits_per_dim`.
    """
    return as_float32(nats) / (float(num_dims) * math.log(2.0))


def discretised_bits_per_dim(nats, num_dims, bits=8):
    """Bits per subpixel of `bits`-bit images from a density's `nats` on [0, 1] pixel values.

    An 8-bit value stands for a bin of width 1/256, whose probability is
    about the density times the width, so the density's bits per dim gain
    log2(256) = 8. Comparable with 8-bit image models (a uniform model scores
    exactly 8).
    """
    return bits_per_dim(nats, num_dims) + float(bits)
