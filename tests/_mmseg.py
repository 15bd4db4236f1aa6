"""MMSegmentation as a test oracle: import it without compiled ops, and build models from its own configs.

Installed by ``make test-parity`` (the ``parity`` extra: mmsegmentation 1.2.2, mmengine 0.10.7,
mmcv-lite 2.1.0, mmpretrain 1.2.0). mmcv-lite has no ``mmcv.ops``; mmseg imports a few of them at module
level (point_sample, sigmoid_focal_loss) for heads and losses that nothing here builds, so a stand-in
module answers those imports with functions that raise if ever called.
"""

from __future__ import annotations

import copy
import sys
import types
import warnings
from pathlib import Path
from typing import Any

MMSEG_VERSION = "1.2.2"
SKIP_REASON = "mmsegmentation 1.2.2 is not installed; `make test-parity` installs it in .venv-parity"


def _install_ops_stand_in() -> None:
    import mmcv

    if "mmcv.ops" in sys.modules and hasattr(sys.modules["mmcv.ops"], "__eqsurgeon_stand_in__"):
        return
    ops = types.ModuleType("mmcv.ops")
    ops.__eqsurgeon_stand_in__ = True  # type: ignore[attr-defined]

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def compiled_op(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"mmcv.ops.{name} is a compiled op; mmcv-lite does not have it")

        return compiled_op

    ops.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules["mmcv.ops"] = ops
    mmcv.ops = ops  # type: ignore[attr-defined]


def available() -> bool:
    """Whether mmseg (the pinned version) imports here."""
    try:
        import mmseg
    except ImportError:
        return False
    if mmseg.__version__ != MMSEG_VERSION:
        return False
    _install_ops_stand_in()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mmseg.utils import register_all_modules

        register_all_modules(init_default_scope=True)
    return True


def config_path(relative: str) -> Path:
    """A config shipped inside the mmseg package, e.g. ``swin/swin-tiny-..._ade20k-512x512.py``."""
    import mmseg

    return Path(mmseg.__file__).parent / ".mim" / "configs" / relative


def build_segmentor(relative: str, num_classes: int = 150) -> Any:
    """mmseg's ``EncoderDecoder`` from its own config, with BN instead of SyncBN and no pretrained weights."""
    from mmengine.config import Config
    from mmseg.registry import MODELS

    cfg = Config.fromfile(str(config_path(relative)))
    model = copy.deepcopy(cfg.model)
    _replace(model, "SyncBN", "BN")
    model.backbone.pop("init_cfg", None)
    model.pop("pretrained", None)
    for head in ("decode_head", "auxiliary_head"):
        if model.get(head):
            model[head]["num_classes"] = num_classes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MODELS.build(model)


def _replace(node: Any, old: str, new: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if value == old:
                node[key] = new
            else:
                _replace(value, old, new)
    elif isinstance(node, list):
        for item in node:
            _replace(item, old, new)
