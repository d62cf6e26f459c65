"""GAN loss math as small pure functions (StyleGAN2 phases: Gmain, Greg, Dmain, Dreg).

Logits are ``[B, 1]`` or ``[B]`` raw discriminator outputs; images are float
NCHW in ``[-1, 1]``; ``ws`` is ``[B, num_ws, w_dim]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator non-saturating logistic loss: ``softplus(-D(x)) + softplus(D(G(z)))``, batch mean."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator non-saturating loss ``softplus(-D(G(z)))``, batch mean."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
    """R1: mean over the batch of ``||grad_x D(x)||^2`` on real images.

    ``real_img`` must have ``requires_grad=True`` and ``real_logits`` be computed from it.
    The caller multiplies by ``gamma / 2`` and the lazy-regularisation interval.
    """
    (grad,) = torch.autograd.grad(outputs=real_logits.sum(), inputs=real_img, create_graph=True)
    return grad.float().square().flatten(1).sum(1).mean()


def path_length_penalty(
    fake_img: torch.Tensor, ws: torch.Tensor, pl_mean: torch.Tensor, decay: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Path-length regularisation.

    Projects the image on noise ``y / sqrt(H*W)``, takes the Jacobian-vector
    length ``|J_w^T y|`` per sample, and penalises its squared deviation from a
    running mean.

    Returns:
        ``(penalty, path_lengths [B], new pl_mean)``; ``pl_mean`` is not modified in place.
    """
    h, w = fake_img.shape[-2:]
    noise = torch.randn_like(fake_img) / math.sqrt(h * w)
    (grad,) = torch.autograd.grad(outputs=(fake_img * noise).sum(), inputs=ws, create_graph=True)
    lengths = grad.float().square().sum(2).mean(1).sqrt()
    new_mean = pl_mean.lerp(lengths.mean().detach(), decay)
    penalty = (lengths - new_mean).square().mean()
    return penalty, lengths, new_mean


def lazy_reg_adam_hparams(
    lr: float, betas: tuple[float, float], interval: int
) -> tuple[float, tuple[float, float]]:
    """Learning rate and betas adjusted for regularisation applied every ``interval`` steps.

    With lazy regularisation the optimizer takes ``interval / (interval + 1)``
    main steps per regularisation step; scaling lr and betas keeps the effective
    dynamics those of regularising every step.
    """
    if interval <= 0:
        return lr, betas
    ratio = interval / (interval + 1)
    return lr * ratio, (betas[0] ** ratio, betas[1] ** ratio)


def d_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))``.

    Logits of any shape (``[B, N]`` patch logits of the projected discriminator); each mean is
    over all of them. Zero once reals score >= 1 and fakes <= -1.
    """
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def g_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss ``-mean(D(G(z)))`` over all logits (any shape)."""
    return -fake_logits.mean()
