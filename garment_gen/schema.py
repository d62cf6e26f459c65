"""Structured configs: the dataclasses that *are* the schema of some config nodes.

Registered with Hydra's ConfigStore (by :func:`garment_gen.conf_dir`, which every entry point
and :func:`garment_gen.pipeline.compose` call before composing) and named in the defaults lists
of ``conf/``:

* ``prepare_schema`` = :class:`garment_gen.prepare.PrepareConfig`, the base of ``conf/prepare.yaml``;
* ``texture_schema`` = :class:`garment_gen.data.occlusion.TextureConfig`, ``data.texture``.

Their defaults live only in the dataclasses. An unknown key or a value of the wrong type then
fails while Hydra composes, in one line (:func:`garment_gen.cli.hydra_main`); ranges are checked
by the code that uses them (``prepare.check_settings``, ``TextureConfig.__post_init__``).
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from garment_gen.data.occlusion import TextureConfig
from garment_gen.prepare import PrepareConfig

SCHEMAS = {"prepare_schema": PrepareConfig, "texture_schema": TextureConfig}


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)
