"""Stage ``segmenter``: garment/background segmentation (segmentation-models-pytorch).

Trained on the GarmentDataModule's masks (GrabCut bootstrap masks at first) from
two kinds of input: the aligned garment on white (``image``), which is what the
shape loss segments, and the same crop with its real background (``photo``),
which is what data preparation segments. BCE + Dice; IoU on validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from segmentation_models_pytorch.losses import DiceLoss
from torchmetrics.classification import BinaryJaccardIndex

from garment_gen.modules.base import StageModule
from garment_gen.modules.base import plain as _plain
from garment_gen.networks.segmenter import export_segmenter
from garment_gen.utils.images import grid, log_image, save_png


class SegmenterModule(StageModule):
    """Train a :class:`~garment_gen.networks.segmenter.Segmenter`.

    Args:
        net: Hydra config of the segmenter network (``resolution`` filled from the data).
        optimizer: partial optimizer config.
        resolution: image side, from the datamodule.
        aspect: the data's ``"W:H"`` (the network is fully convolutional: any aspect).
        loss: ``{w_bce, w_dice}``.
        inputs: which batch keys to segment: ``image`` (garment on white) and/or
            ``photo`` (real background).
    """

    stage_name = "segmenter"

    def __init__(
        self,
        net: DictConfig | dict,
        optimizer: DictConfig | dict,
        resolution: int,
        aspect: str = "1:1",
        loss: DictConfig | dict | None = None,
        inputs: list[str] | tuple[str, ...] = ("image", "photo"),
    ):
        super().__init__()
        loss = _plain(loss) or {}
        self.save_hyperparameters(
            {
                "net": _plain(net),
                "optimizer": _plain(optimizer),
                "resolution": resolution,
                "loss": loss,
                "inputs": list(inputs),
            }
        )
        self.net = hydra.utils.instantiate(self.hparams.net, resolution=resolution)
        self.w_bce = float(loss.get("w_bce", 1.0))
        self.w_dice = float(loss.get("w_dice", 1.0))
        self.dice = DiceLoss(mode="binary", from_logits=True)
        self.val_iou = torch.nn.ModuleDict({k: BinaryJaccardIndex() for k in self.hparams.inputs})

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.net(img)

    def _loss(
        self, logits: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        bce = F.binary_cross_entropy_with_logits(logits, mask)
        dice = self.dice(logits, mask)
        total = self.w_bce * bce + self.w_dice * dice
        return total, {"bce": bce.detach(), "dice": dice.detach(), "loss": total.detach()}

    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([batch[k] for k in self.hparams.inputs])
        y = batch["mask"].repeat(len(self.hparams.inputs), 1, 1, 1)
        return x, y

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x, y = self._inputs(batch)
        total, terms = self._loss(self(x), y)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=x.shape[0])
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        b = batch["mask"].shape[0]
        x, y = self._inputs(batch)
        logits = self(x)
        total, terms = self._loss(logits, y)
        self.log_dict(
            {f"val/{k}": v for k, v in terms.items()}, batch_size=x.shape[0], sync_dist=True
        )
        for i, key in enumerate(self.hparams.inputs):
            self.val_iou[key].update(
                logits[i * b : (i + 1) * b].sigmoid(), y[i * b : (i + 1) * b].int()
            )
        if batch_idx == 0 and self.trainer.is_global_zero:
            n = min(8, b)
            pred = (logits[:n] > 0).float() * 2 - 1
            panel = torch.cat(
                [
                    batch[self.hparams.inputs[0]][:n],
                    pred.expand(-1, 3, -1, -1),
                    (batch["mask"][:n] * 2 - 1).expand(-1, 3, -1, -1),
                ]
            )
            arr = grid(panel, nrow=n)
            save_png(
                arr,
                Path(self.trainer.default_root_dir)
                / "val_images"
                / f"step{self.global_step:07d}.png",
            )
            log_image(self.loggers, "val/image|pred|target", arr, self.global_step)

    def on_validation_epoch_end(self) -> None:
        ious = {}
        for key, metric in self.val_iou.items():
            ious[key] = metric.compute()
            metric.reset()
            self.log(f"val/iou_{key}", ious[key])
        self.log("val/iou", torch.stack(list(ious.values())).mean(), prog_bar=True)

    def configure_optimizers(self):
        return hydra.utils.instantiate(self.hparams.optimizer)(self.parameters())

    def export(self, output_dir: str | Path) -> Path:
        """Write ``segmenter.pt`` (weights + config; loadable without Lightning)."""
        return export_segmenter(self.net, Path(output_dir) / "segmenter.pt")
