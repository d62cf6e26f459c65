"""Load a trained garment model and generate garments: shape + texture in, image out.

``garment_model.pt`` (written by ``stage=encoders``) holds the frozen generator,
both encoders, optionally the segmenter, and the data settings used to align
inputs. It is read with ``torch.load(weights_only=True)``: no pickled code.

    from garment_gen.inference import GarmentGenerator
    gen = GarmentGenerator.from_checkpoint("garment_model.pt")
    images = gen.generate(shape="coat_mask.png", texture="stars_tshirt.jpg")

Models shipped inside the package (``garment_gen/assets/models/<name>/garment_model.pt``,
with a ``model_card.md`` beside it, written by ``python -m garment_gen.reference``) load by name:
``GarmentGenerator.from_pretrained("reference")``, or ``pretrained:reference`` wherever a
model path is expected (``python -m garment_gen.generate model=pretrained:reference ...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from garment_gen.errors import GarmentGenError
from garment_gen.networks.garment_model import GarmentModel
from garment_gen.networks.serialization import load_model, save_model

PRETRAINED_DIR = Path(__file__).resolve().parent / "assets" / "models"
PRETRAINED_PREFIX = "pretrained:"


# ----------------------------------------------------------------------------- shipped models


def pretrained_path(name: str) -> Path:
    """Where the shipped model ``name`` lives: ``garment_gen/assets/models/<name>/garment_model.pt``."""
    return PRETRAINED_DIR / name / "garment_model.pt"


def available_pretrained() -> list[str]:
    """Names of the garment models shipped with the package (sorted; empty when none is)."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.parent.name for p in PRETRAINED_DIR.glob("*/garment_model.pt") if p.is_file())


def resolve_model_file(model: str | Path) -> Path:
    """A model argument -> its file: ``pretrained:NAME`` -> the shipped model's file, a path as is.

    Raises:
        GarmentGenError: an unknown or missing shipped model, naming those available and how
            to train one.
    """
    spec = str(model)
    if not spec.startswith(PRETRAINED_PREFIX):
        return Path(model)
    name = spec[len(PRETRAINED_PREFIX) :]
    names = available_pretrained()
    if name in names:
        return pretrained_path(name)
    have = (
        f"available: {', '.join(names)}"
        if names
        else f"none is shipped with this installation ({PRETRAINED_DIR} holds no garment_model.pt)"
    )
    raise GarmentGenError(
        f"no pretrained garment model {name!r}; {have}. Train one with "
        f"`scripts/train_reference.sh pipeline.data=DATASET pipeline.out={PRETRAINED_DIR / (name or 'NAME')}` "
        "(README, 'Reference model'), or load your own file with "
        "GarmentGenerator.from_checkpoint(PATH)"
    )


