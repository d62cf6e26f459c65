"""Draw garments from a pretrained generator (stage ``pretrain``'s ``generator.pt``).

    python -m garment_gen.sample generator=outputs/pretrain/RUN/generator.pt seeds=0-7 out=samples.png
    python -m garment_gen.sample generator=... class=dress "seeds=[0,3,9]" truncation=0.7

One image per seed (``z`` drawn from that seed, fixed noise), so the same seed always gives
the same garment. A class-conditional generator (``model.conditional=true``) draws one row
per class (``class=all``, the default) or the classes named (``class=dress`` or
``class=[dress,skirt]``), each row labelled; an unconditional one draws one row. The grid is
written atomically as one PNG. ``garment_model.pt`` files work too (their generator).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from garment_gen.errors import GarmentGenError

log = logging.getLogger("garment_gen.sample")

MAX_SEEDS = 1024


def parse_seeds(seeds: Any) -> list[int]:
    """``7``, ``"0-15"``, ``"1,5,9-11"`` or a list -> seed list; one-line error otherwise."""
    if isinstance(seeds, bool):
        raise GarmentGenError(f"seeds={seeds}: expected seeds such as 0-15 or [1,5,9]")
    if isinstance(seeds, int):
        items: list[Any] = [seeds]
    elif isinstance(seeds, (list, tuple)):
        items = list(seeds)
    else:
        items = [s.strip() for s in str(seeds).split(",") if s.strip()]
    out: list[int] = []
    for item in items:
        text = str(item)
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise GarmentGenError(
                f"seeds={seeds}: {text!r} is not a seed or a range (e.g. 0-15 or [1,5,9])"
            )
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        out.extend(range(lo, hi + 1))
        if len(out) > MAX_SEEDS:
            raise GarmentGenError(f"seeds={seeds}: more than {MAX_SEEDS} seeds")
    if not out:
        raise GarmentGenError(f"seeds={seeds}: no seeds (e.g. 0-15 or [1,5,9])")
    return out


def _classes(g: Any, which: Any) -> list[int | None]:
    """The rows to draw: class indices of a conditional generator, ``[None]`` otherwise."""
    names = list(g.class_names or [str(i) for i in range(g.c_dim)])
    if which is None or str(which) == "all":
        return list(range(g.c_dim)) if g.c_dim else [None]
    wanted = [str(w) for w in (which if isinstance(which, (list, tuple)) else [which])]
    if not g.c_dim:
        raise GarmentGenError(
            f"class={which}: this generator is not class-conditional (train it with "
            "model.conditional=true on data with class folders); leave class out"
        )
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise GarmentGenError(
            f"class={unknown[0]}: not a class of this generator; its classes: {', '.join(names)}"
        )
    return [names.index(w) for w in wanted]


@torch.no_grad()
def sample(
    generator: str | Path | Any,
    seeds: Any = "0-7",
    classes: Any = "all",
    truncation: float = 1.0,
    device: str = "cpu",
    batch_size: int = 32,
) -> tuple[torch.Tensor, list[str]]:
    """Images ``[rows, len(seeds), 3, R, W]`` in ``[-1, 1]`` and the row names (classes, or
    ``""`` for an unconditional generator). ``generator`` is a path or a loaded ``Generator``."""
    from garment_gen.networks.stylegan2 import load_generator

    seed_list = parse_seeds(seeds)
    try:
        truncation = float(truncation)
    except (TypeError, ValueError):
        raise GarmentGenError(f"truncation={truncation}: expected a number from 0 to 2") from None
    if not 0.0 <= truncation <= 2.0:
        raise GarmentGenError(f"truncation={truncation}: expected a number from 0 to 2")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise GarmentGenError(f"batch_size={batch_size}: expected a whole number >= 1")
    if isinstance(generator, (str, Path)):
        g = load_generator(generator, map_location=device)
    else:
        g = generator
    g = g.to(device).eval()
    rows = _classes(g, classes)
    z = torch.stack(
        [torch.randn(g.z_dim, generator=torch.Generator().manual_seed(s)) for s in seed_list]
    ).to(device)
    out = []
    for c in rows:
        imgs = []
        for chunk in z.split(batch_size):
            kw = {} if c is None else {"c": torch.full((len(chunk),), c, device=device)}
            imgs.append(g(chunk, truncation_psi=truncation, noise_mode="const", **kw).float().cpu())
        out.append(torch.cat(imgs))
    names = (
        [""] if rows == [None] else [g.class_names[c] if g.class_names else str(c) for c in rows]
    )
    return torch.stack(out).clamp(-1, 1), names


def sample_sheet(images: torch.Tensor, names: list[str], seeds: list[int]) -> np.ndarray:
    """A ``uint8`` sheet: one row per class (its name on the first tile), seeds as columns."""
    from garment_gen.generate import _label
    from garment_gen.utils.images import grid

    rows, cols = images.shape[:2]
    sheet = grid(images.flatten(0, 1), nrow=cols)
    h, w = images.shape[-2:]
    pad = 2
    for r, name in enumerate(names):
        if not name:
            continue
        y, x = pad + r * (h + pad), pad
        sheet[y : y + h, x : x + w] = _label(sheet[y : y + h, x : x + w].copy(), name)
    return sheet


def run(
    generator: str,
    seeds: Any = "0-7",
    out: str = "samples.png",
    truncation: float = 1.0,
    device: str = "cpu",
    batch_size: int = 32,
    labels: bool = True,
    **kw: Any,
) -> Path:
    """The CLI: check the options and the output file, draw, write the PNG; returns its path."""
    from garment_gen.utils.images import save_png
    from garment_gen.utils.oserrors import check_writable

    which = kw.pop("class", "all")
    if kw:
        raise GarmentGenError(
            f"unknown sample setting(s): {', '.join(sorted(kw))}; valid: generator, seeds, class, "
            "out, truncation, device, batch_size, labels"
        )
    seed_list = parse_seeds(seeds)
    out_path = Path(out)
    if out_path.suffix.lower() != ".png":
        raise GarmentGenError(f"out={out}: expected a .png file")
    if not Path(generator).is_file():
        raise GarmentGenError(f"generator={generator}: no such file")
    check_writable(out_path.parent if str(out_path.parent) else Path("."), "out")
    images, names = sample(generator, seed_list, which, truncation, device, batch_size)
    sheet = sample_sheet(images, names if labels else [""] * len(names), seed_list)
    save_png(sheet, out_path)
    rows = f"{len(names)} class(es)" if names != [""] else "1 row"
    print(f"wrote {out_path} ({rows} x {len(seed_list)} seed(s), {images.shape[-2]} px)")
    return out_path


def main() -> None:
    """Entry point for ``python -m garment_gen.sample``."""
    from omegaconf import OmegaConf

    from garment_gen import conf_dir
    from garment_gen.cli import hydra_main, user_errors

    @user_errors
    def _app(cfg) -> None:
        d = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        d.pop("hydra", None)
        run(**d)

    hydra_main(conf_dir() / "cli", "sample", _app)


if __name__ == "__main__":
    main()
