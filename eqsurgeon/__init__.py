"""eqsurgeon: find and repair scale disequilibrium at the feature-fusion sites of segmentation networks.

>>> import eqsurgeon
>>> [n for n in eqsurgeon.__all__ if n in ('find_sites', 'measure', 'load')]
['find_sites', 'load', 'measure']
"""

from eqsurgeon.checkpoint import load
from eqsurgeon.loading import load_model
from eqsurgeon.measure import Measurement, MomentHooks, measure
from eqsurgeon.modules import ScaleEqualizer
from eqsurgeon.records import AddSite, FusionSite, Moments, Subject, Upsample
from eqsurgeon.registry import register_autowrap_function, register_leaf_module, register_upsample_function
from eqsurgeon.sites import find_sites

__version__ = "0.1.0"

__all__ = [
    "AddSite",
    "FusionSite",
    "Measurement",
    "MomentHooks",
    "Moments",
    "ScaleEqualizer",
    "Subject",
    "Upsample",
    "find_sites",
    "load",
    "load_model",
    "measure",
    "register_autowrap_function",
    "register_leaf_module",
    "register_upsample_function",
]
