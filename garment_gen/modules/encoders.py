"""Stage ``encoders``: shape and texture encoders driving the frozen pretrained generator.

The module trains a :class:`~garment_gen.networks.garment_model.GarmentModel` built on the
``generator.pt`` of ``stage=pretrain``. The generator is frozen for real (``requires_grad``
off, eval mode whatever Lightning does) unless ``model.tune_generator`` frees part of it (beyond
the method, PTI-style). Each training batch runs, in order:

1. **adversarial D step** (``loss.w_adv > 0``): a discriminator (by default a projected one on
   frozen ImageNet features) learns to tell real garments from the model's outputs;
2. **reconstruction**: mask + occluded texture of garment A -> A; first loss
   ``w_l2 * L2 + w_lpips * LPIPS``, second loss adds ``w_shape * L1(segmenter(output), mask)``;
3. **cross pairs** (``loss.w_cross_texture`` / ``w_cross_shape`` / ``w_cross_paste > 0``): A's
   mask with the texture of another garment B of the batch; no ground truth exists, so the
   output's garment colours are compared with B's
   (:func:`~garment_gen.losses.texture.cross_texture_loss`), its shape with A's mask (the
   segmenter), and the whole with B's garment stretched onto A's shape (a pseudo-target);
4. **realism** (``w_adv``): the hinge generator loss on the outputs of 2 and 3.

Training stops when the active validation loss (first, or second with the shape term) falls
below its threshold. Every number lives in ``conf/loss/encoders.yaml``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from garment_gen.errors import ConfigError
from garment_gen.losses.adversarial import d_hinge_loss, g_hinge_loss
from garment_gen.losses.diffaugment import DiffAugment
from garment_gen.losses.reconstruction import ReconstructionLoss, shape_l1_loss
from garment_gen.losses.texture import cross_texture_loss
from garment_gen.metrics.garment import colour_histograms, hellinger, iou
from garment_gen.modules.base import StageModule, plain
from garment_gen.networks.garment_model import GarmentModel, fit_texture_to_shape
from garment_gen.networks.segmenter import load_segmenter
from garment_gen.networks.serialization import ModelFileError, save_model
from garment_gen.networks.stylegan2 import load_generator
from garment_gen.utils.images import grid, log_image, save_png

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderLossSettings:
    """The ``loss`` group of stage ``encoders`` (``conf/loss/encoders.yaml`` is its only home:
    no field has a default here)."""

    w_l2: float
    w_lpips: float
    lpips_net: str
    w_shape: float
    segmenter: str | None
    threshold_first: float | None
    threshold_second: float | None
    w_cross_texture: float
    w_cross_shape: float
    w_cross_paste: float
    w_adv: float
    discriminator: dict[str, Any] | None
    d_lr: float

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> EncoderLossSettings:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - names - {"_target_"})
        missing = sorted(names - set(cfg))
        if unknown:
            raise ConfigError(
                f"loss: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        if missing:
            raise ConfigError(
                f"loss: missing setting(s) {', '.join(missing)} (see conf/loss/encoders.yaml)"
            )
        values = {k: cfg[k] for k in names}
        for k in (
            "w_l2",
            "w_lpips",
            "w_shape",
            "w_cross_texture",
            "w_cross_shape",
            "w_adv",
            "d_lr",
        ):
            v = values[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"loss.{k}={v!r}: expected a number >= 0")
            values[k] = float(v)
        return cls(**values)

    @property
    def uses_cross(self) -> bool:
        return self.w_cross_texture > 0 or self.w_cross_shape > 0 or self.w_cross_paste > 0


class EncodersModule(StageModule):
    """Fit the encoders of a :class:`GarmentModel` on a frozen generator.

    Args:
        generator: path to ``generator.pt`` from ``stage=pretrain``.
        encoders: Hydra config of ``GarmentEncoders``; ``num_ws``, ``w_dim``, ``resolution``,
            ``w_avg`` and the generator's channels come from the generator.
        optimizer: partial optimizer config (encoders; tuned generator weights get
            ``generator_lr_mul`` times its lr).
        resolution: image side from the datamodule (must match the generator).
        aspect: the data's ``"W:H"`` (must match the generator's).
        loss: :class:`EncoderLossSettings`.
        tune_generator: ``none`` (the method), ``torgb`` or ``all``.
        texture_fit: ``none`` or ``shape`` (see :class:`GarmentModel`).
        composite: ``none`` or ``mask`` (see :class:`GarmentModel`; beyond the method).
        generator_lr_mul: learning-rate factor of tuned generator weights.
        n_val_images: rows in the validation grid (mask | texture | generated | original).
        noise_mode: generator noise while training and validating (``const``: the fixed noise
            generation uses).
    """

    stage_name = "encoders"

    def __init__(
        self,
        generator: str,
        encoders: DictConfig | dict,
        optimizer: DictConfig | dict,
        resolution: int,
        aspect: str = "1:1",
        loss: DictConfig | dict | None = None,
        tune_generator: str = "none",
        texture_fit: str = "none",
        composite: str = "none",
        generator_lr_mul: float = 0.1,
        n_val_images: int = 8,
        noise_mode: str = "const",
    ):
        super().__init__()
        settings = EncoderLossSettings.from_config(dict(plain(loss) or {}))
        self.save_hyperparameters(
            {
                "generator": str(generator),
                "encoders": plain(encoders),
                "optimizer": plain(optimizer),
                "resolution": resolution,
                "aspect": aspect,
                "loss": dict(plain(loss) or {}),
                "tune_generator": tune_generator,
                "texture_fit": texture_fit,
                "composite": composite,
                "generator_lr_mul": generator_lr_mul,
                "n_val_images": n_val_images,
                "noise_mode": noise_mode,
            }
        )
        self.automatic_optimization = False
        self.settings = settings
        try:
            g = load_generator(generator)
        except ModelFileError as exc:
            raise ConfigError(f"model.generator: {exc}") from None
        if g.resolution != resolution:
            raise ConfigError(
                f"model.generator={generator} makes {g.resolution} px images but the data is {resolution} px; "
                f"set data.resolution={g.resolution}"
            )
        if g.aspect != aspect:
            raise ConfigError(
                f"model.generator={generator} draws {g.aspect} images but the data is {aspect}; "
                f"train on a dataset prepared with aspect={g.aspect}"
            )
        segmenter = None
        if settings.w_shape > 0 or settings.w_cross_shape > 0:
            if not settings.segmenter:
                raise ConfigError(
                    "loss.w_shape / loss.w_cross_shape > 0 needs a segmenter: set "
                    "loss.segmenter=PATH/segmenter.pt (from `python -m garment_gen.train "
                    "stage=segmenter`), or set those weights to 0"
                )
            segmenter = load_segmenter(settings.segmenter)
        enc_cfg = dict(self.hparams.encoders)
        target = enc_cfg.pop("_target_", None)
        if target and not target.endswith("GarmentEncoders"):
            raise ConfigError(f"model.encoders._target_={target}: expected GarmentEncoders")
        try:
            self.model = GarmentModel.from_generator(
                g,
                segmenter=segmenter,
                tune_generator=tune_generator,
                texture_fit=texture_fit,
                composite=composite,
                resolution=resolution,
                **enc_cfg,
            )
        except ValueError as exc:  # a choice that does not exist (injection, texture_fit, ...)
            raise ConfigError(f"model: {exc}") from None
        self.loss_fn = ReconstructionLoss(
            w_l2=settings.w_l2,
            w_lpips=settings.w_lpips,
            w_shape=settings.w_shape,
            lpips_net=settings.lpips_net,
            segmenter=segmenter if settings.w_shape > 0 else None,
        )
        self.disc = None
        self.disc_augment = None
        if settings.w_adv > 0:
            if not settings.discriminator:
                raise ConfigError("loss.w_adv > 0 needs loss.discriminator (a _target_ config)")
            self.disc = hydra.utils.instantiate(
                settings.discriminator, resolution=resolution, aspect=aspect
            )
            self.disc_augment = DiffAugment()
        self.active_loss = "second" if settings.w_shape > 0 else "first"
        self.stopping_threshold = getattr(settings, f"threshold_{self.active_loss}")
        # The frozen generator, segmenter and loss networks are rebuilt from their files; a
        # tuned generator is trained state and stays in the checkpoints.
        frozen = ["model.segmenter.", "loss_fn."]
        if tune_generator == "none":
            frozen.append("model.generator.")
        self.frozen_prefixes = tuple(frozen)
        self._val_batch: dict[str, torch.Tensor] | None = None
        log.info(
            "encoders: injection=%s (features at %s), tune_generator=%s, cross pairs %s, adversarial %s",
            self.model.encoders.injection,
            self.model.encoders.feature_resolutions or "-",
            tune_generator,
            "on" if settings.uses_cross else "off",
            "on" if self.disc is not None else "off",
        )

    # ------------------------------------------------------------------ frozen parts stay frozen

    def train(self, mode: bool = True) -> EncodersModule:
        super().train(mode)
        self.model.train(mode)  # keeps the generator and segmenter in eval
        self.loss_fn.train(mode)  # keeps its LPIPS / segmenter in eval itself
        return self

    # ------------------------------------------------------------------ forward and steps

    def forward(self, shape_mask: torch.Tensor, texture_img: torch.Tensor) -> torch.Tensor:
        """Mask ``[B, 1, R, R]`` {0,1} + texture ``[B, 3, R, R]`` [-1,1] -> image ``[B, 3, R, R]``."""
        return self.model(shape_mask, texture_img, noise_mode=self.hparams.noise_mode)

    def configure_optimizers(self):
        hp = self.hparams
        factory = hydra.utils.instantiate(hp.optimizer)
        groups = [{"params": list(self.model.encoders.parameters())}]
        tuned = [p for p in self.model.generator.parameters() if p.requires_grad]
        if tuned:
            lr = factory.keywords.get("lr", 1e-3) * hp.generator_lr_mul
            groups.append({"params": tuned, "lr": lr})
        opts = [factory(groups)]
        if self.disc is not None:
            params = [p for p in self.disc.parameters() if p.requires_grad]
            opts.append(torch.optim.Adam(params, lr=self.settings.d_lr, betas=(0.0, 0.99)))
        return opts

    def _opts(self) -> list[torch.optim.Optimizer]:
        opts = self.optimizers()
        return list(opts) if isinstance(opts, (list, tuple)) else [opts]

    @staticmethod
    def _cross(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pair every garment's mask with the next garment's texture (a derangement for B > 1)."""
        return {
            "mask": batch["mask"],
            "texture": batch["texture"].roll(1, 0),
            "ref_image": batch["image"].roll(1, 0),
            "ref_mask": batch["mask"].roll(1, 0),
        }

    def _cross_terms(
        self, fake_img: torch.Tensor, pair: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        total = fake_img.new_zeros(())
        terms: dict[str, torch.Tensor] = {}
        if s.w_cross_texture > 0:
            tex, tex_terms = cross_texture_loss(
                fake_img, pair["mask"], pair["ref_image"], pair["ref_mask"]
            )
            total = total + s.w_cross_texture * tex
            terms.update(tex_terms)
        if s.w_cross_shape > 0:
            shape = shape_l1_loss(self.model.segmenter(fake_img), pair["mask"])
            total = total + s.w_cross_shape * shape
            terms["cross_shape"] = shape.detach()
        if s.w_cross_paste > 0:
            # A pseudo-target: B's whole garment stretched onto A's shape (what the paste
            # baseline draws); L2 + LPIPS with the reconstruction's weights.
            target = fit_texture_to_shape(
                pair["mask"], pair["ref_image"], self.model.data["background"]
            )
            paste, _ = self.loss_fn(fake_img, target, pair["mask"])
            total = total + s.w_cross_paste * paste
            terms["cross_paste"] = paste.detach()
        return total, terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        opts = self._opts()
        b = batch["mask"].shape[0]
        logs: dict[str, torch.Tensor] = {}
        pair = self._cross(batch) if self.settings.uses_cross and b > 1 else None
        if self.disc is not None:
            logs.update(self._d_step(batch, pair, opts[1]))

        opt = opts[0]
        fake_img = self(batch["mask"], batch["texture"])
        total, terms = self.loss_fn(fake_img, batch["image"], batch["mask"])
        logs.update({f"train/{k}": v for k, v in terms.items()})
        logs["train/objective"] = terms[self.active_loss]
        fakes = [fake_img]
        if pair is not None:
            cross_img = self(pair["mask"], pair["texture"])
            cross_total, cross_terms = self._cross_terms(cross_img, pair)
            total = total + cross_total
            logs.update({f"train/{k}": v for k, v in cross_terms.items()})
            fakes.append(cross_img)
        if self.disc is not None:
            g_adv = g_hinge_loss(self.disc(self.disc_augment(torch.cat(fakes))))
            total = total + self.settings.w_adv * g_adv
            logs["train/g_adv"] = g_adv.detach()
        logs["train/total"] = total.detach()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(total)
        opt.step()
        objective = logs.pop("train/objective")
        self.log_dict(logs, batch_size=b, on_step=True, on_epoch=False)
        self.log(
            "train/objective", objective, prog_bar=True, batch_size=b, on_step=True, on_epoch=False
        )

    def _d_step(
        self,
        batch: dict[str, torch.Tensor],
        pair: dict[str, torch.Tensor] | None,
        opt: torch.optim.Optimizer,
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            fakes = [self(batch["mask"], batch["texture"])]
            if pair is not None:
                fakes.append(self(pair["mask"], pair["texture"]))
            fake_img = torch.cat(fakes).clamp(-1, 1)
        real_logits = self.disc(self.disc_augment(batch["image"]))
        fake_logits = self.disc(self.disc_augment(fake_img))
        d_loss = d_hinge_loss(real_logits, fake_logits)
        self.toggle_optimizer(opt)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt.step()
        self.untoggle_optimizer(opt)
        return {"train/d_loss": d_loss.detach(), "train/d_real": real_logits.detach().mean()}

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        b = batch["mask"].shape[0]
        fake_img = self(batch["mask"], batch["texture"])
        _, terms = self.loss_fn(fake_img, batch["image"], batch["mask"])
        logs = {f"val/{k}": v for k, v in terms.items()}
        seg = self.model.segmenter
        if seg is not None:
            logs["val/shape_iou"] = iou((seg(fake_img) > 0).float(), batch["mask"]).mean()
        if b > 1:
            pair = self._cross(batch)
            cross_img = self(pair["mask"], pair["texture"]).clamp(-1, 1)
            hist = hellinger(
                colour_histograms(cross_img, pair["mask"]),
                colour_histograms(pair["ref_image"], pair["ref_mask"]),
            )
            logs["val/cross_hist_hellinger"] = hist.mean()
            if seg is not None:
                logs["val/cross_iou_segmenter"] = iou(
                    (seg(cross_img) > 0).float(), pair["mask"]
                ).mean()
        self.log_dict(logs, batch_size=b, sync_dist=True)
        self.log(
            "val/objective", terms[self.active_loss], prog_bar=True, batch_size=b, sync_dist=True
        )
        if batch_idx == 0:
            n = min(self.hparams.n_val_images, b)
            self._val_batch = {
                "mask": batch["mask"][:n] * 2 - 1,
                "texture": batch["texture"][:n],
                "generated": fake_img[:n].clamp(-1, 1),
                "original": batch["image"][:n],
            }

    @torch.no_grad()
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        fake_img = self(batch["mask"], batch["texture"])
        _, terms = self.loss_fn(fake_img, batch["image"], batch["mask"])
        self.log_dict({f"test/{k}": v for k, v in terms.items()}, batch_size=fake_img.shape[0])

    def on_validation_epoch_end(self) -> None:
        if self._val_batch is None or not self.trainer.is_global_zero:
            return
        v = self._val_batch
        rows = torch.stack(
            [v["mask"].expand(-1, 3, -1, -1), v["texture"], v["generated"], v["original"]], 1
        )
        arr = grid(rows.flatten(0, 1), nrow=4)
        save_png(
            arr,
            Path(self.trainer.default_root_dir) / "val_images" / f"step{self.global_step:07d}.png",
        )
        log_image(self.loggers, "val/mask|texture|generated|original", arr, self.global_step)
        self._val_batch = None

    # ------------------------------------------------------------------ export

    def export(self, output_dir: str | Path) -> Path:
        """Write ``garment_model.pt``: the GarmentModel with the data's alignment settings."""
        from garment_gen.data.dataset import read_dataset_meta

        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and getattr(dm, "root", None) is not None:
            meta = read_dataset_meta(dm.root)
            self.model.data.update(
                margin=meta.get("settings", {}).get("margin", self.model.data["margin"]),
                background=[int(c) for c in meta.get("background", self.model.data["background"])],
            )
        metrics = {}
        if self._trainer is not None:
            metrics = {
                k: float(v)
                for k, v in self.trainer.callback_metrics.items()
                if k.startswith("val/")
            }
        return save_model(
            self.model,
            Path(output_dir) / "garment_model.pt",
            meta={
                "generator_file": self.hparams.generator,
                "loss": self.hparams.loss,
                "tune_generator": self.hparams.tune_generator,
                "val_metrics": metrics,
            },
        )
