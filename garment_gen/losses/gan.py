"""The GAN objective as a table of phases (StyleGAN2's Dmain, Dreg, Gmain, Greg).

Each phase names the network it updates, how often it runs (in batches) and a small function
returning ``(loss, logs)``. ``PretrainModule.training_step`` walks the table; the lazy
regularisation scaling of each optimizer is computed here, next to the intervals it depends on.

Two objectives share the table:

* ``kind="logistic"`` (StyleGAN2): non-saturating logistic loss, lazy R1 on reals
  (``r1_gamma``), path-length regularisation (``pl_weight``);
* ``kind="hinge"`` (Projected GAN): hinge loss; R1 and path length are usually off
  (``r1_gamma: 0``, ``pl_weight: 0``: a phase whose weight is 0 is not in the table).

With ``reuse_fakes`` the generator's phases run first and the discriminator's step reuses the
batch of fakes the generator's step drew (as PyTorch's DCGAN example does): one generator
forward per batch instead of two. When the discriminator splits into a part without trainable
parameters (``D.embed``: the projected D's frozen feature network and fixed projections) and the
rest (``D.score``), the fakes' embedding is reused too, so the D step runs only the trainable
heads on them. The D step then sees the fakes of the generator before its update, one step
staler than without reuse.

Images are float NCHW in ``[-1, 1]``; logits any shape (their mean is taken).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from garment_gen.errors import ConfigError
from garment_gen.losses.adversarial import (
    d_hinge_loss,
    d_logistic_loss,
    g_hinge_loss,
    g_nonsaturating_loss,
    lazy_reg_adam_hparams,
    path_length_penalty,
    r1_penalty,
)

Logs = dict[str, torch.Tensor | float]


class GANParts(Protocol):
    """What a phase needs from the module that trains the GAN."""

    G: nn.Module
    D: nn.Module
    pl_mean: torch.Tensor

    def augment_images(self, x: torch.Tensor) -> torch.Tensor: ...

    def sample_z(self, n: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class Phase:
    """One row of the table: ``fn(parts, real_img, real_c=None) -> (loss, logs)`` updates ``net``
    every ``interval`` batches. ``real_c`` (the batch's class indices) is given to a
    class-conditional GAN: the fakes are drawn for the same classes, and D sees the classes."""

    name: str
    net: str  # "G" or "D"
    interval: int
    fn: Callable[..., tuple[torch.Tensor, Logs]]


_LOSSES = {
    "logistic": (d_logistic_loss, g_nonsaturating_loss),
    "hinge": (d_hinge_loss, g_hinge_loss),
}


class GANLoss:
    """The GAN objective: loss kind, regularisation weights and intervals.

    Every argument is required: the numbers live in ``conf/loss/gan.yaml`` and
    ``conf/loss/projected.yaml`` only.

    Args:
        kind: ``logistic`` or ``hinge``.
        r1_gamma: R1 weight (0: no Dreg phase); ADA's rule of thumb is
            ``0.0002 * resolution^2 / batch``.
        d_reg_interval: R1 every this many batches (lazy regularisation).
        pl_weight: path-length weight (0: no Greg phase).
        g_reg_interval: path length every this many batches.
        pl_batch_shrink: the path-length batch is the batch divided by this.
        pl_decay: decay of the running mean path length.
        reuse_fakes: run the G phases first and let the D step reuse their fakes (and the
            fakes' embedding, see the module docstring) instead of drawing new ones.
        diversity_weight: weight of a mode-seeking term in Gmain (Mao et al. 2019, MSGAN):
            the batch is split into pairs and G is penalised by ``1 / (ratio + 1e-5)``, where
            ratio is the pair's mean absolute image difference at ``diversity_size`` px over
            its mean absolute latent difference. 0 leaves it out.
        diversity_size: the side the fakes are average-pooled to for that difference (the
            coarse layout, so that a batch of one silhouette in many colours still pays).
        class_weight: a class-conditional GAN whose D has a class probe (``D.classify``, the
            projected D): Dmain trains the probe on the reals' classes (cross-entropy) and
            Gmain adds ``class_weight`` x the cross-entropy of the fakes' probe logits against
            the classes they were drawn for (an auxiliary classifier on frozen ImageNet
            features: the strong class signal a projection D alone does not give in CPU-minutes).
    """

    def __init__(
        self,
        kind: str,
        r1_gamma: float,
        d_reg_interval: int,
        pl_weight: float,
        g_reg_interval: int,
        pl_batch_shrink: int,
        pl_decay: float,
        reuse_fakes: bool = False,
        diversity_weight: float = 0.0,
        diversity_size: int = 16,
        class_weight: float = 0.0,
    ):
        if kind not in _LOSSES:
            raise ConfigError(f"loss.kind={kind!r}: expected one of {', '.join(_LOSSES)}")
        for name, value in (("d_reg_interval", d_reg_interval), ("g_reg_interval", g_reg_interval)):
            if int(value) < 1:
                raise ConfigError(f"loss.{name}={value}: expected an int >= 1")
        self.kind = kind
        self.r1_gamma = float(r1_gamma)
        self.d_reg_interval = int(d_reg_interval)
        self.pl_weight = float(pl_weight)
        self.g_reg_interval = int(g_reg_interval)
        self.pl_batch_shrink = max(1, int(pl_batch_shrink))
        self.pl_decay = float(pl_decay)
        self.reuse_fakes = bool(reuse_fakes)
        if float(diversity_weight) < 0 or int(diversity_size) < 1:
            raise ConfigError(
                f"loss.diversity_weight={diversity_weight}, loss.diversity_size={diversity_size}:"
                " expected a weight >= 0 and a size >= 1"
            )
        self.diversity_weight = float(diversity_weight)
        self.diversity_size = int(diversity_size)
        if not float(class_weight) >= 0:
            raise ConfigError(f"loss.class_weight={class_weight}: expected a weight >= 0")
        self.class_weight = float(class_weight)
        self.d_loss_fn, self.g_loss_fn = _LOSSES[kind]
        self._fakes: Any = None  # the G step's detached embedding of its fakes (reuse_fakes)

    # ------------------------------------------------------------------ the table

    def phases(self) -> list[Phase]:
        """The phases in run order (a regulariser with weight 0 is left out)."""
        d_phases = [Phase("Dmain", "D", 1, self.d_main)]
        if self.r1_gamma > 0:
            d_phases.append(Phase("Dreg", "D", self.d_reg_interval, self.d_reg))
        g_phases = [Phase("Gmain", "G", 1, self.g_main)]
        if self.pl_weight > 0:
            g_phases.append(Phase("Greg", "G", self.g_reg_interval, self.g_reg))
        return g_phases + d_phases if self.reuse_fakes else d_phases + g_phases

    def reg_interval(self, net: str) -> int:
        """The lazy-regularisation interval of ``net``'s optimizer (0 when it has no reg phase)."""
        reg = [p for p in self.phases() if p.net == net and p.name.endswith("reg")]
        return reg[0].interval if reg else 0

    def optimizer_hparams(
        self, net: str, lr: float, betas: tuple[float, float]
    ) -> tuple[float, tuple[float, float]]:
        """``lr`` and ``betas`` of ``net``'s Adam, scaled for its lazy regularisation."""
        return lazy_reg_adam_hparams(lr, betas, self.reg_interval(net))

    # ------------------------------------------------------------------ the phases

    def d_main(
        self, parts: GANParts, real_img: torch.Tensor, real_c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Logs]:
        """D on augmented reals and (detached) fakes: new ones, or the G step's (``reuse_fakes``)."""
        fake_emb, self._fakes = self._fakes, None
        if fake_emb is None:
            with torch.no_grad():
                fake_img = _generate(parts.G, parts.sample_z(real_img.shape[0]), real_c)
                fake_emb = _embed(parts.D, parts.augment_images(fake_img))
        probe = _probe(parts.D, real_c)
        if probe is None:
            real_logits = _discriminate(parts.D, parts.augment_images(real_img), real_c)
        else:
            real_emb = _embed(parts.D, parts.augment_images(real_img))
            real_logits = _score(parts.D, real_emb, real_c)
        fake_logits = _score(parts.D, fake_emb, real_c)
        loss = self.d_loss_fn(real_logits, fake_logits)
        logs: Logs = {
            "train/d_loss": loss.detach(),
            "train/d_real": real_logits.detach().mean(),
            "train/d_fake": fake_logits.detach().mean(),
            "_real_logits": real_logits.detach(),
        }
        if probe is not None:  # the probe learns the reals' classes (always: DDP uses its weights)
            class_logits = probe(real_emb)
            ce = F.cross_entropy(class_logits, real_c)
            loss = loss + ce
            logs["train/class_real"] = ce.detach()
            logs["train/class_acc_real"] = _accuracy(class_logits, real_c)
        return loss, logs

    def d_reg(
        self, parts: GANParts, real_img: torch.Tensor, real_c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Logs]:
        """Lazy R1 on reals, scaled by ``gamma / 2 * interval``."""
        real_req = real_img.detach().requires_grad_(True)
        logits = _discriminate(parts.D, parts.augment_images(real_req), real_c)
        r1 = r1_penalty(logits, real_req)
        loss = r1 * (self.r1_gamma / 2) * self.d_reg_interval + logits.mean() * 0
        return loss, {"train/r1": r1.detach()}

    def g_main(
        self, parts: GANParts, real_img: torch.Tensor, real_c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Logs]:
        """G through the augmented D (``w_avg`` tracks the batch's mean w)."""
        z = parts.sample_z(real_img.shape[0])
        fake_img = _generate(parts.G, z, real_c, update_w_avg=True)
        fake_emb = _embed(parts.D, parts.augment_images(fake_img))
        loss = self.g_loss_fn(_score(parts.D, fake_emb, real_c))
        logs: Logs = {"train/g_loss": loss.detach()}
        if self.reuse_fakes:
            self._fakes = _detach(fake_emb)
        probe = _probe(parts.D, real_c)
        if probe is not None and self.class_weight > 0:
            class_logits = probe(fake_emb)
            ce = F.cross_entropy(class_logits, real_c)
            loss = loss + self.class_weight * ce
            logs["train/class_fake"] = ce.detach()
            logs["train/class_acc_fake"] = _accuracy(class_logits, real_c)
        if self.diversity_weight > 0 and z.shape[0] >= 2:
            ms, ratio = mode_seeking_loss(fake_img, z, self.diversity_size)
            loss = loss + self.diversity_weight * ms
            logs["train/diversity"] = ratio.detach()
        return loss, logs

    def g_reg(
        self, parts: GANParts, real_img: torch.Tensor, real_c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Logs]:
        """Path-length regularisation on a smaller batch, scaled by its interval."""
        n = max(1, real_img.shape[0] // self.pl_batch_shrink)
        z = parts.sample_z(n)
        ws = parts.G.mapping(z) if real_c is None else parts.G.mapping(z, c=real_c[:n])
        img = parts.G.synthesis(ws)
        penalty, lengths, new_mean = path_length_penalty(img, ws, parts.pl_mean, self.pl_decay)
        parts.pl_mean.copy_(new_mean)
        loss = penalty * self.pl_weight * self.g_reg_interval + img.mean() * 0
        return loss, {"train/pl_penalty": penalty.detach(), "train/pl_length": lengths.mean()}

    def __repr__(self) -> str:
        return f"GANLoss({self.kind}, phases={[p.name for p in self.phases()]})"


def mode_seeking_loss(
    img: torch.Tensor, z: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """MSGAN's mode-seeking term over the pairs (i, i + n/2) of a batch, and the mean ratio.

    ratio = mean |pool(img_a) - pool(img_b)| / mean |z_a - z_b| per pair (images pooled to
    ``size`` px); the term is the mean of ``1 / (ratio + 1e-5)``: large when two latents far
    apart draw the same picture.
    """
    h = img.shape[0] // 2
    small = F.adaptive_avg_pool2d(img, min(size, img.shape[-1])) if size < img.shape[-1] else img
    d_img = (small[:h] - small[h : 2 * h]).abs().flatten(1).mean(1)
    d_z = (z[:h] - z[h : 2 * h]).abs().flatten(1).mean(1)
    ratio = d_img / d_z.clamp_min(1e-8)
    return (1.0 / (ratio + 1e-5)).mean(), ratio.mean()


def _generate(G: nn.Module, z: torch.Tensor, c: torch.Tensor | None, **kw: Any) -> torch.Tensor:
    """``G(z)``, for the classes ``c`` when the GAN is class-conditional (``c`` not None)."""
    return G(z, **kw) if c is None else G(z, c=c, **kw)


def _probe(D: nn.Module, c: torch.Tensor | None) -> Callable[[Any], torch.Tensor] | None:
    """The class probe of a conditional D (``D.classify``), when classes are given and D has one."""
    classify = getattr(D, "classify", None)
    if c is None or classify is None or not getattr(D, "c_dim", 0):
        return None
    return classify


def _accuracy(logits: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(dim=1) == c).float().mean()


def _discriminate(D: nn.Module, img: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """``D(img)``, for the classes ``c`` of a class-conditional D."""
    return D(img) if c is None else D(img, c)


def _embed(D: nn.Module, img: torch.Tensor) -> Any:
    """``D.embed(img)`` (the part of D without trainable parameters), or ``img`` itself."""
    embed = getattr(D, "embed", None)
    return embed(img) if embed is not None else img


def _score(D: nn.Module, emb: Any, c: torch.Tensor | None = None) -> torch.Tensor:
    """``D.score(emb)``: logits of an :func:`_embed` output (``D(emb)`` for a plain D), for the
    classes ``c`` of a class-conditional D."""
    score = getattr(D, "score", None) or D
    return score(emb) if c is None else score(emb, c)


def _detach(emb: Any) -> Any:
    if isinstance(emb, (list, tuple)):
        return [t.detach() for t in emb]
    return emb.detach()


def describe(loss: Any) -> str:
    """One line for the log: the kind and the phases with their intervals."""
    reuse = "; the D step reuses the G step's fakes" if getattr(loss, "reuse_fakes", False) else ""
    weight = getattr(loss, "diversity_weight", 0.0)
    ms = f"; mode seeking x{weight:g} at {loss.diversity_size} px" if weight > 0 else ""
    cw = getattr(loss, "class_weight", 0.0)
    ms += f"; class probe x{cw:g} (conditional D with a probe)" if cw > 0 else ""
    return (
        f"{loss.kind}: " + ", ".join(f"{p.name}/{p.interval}" for p in loss.phases()) + reuse + ms
    )
