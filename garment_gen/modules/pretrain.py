"""Stage ``pretrain``: StyleGAN2 generator + discriminator trained as a GAN.

Manual optimisation walks the phase table of :class:`~garment_gen.losses.gan.GANLoss` on every
batch (Dmain, lazy Dreg, Gmain, lazy Greg; a regulariser with weight 0 has no phase), then
updates ``G_ema`` (half-life in kimg, with a ramp-up). The discriminator is a config choice:
StyleGAN2's residual D (``model/discriminator=stylegan2``) or the projected discriminator on
frozen ImageNet features (``gan=projected``).

Under manual optimisation Lightning's ``global_step`` counts optimizer steps (several per
batch), so the module counts real images itself (``nimg`` / kimg) and stops at ``max_kimg``.
``G_ema`` is used for every sample, metric and export.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from garment_gen.errors import ConfigError
from garment_gen.losses.gan import GANLoss, describe
from garment_gen.metrics import RealismMetric
from garment_gen.modules.base import StageModule, plain
from garment_gen.networks.stylegan2 import export_generator
from garment_gen.utils.images import grid, log_image, save_png
from garment_gen.utils.safe_load import safe_torch_load

log = logging.getLogger(__name__)


class PretrainModule(StageModule):
    """StyleGAN2 GAN training.

    Args:
        generator / discriminator: Hydra configs (``_target_`` + kwargs) of the networks;
            ``resolution`` is filled in from the data.
        g_optimizer / d_optimizer: partial Adam configs (``_partial_: true``); lr and betas are
            scaled here for lazy regularisation (:meth:`GANLoss.optimizer_hparams`).
        loss: the ``GANLoss`` config (``conf/loss/gan.yaml``, ``conf/loss/projected.yaml``).
        resolution: image side (height), passed by ``train()`` from the datamodule.
        aspect: ``"W:H"`` of the data (``"1:1"`` or ``"3:4"``), from the datamodule too.
        augment: config of the discriminator's augmentation (ADA or DiffAugment), or None.
        ema_kimg / ema_rampup: G_ema half-life in thousands of images, and the ramp-up
            (half-life at most ``rampup * kimg so far``).
        max_kimg: stop after this many thousand real images (None: no limit).
        sample_every_n_batches / n_samples: sample grids from fixed latents.
        realism: ``{backend: auto|fid|fd_vgg, size}``: the validation metric, computed on a
            network the discriminator does not look through; None disables it.
        export_best: the collapse guard: ``generator.pt`` is the G_ema of the snapshot with the
            best validation realism (the checkpoint callback keeps it) when that is better than
            the last; the last one is then written too, as ``generator_last.pt``.
        conditional: ``true`` or ``"auto"``: train a class-conditional GAN when the data has at
            least two classes (``classes``; ``auto`` also falls back to unconditional when some
            photos have no class, ``true`` refuses such data, see ``train.check_classes``): G draws a garment of a given class (``c_dim`` and ``class_names`` in
            its config), D judges image and class together (projection). Fakes are drawn for
            the classes of the batch's reals; samples, probes and validation cycle through
            the classes. With fewer than two classes the GAN is unconditional.
        classes: the data's class names (passed by ``train()`` from the datamodule).
    """

    stage_name = "pretrain"
    # The realism metric's VGG is rebuilt from the LPIPS weights; a projected D's ImageNet
    # feature network is rebuilt from its package by the discriminator itself.
    frozen_prefixes = ("realism.",)

    def __init__(
        self,
        generator: DictConfig | dict,
        discriminator: DictConfig | dict,
        g_optimizer: DictConfig | dict,
        d_optimizer: DictConfig | dict,
        resolution: int,
        aspect: str = "1:1",
        loss: DictConfig | dict | None = None,
        augment: DictConfig | dict | None = None,
        ema_kimg: float = 10.0,
        ema_rampup: float | None = 0.05,
        max_kimg: float | None = None,
        sample_every_n_batches: int = 500,
        n_samples: int = 16,
        realism: DictConfig | dict | None = None,
        compile: bool = False,
        export_best: bool = True,
        conditional: bool | str = False,
        classes: list[str] | tuple[str, ...] | None = None,
    ):
        super().__init__()
        classes = [str(c) for c in (classes or [])]
        c_dim = len(classes) if conditional in (True, "auto") and len(classes) >= 2 else 0
        self.save_hyperparameters(
            {
                "generator": plain(generator),
                "discriminator": plain(discriminator),
                "g_optimizer": plain(g_optimizer),
                "d_optimizer": plain(d_optimizer),
                "resolution": resolution,
                "aspect": aspect,
                "loss": plain(loss) or {},
                "augment": plain(augment),
                "ema_kimg": ema_kimg,
                "ema_rampup": ema_rampup,
                "max_kimg": max_kimg,
                "sample_every_n_batches": sample_every_n_batches,
                "n_samples": n_samples,
                "realism": plain(realism),
                "compile": compile,
                "export_best": export_best,
                "conditional": conditional,
                "classes": classes,
            }
        )
        self.automatic_optimization = False
        hp = self.hparams
        cond = {"c_dim": c_dim} if c_dim else {}
        self.G = hydra.utils.instantiate(
            hp.generator,
            resolution=resolution,
            aspect=aspect,
            **(dict(cond, class_names=classes) if c_dim else {}),
        )
        self.D = hydra.utils.instantiate(
            hp.discriminator, resolution=resolution, aspect=aspect, **cond
        )
        self.c_dim = c_dim
        if c_dim:
            log.info("class-conditional GAN over %d classes: %s", c_dim, ", ".join(classes))
        elif conditional:
            log.info("model.conditional=%s: training unconditionally (%d class(es) given)",
                     conditional, len(classes))  # fmt: skip
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False).eval()
        self.augment = hydra.utils.instantiate(hp.augment) if hp.augment else None
        loss_cfg = dict(hp.loss)
        loss_cfg.setdefault("_target_", f"{GANLoss.__module__}.{GANLoss.__qualname__}")
        try:
            self.gan_loss: GANLoss = hydra.utils.instantiate(loss_cfg)
        except Exception as exc:  # noqa: BLE001 - a missing or unknown key, named by Hydra
            cause = exc.__cause__ or exc
            raise ConfigError(
                f"loss: {str(cause).splitlines()[0]} (see conf/loss/gan.yaml)"
            ) from None
        self.phases = self.gan_loss.phases()
        log.info("GAN objective %s", describe(self.gan_loss))
        self.register_buffer("nimg", torch.zeros((), dtype=torch.long))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))
        self.register_buffer("pl_mean", torch.zeros(()))
        self.register_buffer(
            "fixed_z",
            torch.randn(n_samples, self.G.z_dim, generator=torch.Generator().manual_seed(0)),
        )
        self.register_buffer("fixed_c", self.cycle_classes(n_samples), persistent=False)
        self.realism: RealismMetric | None = None  # built on first validation (loads VGG)
        if compile:
            self.G.synthesis = torch.compile(self.G.synthesis)
            self.D = torch.compile(self.D)

    # ------------------------------------------------------------------ frozen copy stays frozen

    def train(self, mode: bool = True) -> PretrainModule:
        super().train(mode)
        self.G_ema.eval()
        return self

    @property
    def kimg(self) -> float:
        return float(self.nimg) / 1000.0

    # ------------------------------------------------------------------ optimizers

    def configure_optimizers(self):
        hp = self.hparams
        return [
            self._make_opt("G", hp.g_optimizer, self.G.parameters()),
            self._make_opt(
                "D", hp.d_optimizer, [p for p in self.D.parameters() if p.requires_grad]
            ),
        ]

    def _make_opt(self, net: str, cfg: dict, params):
        cfg = dict(cfg)
        lr, betas = self.gan_loss.optimizer_hparams(
            net, cfg.pop("lr", 0.0025), tuple(cfg.pop("betas", (0.0, 0.99)))
        )
        return hydra.utils.instantiate(cfg)(params, lr=lr, betas=betas)

    # ------------------------------------------------------------------ what the phases use

    def augment_images(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator's augmentation (identity when there is none)."""
        return self.augment(x) if self.augment is not None else x

    def sample_z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.G.z_dim, device=self.device)

    def cycle_classes(self, n: int) -> torch.Tensor | None:
        """Class indices ``0, 1, ..., c_dim - 1, 0, 1, ...`` (``n`` of them); None when unconditional."""
        return torch.arange(n) % self.c_dim if self.c_dim else None

    def batch_classes(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """The batch's class indices for a conditional GAN (None otherwise)."""
        if not self.c_dim:
            return None
        labels = batch.get("label")
        if labels is None or bool((labels < 0).any()):
            raise ValueError("a class-conditional GAN needs every image's class (batch 'label')")
        return labels.to(self.device)

    # ------------------------------------------------------------------ training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        real_img = batch["image"]
        real_c = self.batch_classes(batch)
        b = real_img.shape[0]
        step = int(self.batches)
        opts = dict(zip(("G", "D"), self.optimizers(), strict=True))
        logs: dict[str, Any] = {}
        for phase in self.phases:
            if step % phase.interval:
                continue
            opt = opts[phase.net]
            self.toggle_optimizer(opt)
            loss, phase_logs = phase.fn(self, real_img, real_c)
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt.step()
            self.untoggle_optimizer(opt)
            logs.update(phase_logs)
        real_logits = logs.pop("_real_logits", None)
        if real_logits is not None and hasattr(self.augment, "accumulate"):
            rt = self.augment.accumulate(real_logits, b)
            if rt is not None:
                logs["train/ada_rt"] = rt

        # Counters are per-rank batch x world size: every rank sees the same numbers.
        world = self.trainer.world_size if self._trainer is not None else 1
        self.nimg += b * world
        self.batches += 1
        self._update_ema(b * world)

        logs["train/kimg"] = self.kimg
        if self.augment is not None and hasattr(self.augment, "p"):
            logs["train/aug_p"] = float(self.augment.p)
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=b)
        self.log("kimg", self.kimg, prog_bar=True, on_step=True, on_epoch=False, batch_size=b)

        every = self.hparams.sample_every_n_batches
        if every and (step + 1) % every == 0:
            self.save_samples()
        max_kimg = self.hparams.max_kimg
        if max_kimg is not None and self.kimg >= max_kimg:
            self.stop_reason = f"reached max_kimg={max_kimg} ({self.kimg:.2f} kimg)"
            self.trainer.should_stop = True

    @torch.no_grad()
    def _update_ema(self, batch_images: int) -> None:
        ema_nimg = self.hparams.ema_kimg * 1000
        if self.hparams.ema_rampup is not None:
            ema_nimg = min(ema_nimg, float(self.nimg) * self.hparams.ema_rampup)
        beta = 0.5 ** (batch_images / max(ema_nimg, 1e-8))
        ema_update(self.G_ema, self.G, beta)

    # ------------------------------------------------------------------ samples and realism

    @torch.no_grad()
    def generate(
        self, z: torch.Tensor, truncation_psi: float = 1.0, c: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Images ``[B, 3, R, R]`` in about ``[-1, 1]`` from ``G_ema`` with constant noise; a
        conditional GAN draws the classes ``c`` (default: :meth:`cycle_classes`)."""
        z = z.to(self.device)
        if not self.c_dim:
            return self.G_ema(z, truncation_psi=truncation_psi, noise_mode="const")
        c = self.cycle_classes(len(z)) if c is None else c
        return self.G_ema(z, truncation_psi=truncation_psi, noise_mode="const", c=c.to(self.device))

    def save_samples(self) -> Path | None:
        """Write the fixed-latent sample grid as PNG in the run folder and to image loggers."""
        if self._trainer is None or not self.trainer.is_global_zero:
            return None
        imgs = self.generate(self.fixed_z, c=self.fixed_c)
        n = len(imgs)  # a conditional GAN's grid has one class per column when they fit
        nrow = self.c_dim if self.c_dim and n % self.c_dim == 0 else int(np.ceil(np.sqrt(n)))
        arr = grid(imgs, nrow=nrow)
        out = Path(self.trainer.default_root_dir) / "samples" / f"kimg{self.kimg:09.3f}.png"
        save_png(arr, out)
        log_image(
            self.loggers, "samples/fixed_z", arr, int(self.batches), caption=f"kimg {self.kimg:.2f}"
        )
        return out

    def on_validation_epoch_start(self) -> None:
        cfg = self.hparams.realism
        if cfg and self.realism is None:
            self.realism = RealismMetric(cfg.get("backend", "auto"), size=cfg.get("size", 128)).to(
                self.device
            )
            log.info("realism metric during training: %s", self.realism.name)
        if self.realism is not None:
            self.realism.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.realism is None:
            return
        real_img = batch["image"]
        self.realism.update(real_img, real=True)
        fakes = self.generate(self.sample_z(real_img.shape[0]), c=self.batch_classes(batch))
        self.realism.update(fakes.clamp(-1, 1), real=False)

    def on_validation_epoch_end(self) -> None:
        if self.realism is not None:
            values = self.realism.compute_all()
            for name, value in values.items():
                self.log(f"val/{name}", value, sync_dist=True)
            self.log("val/fd", values[self.realism.name], prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            self.save_samples()

    def on_train_end(self) -> None:
        self.save_samples()

    # ------------------------------------------------------------------ checkpoints and export

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"kimg": self.kimg}

    def export(self, output_dir: str | Path) -> Path:
        """Write ``generator.pt`` (G_ema weights + config) into ``output_dir``: the best
        snapshot's G_ema with ``export_best`` when it beats the last (see the class docstring)."""
        path = Path(output_dir) / "generator.pt"
        best = self._best_snapshot() if self.hparams.get("export_best", True) else None
        if best is None:
            export_generator(self.G_ema, path)
            return path
        ckpt_path, best_score, last_score = best
        state = safe_torch_load(ckpt_path)["state_dict"]
        g = copy.deepcopy(self.G_ema)
        g.load_state_dict(
            {k[len("G_ema.") :]: v for k, v in state.items() if k.startswith("G_ema.")}
        )
        export_generator(g, path, meta={"snapshot": Path(ckpt_path).name, "val_fd": best_score})
        export_generator(self.G_ema, Path(output_dir) / "generator_last.pt")
        log.info(
            "collapse guard: generator.pt is the best snapshot %s (val/fd %.2f; the last %.2f is "
            "generator_last.pt)", Path(ckpt_path).name, best_score, last_score,
        )  # fmt: skip
        return path

    def _best_snapshot(self) -> tuple[str, float, float] | None:
        """(path, its val/fd, the last val/fd) of the kept best snapshot, if it beats the last."""
        if self._trainer is None:
            return None
        last = self.trainer.callback_metrics.get("val/fd")
        for cb in self.trainer.checkpoint_callbacks:
            if getattr(cb, "monitor", None) != "val/fd" or not cb.best_model_path:
                continue
            if cb.best_model_score is None or not Path(cb.best_model_path).is_file():
                continue
            best = float(cb.best_model_score)
            if last is None or best < float(last):
                return cb.best_model_path, best, float("nan") if last is None else float(last)
        return None


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    """``ema = beta * ema + (1 - beta) * net`` for parameters; buffers are copied.

    One multi-tensor ``lerp_`` and one ``copy_`` over all tensors (a loop launched ~150 ops).
    """
    ema_params, params = list(ema.parameters()), [p.detach() for p in net.parameters()]
    ema_buffers, buffers = list(ema.buffers()), list(net.buffers())
    if len(ema_params) != len(params) or len(ema_buffers) != len(buffers):
        raise ValueError("ema_update: the two networks have different tensors")
    if params:
        torch._foreach_lerp_(ema_params, params, 1 - beta)
    if buffers:
        torch._foreach_copy_(ema_buffers, buffers)
