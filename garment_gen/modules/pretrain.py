"""Stage ``pretrain``: StyleGAN2 generator + discriminator trained as a GAN.

Manual optimisation with StyleGAN2's phases on every batch:

1. **Dmain**: non-saturating logistic loss on augmented reals and fakes;
2. **Dreg**: lazy R1 on reals every ``d_reg_interval`` batches;
3. **Gmain**: non-saturating loss through the augmented discriminator;
4. **Greg**: path-length regularisation every ``g_reg_interval`` batches;
5. **EMA**: ``g_ema`` follows G with a half-life in kimg and a ramp-up.

Under manual optimisation Lightning's ``global_step`` counts optimizer steps
(several per batch), so the module counts real images itself (``nimg`` / kimg)
and stops at ``max_kimg``. ``g_ema`` is used for every sample, metric and export.
"""

from __future__ import annotations

import copy
import logging
import random
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from garment_gen.losses.adversarial import (
    d_logistic_loss,
    g_nonsaturating_loss,
    lazy_reg_adam_hparams,
    path_length_penalty,
    r1_penalty,
)
from garment_gen.utils.images import grid, log_image, save_png

log = logging.getLogger(__name__)


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def capture_rng() -> dict[str, Any]:
    """Every RNG state a training run depends on, as tensors/ints (safe for ``weights_only`` loads)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_key": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "python": _py_state_to_list(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _py_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_key"].numpy().astype(np.uint32),
            state["numpy_pos"],
            *state["numpy_gauss"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class PretrainModule(pl.LightningModule):
    """StyleGAN2 GAN training.

    Args:
        generator / discriminator: Hydra configs (``_target_`` + kwargs) of the
            networks; ``resolution`` is filled in from the data.
        g_optimizer / d_optimizer: partial optimizer configs (``_partial_: true``);
            lr and betas are adjusted here for lazy regularisation.
        augment: config of :class:`~garment_gen.losses.augment.AdaptiveAugment`, or None.
        loss: ``r1_gamma``, ``d_reg_interval``, ``pl_weight``, ``g_reg_interval``,
            ``pl_batch_shrink``, ``pl_decay``.
        resolution: image side, passed by ``train()`` from the datamodule.
        ema_kimg / ema_rampup: G_ema half-life in thousands of images, and the
            ramp-up (half-life at most ``rampup * kimg so far``).
        max_kimg: stop after this many thousand real images (None: no limit).
        sample_every_n_batches / n_samples: sample grids from fixed latents.
        realism: ``{backend: auto|fid|fd_vgg, size, every_n_val}``; None disables it.
    """

    def __init__(
        self,
        generator: DictConfig | dict,
        discriminator: DictConfig | dict,
        g_optimizer: DictConfig | dict,
        d_optimizer: DictConfig | dict,
        resolution: int,
        loss: DictConfig | dict | None = None,
        augment: DictConfig | dict | None = None,
        ema_kimg: float = 10.0,
        ema_rampup: float | None = 0.05,
        max_kimg: float | None = None,
        sample_every_n_batches: int = 500,
        n_samples: int = 16,
        realism: DictConfig | dict | None = None,
        compile: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(
            {
                "generator": _plain(generator),
                "discriminator": _plain(discriminator),
                "g_optimizer": _plain(g_optimizer),
                "d_optimizer": _plain(d_optimizer),
                "resolution": resolution,
                "loss": _plain(loss) or {},
                "augment": _plain(augment),
                "ema_kimg": ema_kimg,
                "ema_rampup": ema_rampup,
                "max_kimg": max_kimg,
                "sample_every_n_batches": sample_every_n_batches,
                "n_samples": n_samples,
                "realism": _plain(realism),
                "compile": compile,
            }
        )
        self.automatic_optimization = False
        hp = self.hparams
        self.G = hydra.utils.instantiate(hp.generator, resolution=resolution)
        self.D = hydra.utils.instantiate(hp.discriminator, resolution=resolution)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False).eval()
        self.augment = hydra.utils.instantiate(hp.augment) if hp.augment else None
        lcfg = {
            "r1_gamma": 0.1,
            "d_reg_interval": 16,
            "pl_weight": 2.0,
            "g_reg_interval": 4,
            "pl_batch_shrink": 2,
            "pl_decay": 0.01,
        }
        unknown = set(hp.loss) - set(lcfg) - {"_target_"}
        if unknown:
            raise ValueError(
                f"unknown pretrain loss settings: {sorted(unknown)}; valid: {sorted(lcfg)}"
            )
        lcfg.update({k: v for k, v in hp.loss.items() if k in lcfg})
        self.loss_cfg = lcfg
        self.register_buffer("nimg", torch.zeros((), dtype=torch.long))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))
        self.register_buffer("pl_mean", torch.zeros(()))
        self.register_buffer(
            "fixed_z",
            torch.randn(n_samples, self.G.z_dim, generator=torch.Generator().manual_seed(0)),
        )
        self.realism = None  # built lazily on first validation (loads VGG weights)
        self.stop_reason: str | None = None
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
        g_opt = self._make_opt(
            hp.g_optimizer,
            self.G.parameters(),
            self.loss_cfg["g_reg_interval"] if self.loss_cfg["pl_weight"] > 0 else 0,
        )
        d_opt = self._make_opt(
            hp.d_optimizer,
            self.D.parameters(),
            self.loss_cfg["d_reg_interval"] if self.loss_cfg["r1_gamma"] > 0 else 0,
        )
        return [g_opt, d_opt]

    @staticmethod
    def _make_opt(cfg: dict, params, reg_interval: int):
        cfg = dict(cfg)
        lr, betas = lazy_reg_adam_hparams(
            cfg.pop("lr", 0.0025), tuple(cfg.pop("betas", (0.0, 0.99))), reg_interval
        )
        factory = hydra.utils.instantiate(cfg)
        return factory(params, lr=lr, betas=betas)

    # ------------------------------------------------------------------ training

    def _aug(self, x: torch.Tensor) -> torch.Tensor:
        return self.augment(x) if self.augment is not None else x

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.G.z_dim, device=self.device)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        real_img = batch["image"]
        b = real_img.shape[0]
        opt_g, opt_d = self.optimizers()
        lc = self.loss_cfg
        step = int(self.batches)
        logs: dict[str, torch.Tensor | float] = {}

        # Dmain
        self.toggle_optimizer(opt_d)
        with torch.no_grad():
            fake_img = self.G(self._z(b))
        real_logits = self.D(self._aug(real_img))
        fake_logits = self.D(self._aug(fake_img))
        d_loss = d_logistic_loss(real_logits, fake_logits)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()
        logs["train/d_loss"] = d_loss.detach()
        logs["train/d_real"] = real_logits.detach().mean()
        logs["train/d_fake"] = fake_logits.detach().mean()
        if self.augment is not None:
            rt = self.augment.accumulate(real_logits, b)
            if rt is not None:
                logs["train/ada_rt"] = rt

        # Dreg: lazy R1
        if lc["r1_gamma"] > 0 and step % lc["d_reg_interval"] == 0:
            real_req = real_img.detach().requires_grad_(True)
            r_logits = self.D(self._aug(real_req))
            r1 = r1_penalty(r_logits, real_req)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(
                r1 * (lc["r1_gamma"] / 2) * lc["d_reg_interval"] + r_logits.mean() * 0
            )
            opt_d.step()
            logs["train/r1"] = r1.detach()
        self.untoggle_optimizer(opt_d)

        # Gmain
        self.toggle_optimizer(opt_g)
        fake_img = self.G(self._z(b), update_w_avg=True)
        g_loss = g_nonsaturating_loss(self.D(self._aug(fake_img)))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        logs["train/g_loss"] = g_loss.detach()

        # Greg: path length
        if lc["pl_weight"] > 0 and step % lc["g_reg_interval"] == 0:
            n = max(1, b // lc["pl_batch_shrink"])
            ws = self.G.mapping(self._z(n))
            img = self.G.synthesis(ws)
            penalty, lengths, new_mean = path_length_penalty(img, ws, self.pl_mean, lc["pl_decay"])
            self.pl_mean.copy_(new_mean)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(penalty * lc["pl_weight"] * lc["g_reg_interval"] + img.mean() * 0)
            opt_g.step()
            logs["train/pl_penalty"] = penalty.detach()
            logs["train/pl_length"] = lengths.detach().mean()
        self.untoggle_optimizer(opt_g)

        # Counters are per-rank batch x world size: every rank sees the same numbers.
        world = self.trainer.world_size if self._trainer is not None else 1
        self.nimg += b * world
        self.batches += 1
        self._update_ema(b * world)

        logs["train/kimg"] = self.kimg
        if self.augment is not None:
            logs["train/aug_p"] = float(self.augment.p)
        self.log_dict(
            logs, prog_bar=False, on_step=True, on_epoch=False, sync_dist=False, batch_size=b
        )
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
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            p_ema.lerp_(p.detach(), 1 - beta)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            b_ema.copy_(b)

    # ------------------------------------------------------------------ samples and realism

    @torch.no_grad()
    def generate(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        """Images ``[B, 3, R, R]`` in about ``[-1, 1]`` from ``g_ema`` with constant noise."""
        return self.G_ema(z.to(self.device), truncation_psi=truncation_psi, noise_mode="const")

    def save_samples(self) -> Path | None:
        """Write the fixed-latent sample grid as PNG in the run folder and to image loggers."""
        if self._trainer is None or not self.trainer.is_global_zero:
            return None
        imgs = self.generate(self.fixed_z)
        arr = grid(imgs, nrow=int(np.ceil(np.sqrt(len(imgs)))))
        out = Path(self.trainer.default_root_dir) / "samples" / f"kimg{self.kimg:09.3f}.png"
        save_png(arr, out)
        log_image(
            self.loggers, "samples/fixed_z", arr, int(self.batches), caption=f"kimg {self.kimg:.2f}"
        )
        return out

    def on_validation_epoch_start(self) -> None:
        cfg = self.hparams.realism
        if cfg and self.realism is None:
            from garment_gen.metrics import RealismMetric

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
        self.realism.update(self.generate(self._z(real_img.shape[0])).clamp(-1, 1), real=False)

    def on_validation_epoch_end(self) -> None:
        if self.realism is not None:
            value = self.realism.compute()
            self.log(f"val/{self.realism.name}", value, sync_dist=True)
            self.log("val/fd", value, prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            self.save_samples()

    def on_train_end(self) -> None:
        self.save_samples()

    # ------------------------------------------------------------------ checkpoints and export

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["garment_gen"] = {"rng": capture_rng(), "kimg": self.kimg}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get("garment_gen", {})
        if "rng" in extra:
            restore_rng(extra["rng"])

    def export(self, output_dir: str | Path) -> Path:
        """Write ``generator.pt`` (g_ema weights + config) into ``output_dir``."""
        from garment_gen.networks.stylegan2 import export_generator

        path = Path(output_dir) / "generator.pt"
        export_generator(self.G_ema, path)
        return path