def save_garment_model(
    path: str | Path,
    model: GarmentModel | nn.Module,
    encoders: nn.Module | None = None,
    segmenter: nn.Module | None = None,
    data: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``garment_model.pt`` atomically (the one save contract, kind ``garment_model``).

    ``model`` is a :class:`GarmentModel`, or (the older call) a generator followed by its
    ``encoders``, optional ``segmenter`` and alignment ``data``. ``dtype=torch.float16`` stores
    the weights in half the space; :func:`load_garment_model` returns float32 modules.
    """
    if encoders is not None:
        model = GarmentModel(model, encoders, segmenter, data)
    elif not isinstance(model, GarmentModel):
        raise GarmentGenError("save_garment_model needs a GarmentModel or (generator, encoders)")
    return save_model(model, path, meta=meta, dtype=dtype)


def load_garment_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[GarmentModel, dict[str, Any]]:
    """Read ``garment_model.pt`` (or ``pretrained:NAME``): ``(GarmentModel in eval mode, meta)``.

    Files of every format version load; float16 weights come back as float32.

    Raises:
        GarmentGenError: missing file, or a file that is not a garment model (e.g.
            ``generator.pt`` or ``segmenter.pt`` given by mistake), each with what to do.
    """
    path = resolve_model_file(path)
    model, meta = load_model(
        path,
        "garment_model",
        map_location,
        hint="fit the encoders with `python -m garment_gen.train stage=encoders` to make one",
    )
    return model, meta


# ----------------------------------------------------------------------------- generation

ImageLike = Any  # str | Path | PIL.Image.Image | np.ndarray | torch.Tensor


def _describe(x: ImageLike) -> str:
    return str(x) if isinstance(x, (str, Path)) else f"<{type(x).__name__}>"


def _as_uint8(x: ImageLike, background: tuple[int, int, int]):
    """Any supported input -> ``(uint8 array [H, W] or [H, W, 3], name)``."""
    import numpy as np
    from PIL import Image

    from garment_gen.data.io import load_rgb
    from garment_gen.errors import BadInputError

    name = _describe(x)
    if isinstance(x, (str, Path)):
        path = Path(x)
        try:
            from garment_gen.data.io import load_gray

            gray = load_gray(path)
        except BadInputError as exc:
            raise GarmentGenError(str(exc)) from None
        rgb = load_rgb(path, background=background)
        if (np.abs(rgb.astype(int) - gray[..., None].astype(int)).max() <= 8) and _looks_binary(
            gray
        ):
            return gray, name
        return rgb, name
    if isinstance(x, Image.Image):
        arr = np.asarray(
            x.convert(
                "RGBA"
                if x.mode in ("RGBA", "LA", "P")
                else ("L" if x.mode in ("1", "L") else "RGB")
            )
        )
        return _on_background(arr, background), name
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().float()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise GarmentGenError(
                    f"{name}: pass one image at a time here, got a batch of {t.shape[0]}"
                )
            t = t[0]
        if t.ndim == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        if t.ndim == 3 and t.shape[2] == 1:
            t = t[..., 0]
        lo, hi = float(t.min()), float(t.max())
        if t.ndim == 2 and lo >= 0 and hi <= 1:
            t = t * 255  # a {0, 1} mask
        elif lo < 0 or hi <= 1:
            t = (t + 1) * 127.5  # an image in [-1, 1]
        return t.round().clamp(0, 255).to(torch.uint8).numpy(), name
    if isinstance(x, np.ndarray):
        arr = x
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        elif arr.dtype != np.uint8:
            arr = np.clip(arr * (255 if arr.max() <= 1 else 1), 0, 255).round().astype(np.uint8)
        return _on_background(arr, background), name
    raise GarmentGenError(
        f"unsupported input type {type(x).__name__}: give a path, PIL image, numpy array or tensor"
    )


def _on_background(arr, background: tuple[int, int, int]):
    """RGBA ``uint8`` -> RGB composited on ``background``; other arrays unchanged."""
    import numpy as np

    if arr.ndim == 3 and arr.shape[2] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255
        arr = (arr[..., :3] * alpha + np.asarray(background) * (1 - alpha)).round().astype(np.uint8)
    return arr


def _looks_binary(gray) -> bool:
    return bool(((gray <= 32) | (gray >= 223)).mean() > 0.97)


class GarmentGenerator:
    """A trained garment model ready to generate.

    Build with :meth:`from_checkpoint` (a file) or :meth:`from_pretrained` (a model shipped
    with the package). :meth:`generate` takes a shape (a mask,
    or a garment photo whose mask is found by the bundled segmenter, else the
    classical method) and a texture (a garment photo, occluded or not, or a
    fabric swatch); both are aligned exactly as the training data was.
    """

    def __init__(
        self,
        model: GarmentModel,
        device: str | torch.device = "cpu",
        meta: dict[str, Any] | None = None,
    ):
        if not isinstance(model, GarmentModel):
            raise GarmentGenError(
                f"GarmentGenerator needs a GarmentModel, got {type(model).__name__}; "
                "load a file with GarmentGenerator.from_checkpoint(PATH)"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.resolution = model.resolution
        self.aspect = model.aspect
        self.height, self.width = model.size  # (R, R) unless the model is portrait (3:4)
        self.margin = float(model.data.get("margin", 0.06))
        self.background = tuple(int(c) for c in model.data.get("background", (255, 255, 255)))
        self.meta = meta or {}

    # The parts, for code that needs them (variations, export, research notebooks).
    @property
    def generator(self) -> nn.Module:
        return self.model.generator

    @property
    def encoders(self) -> nn.Module:
        return self.model.encoders

    @property
    def segmenter(self) -> nn.Module | None:
        return self.model.segmenter

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu"
    ) -> GarmentGenerator:
        """Load ``garment_model.pt``, or ``pretrained:NAME`` (see :func:`load_garment_model`)."""
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise GarmentGenError(
                f"device={device}: CUDA is not available on this machine; use device=cpu"
            )
        model, meta = load_garment_model(path)
        return cls(model, device=device, meta=meta)

    @classmethod
    def from_pretrained(
        cls, name: str = "reference", device: str | torch.device = "cpu"
    ) -> GarmentGenerator:
        """Load a model shipped with the package by name (:func:`available_pretrained`).

        Its ``model_card.md`` (data, training, test metrics, licence) lies beside the file,
        :func:`pretrained_path`. Raises :class:`GarmentGenError` for an unknown name.
        """
        return cls.from_checkpoint(f"{PRETRAINED_PREFIX}{name}", device=device)

    # ------------------------------------------------------------------ input alignment

    def _mask_of(self, rgb, name: str):
        from garment_gen.data.masks import MaskCheck, classical_mask
        from garment_gen.errors import BadInputError

        if self.segmenter is not None:
            mask, source = self.segmenter.predict_mask(rgb), "segmenter"
        else:
            mask, source = classical_mask(rgb, work_size=min(320, max(128, 2 * self.resolution)))
        try:
            MaskCheck(0.02, 0.98)(mask, name, source)
        except BadInputError as exc:
            raise GarmentGenError(str(exc)) from None
        return mask

    def shape_tensor(self, shape: ImageLike) -> torch.Tensor:
        """Aligned shape mask float ``[1, 1, H, W]`` in ``{0, 1}`` from a mask or a garment photo."""
        import numpy as np

        from garment_gen.data.align import align_garment

        arr, name = _as_uint8(shape, self.background)
        if arr.ndim == 3 and _looks_binary(arr.mean(2)):
            arr = arr.mean(2).astype(np.uint8)
        if arr.ndim == 2:
            mask = ((arr >= 128).astype(np.uint8)) * 255
            if not mask.any():
                raise GarmentGenError(
                    f"{name}: shape mask has no garment (all background); white = garment"
                )
            if mask.all():
                raise GarmentGenError(
                    f"{name}: shape mask is all garment; black background, white garment expected"
                )
            rgb = np.repeat(mask[..., None], 3, axis=2)
        else:
            rgb, mask = arr, self._mask_of(arr, name)
        aligned = align_garment(
            rgb, mask, self.resolution, self.margin, self.background, aspect=self.aspect
        )
        return torch.from_numpy(aligned.mask > 127).float()[None, None].to(self.device)

    def texture_tensor(self, texture: ImageLike) -> torch.Tensor:
        """Aligned texture float ``[1, 3, H, W]`` in ``[-1, 1]`` from a garment photo or fabric swatch.

        A garment photo is cut out and aligned like the training textures; an image
        where no garment outline is found (a swatch filling the frame) is used whole.
        """
        import cv2
        import numpy as np

        from garment_gen.data.align import align_garment
        from garment_gen.data.masks import MaskCheck, classical_mask
        from garment_gen.errors import BadInputError

        arr, name = _as_uint8(texture, self.background)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if self.segmenter is not None:
            mask = self.segmenter.predict_mask(arr)
        else:
            mask, _ = classical_mask(arr, work_size=min(320, max(128, 2 * self.resolution)))
        try:
            MaskCheck(0.05, 0.97)(mask, name, "texture")
            out = align_garment(
                arr, mask, self.resolution, self.margin, self.background, aspect=self.aspect
            ).image
        except BadInputError:
            # a swatch: the largest centred crop of the model's aspect, resized
            h, w = arr.shape[:2]
            fh, fw = self.height, self.width
            ch, cw = (h, h * fw // fh) if h * fw <= w * fh else (w * fh // fw, w)
            top, left = (h - ch) // 2, (w - cw) // 2
            crop = arr[top : top + ch, left : left + cw]
            out = cv2.resize(crop, (fw, fh), interpolation=cv2.INTER_AREA)
        t = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).float() / 127.5 - 1
        return t[None].to(self.device)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate_tensors(
        self,
        shape_mask: torch.Tensor,
        texture_img: torch.Tensor,
        truncation_psi: float = 1.0,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Aligned batches in, images out: mask ``[B,1,H,W]``, texture ``[B,3,H,W]`` -> ``[B,3,H,W]`` in [-1, 1] (``H = W = R`` unless portrait)."""
        shape_mask, texture_img = shape_mask.to(self.device), texture_img.to(self.device)
        if seed is None:
            img = self.model(shape_mask, texture_img, truncation_psi, noise_mode="const")
        else:
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                img = self.model(shape_mask, texture_img, truncation_psi, noise_mode="random")
        return img.clamp(-1, 1)

    def generate(
        self,
        shape: ImageLike | list[ImageLike],
        texture: ImageLike | list[ImageLike],
        truncation_psi: float = 1.0,
        seed: int | None = None,
        output: str = "pil",
        batch_size: int = 32,
    ):
        """Generate garments.

        Args:
            shape: a mask or garment photo (path, PIL image, numpy array or tensor), or a list.
            texture: a garment photo or fabric swatch, or a list of the same length as ``shape``
                (a single texture is used for every shape and vice versa).
            truncation_psi: < 1 pulls styles toward the average garment (safer, less faithful).
            seed: None uses the generator's fixed noise; an int draws seeded random noise.
            output: ``pil`` (list of PIL images, or one image for one pair), ``tensor``
                (``[B, 3, R, R]`` in [-1, 1]) or ``numpy`` (``uint8`` ``[B, R, R, 3]``).
        """
        from PIL import Image

        single = not isinstance(shape, (list, tuple)) and not isinstance(texture, (list, tuple))
        shapes = list(shape) if isinstance(shape, (list, tuple)) else [shape]
        textures = list(texture) if isinstance(texture, (list, tuple)) else [texture]
        if len(shapes) == 1 and len(textures) > 1:
            shapes = shapes * len(textures)
        if len(textures) == 1 and len(shapes) > 1:
            textures = textures * len(shapes)
        if len(shapes) != len(textures):
            raise GarmentGenError(
                f"got {len(shapes)} shapes and {len(textures)} textures; give equal numbers or one of either"
            )
        outs = []
        for i in range(0, len(shapes), batch_size):
            masks = torch.cat([self.shape_tensor(s) for s in shapes[i : i + batch_size]])
            texs = torch.cat([self.texture_tensor(t) for t in textures[i : i + batch_size]])
            outs.append(
                self.generate_tensors(
                    masks, texs, truncation_psi, None if seed is None else seed + i
                )
            )
        imgs = torch.cat(outs)
        if output == "tensor":
            return imgs
        arr = (
            imgs.add(1)
            .mul(127.5)
            .round()
            .clamp(0, 255)
            .to(torch.uint8)
            .permute(0, 2, 3, 1)
            .cpu()
            .numpy()
        )
        if output == "numpy":
            return arr
        if output != "pil":
            raise ValueError(f"output must be pil, tensor or numpy, got {output!r}")
        pils = [Image.fromarray(a) for a in arr]
        return pils[0] if single else pils
