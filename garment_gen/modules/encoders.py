"""Stage ``encoders``: shape and texture encoders driving a frozen StyleGAN2 generator.

The generator from ``stage=pretrain`` (``generator.pt``) is frozen for real:
``requires_grad_(False)`` and kept in eval mode whatever Lightning does. The
encoders map (mask, texture) to W+ (``[B, num_ws, w_dim]``, shape and texture
styles added layer by layer) and are trained to reconstruct the original
garment. The first loss is ``w_l2 * L2 + w_lpips * LPIPS``; with ``w_shape > 0``
the second loss adds ``w_shape * L1(segmenter(generated), mask)``. Training
stops when the active loss on validation falls below its threshold.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from garment_gen.errors import ConfigError
from garment_gen.modules.base import StageModule
from garment_gen.modules.base import plain as _plain
from garment_gen.utils.images import grid, log_image, save_png

log = logging.getLogger(__name__)


class EncodersModule(StageModule):
    """Fit :class:`~garment_gen.networks.encoders.GarmentEncoders` on a frozen generator.

    Args:
        generator: path to ``generator.pt`` from ``stage=pretrain``.
        encoders: Hydra config of ``GarmentEncoders``; ``num_ws``, ``w_dim``,
            ``resolution`` and ``w_avg`` come from the generator.
        optimizer: partial optimizer config.
        resolution: image side from the datamodule (must match the generator).
        loss: ``w_l2``, ``w_lpips``, ``w_shape``, ``lpips_net``, ``segmenter``
            (path to ``segmenter.pt``, needed when ``w_shape > 0``),
            ``threshold_first``, ``threshold_second``.
        n_val_images: rows in the validation grid (mask | texture | generated | original).
    """

    stage_name = "encoders"
    # The frozen generator and the loss networks are rebuilt from their files.
    frozen_prefixes = ("G.", "loss_fn.")

    def __init__(
        self,
        generator: str,
        encoders: DictConfig | dict,
        optimizer: DictConfig | dict,
        resolution: int,
        loss: DictConfig | dict | None = None,
        n_val_images: int = 8,
        noise_mode: str = "const",
    ):
        super().__init__()
        from garment_gen.losses.reconstruction import ReconstructionLoss
        from garment_gen.networks.segmenter import load_segmenter
        from garment_gen.networks.stylegan2 import load_generator

        loss = dict(_plain(loss) or {})
        self.save_hyperparameters(
            {
                "generator": str(generator),
                "encoders": _plain(encoders),
                "optimizer": _plain(optimizer),
                "resolution": resolution,
                "loss": loss,
                "n_val_images": n_val_images,
                "noise_mode": noise_mode,
            }
        )
        try:
            self.G = load_generator(generator)
        except ValueError as exc:
            raise ConfigError(f"model.generator: {exc}") from None
        if self.G.resolution != resolution:
            raise ConfigError(
                f"model.generator={generator} makes {self.G.resolution} px images but the data is {resolution} px; "
                f"set data.resolution={self.G.resolution}"
            )
        self.G.requires_grad_(False).eval()
        self.encoders = hydra.utils.instantiate(
            self.hparams.encoders,
            num_ws=self.G.num_ws,
            w_dim=self.G.w_dim,
            resolution=resolution,
            w_avg=self.G.w_avg.detach().clone(),
        )
        w_shape = float(loss.get("w_shape", 0.0))
        segmenter = None
        if w_shape > 0:
            seg_path = loss.get("segmenter")
            if not seg_path:
                raise ConfigError(
                    "loss.w_shape > 0 needs a segmenter: set loss.segmenter=PATH/segmenter.pt "
                    "(from `python -m garment_gen.train stage=segmenter`), or loss.w_shape=0"
                )
            segmenter = load_segmenter(seg_path)
        self.loss_fn = ReconstructionLoss(
            w_l2=float(loss.get("w_l2", 1.0)),
            w_lpips=float(loss.get("w_lpips", 0.8)),
            w_shape=w_shape,
            lpips_net=loss.get("lpips_net", "alex"),
            segmenter=segmenter,
        )
        self.active_loss = "second" if w_shape > 0 else "first"
        key = f"threshold_{self.active_loss}"
        self.stopping_threshold = loss.get(key)
        self._val_batch: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ frozen parts stay frozen

    def train(self, mode: bool = True) -> EncodersModule:
        super().train(mode)
        self.G.eval()
        self.loss_fn.train(mode)  # keeps its LPIPS / segmenter in eval itself
        return self

    # ------------------------------------------------------------------ forward and steps

    def forward(self, shape_mask: torch.Tensor, texture_img: torch.Tensor) -> torch.Tensor:
        """Mask ``[B, 1, R, R]`` {0,1} + texture ``[B, 3, R, R]`` [-1,1] -> image ``[B, 3, R, R]``."""
        ws = self.encoders(shape_mask, texture_img)
        return self.G.synthesis(ws, noise_mode=self.hparams.noise_mode)

    def _step(self, batch: dict[str, Any], prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        fake_img = self(batch["mask"], batch["texture"])
        total, terms = self.loss_fn(fake_img, batch["image"], batch["mask"])
        b = fake_img.shape[0]
        self.log_dict(
            {f"{prefix}/{k}": v for k, v in terms.items()},
            batch_size=b,
            sync_dist=prefix != "train",
            prog_bar=False,
        )
        self.log(
            f"{prefix}/objective",
            terms[self.active_loss],
            batch_size=b,
            prog_bar=True,
            sync_dist=prefix != "train",
        )
        return total, fake_img

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        total, _ = self._step(batch, "train")
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, fake_img = self._step(batch, "val")
        if self.loss_fn.segmenter is not None:
            with torch.no_grad():
                pred = (self.loss_fn.segmenter(fake_img) > 0).float()
                inter = (pred * batch["mask"]).flatten(1).sum(1)
                union = ((pred + batch["mask"]) > 0).float().flatten(1).sum(1).clamp(min=1)
                self.log(
                    "val/shape_iou",
                    (inter / union).mean(),
                    batch_size=fake_img.shape[0],
                    sync_dist=True,
                )
        if batch_idx == 0:
            n = min(self.hparams.n_val_images, fake_img.shape[0])
            self._val_batch = {
                "mask": batch["mask"][:n] * 2 - 1,
                "texture": batch["texture"][:n],
                "generated": fake_img[:n].clamp(-1, 1),
                "original": batch["image"][:n],
            }

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

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

    def configure_optimizers(self):
        return hydra.utils.instantiate(self.hparams.optimizer)(self.encoders.parameters())

    # ------------------------------------------------------------------ export

    def export(self, output_dir: str | Path) -> Path:
        """Write ``garment_model.pt``: generator + encoders (+ segmenter) + alignment settings."""
        from garment_gen.data.dataset import read_dataset_meta
        from garment_gen.inference import save_garment_model

        data: dict[str, Any] = {"resolution": self.hparams.resolution}
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and getattr(dm, "root", None) is not None:
            meta = read_dataset_meta(dm.root)
            data.update(
                margin=meta.get("settings", {}).get("margin", 0.06),
                background=meta.get("background", [255, 255, 255]),
            )
        metrics = {}
        if self._trainer is not None:
            metrics = {
                k: float(v)
                for k, v in self.trainer.callback_metrics.items()
                if k.startswith("val/")
            }
        return save_garment_model(
            Path(output_dir) / "garment_model.pt",
            self.G,
            self.encoders,
            segmenter=self.loss_fn.segmenter,
            data=data,
            meta={
                "generator_file": self.hparams.generator,
                "loss": self.hparams.loss,
                "val_metrics": metrics,
            },
        )
