"""The op vocabulary of the site finder: which torch callables and ATen ops concatenate, upsample, keep a
feature's scale, fuse (conv/linear) or add, under either capture frontend.

Symbolic tracing records torch-level callables (``F.interpolate``, ``torch.cat``); torch.export records
ATen overload packets (``aten.upsample_bilinear2d``). Each table lists both spellings of one kind of op.

>>> UPSAMPLE_ATEN[aten.upsample_bilinear2d], INTERP_FUNCS[F.upsample_bilinear]
('bilinear', 'bilinear')
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

aten = torch.ops.aten

CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}
CAT_ATEN = {aten.cat, aten.concat, aten.concatenate}

# F.interpolate and its deprecated aliases; the value is the mode when the call does not say.
INTERP_FUNCS: dict[object, str] = {
    F.interpolate: "nearest",
    F.upsample: "nearest",
    F.upsample_bilinear: "bilinear",
    F.upsample_nearest: "nearest",
}
UPSAMPLE_ATEN = {
    aten.upsample_nearest1d: "nearest",
    aten.upsample_nearest2d: "nearest",
    aten.upsample_nearest3d: "nearest",
    aten._upsample_nearest_exact1d: "nearest-exact",
    aten._upsample_nearest_exact2d: "nearest-exact",
    aten._upsample_nearest_exact3d: "nearest-exact",
    aten.upsample_linear1d: "linear",
    aten.upsample_bilinear2d: "bilinear",
    aten._upsample_bilinear2d_aa: "bilinear",
    aten.upsample_bicubic2d: "bicubic",
    aten._upsample_bicubic2d_aa: "bicubic",
    aten.upsample_trilinear3d: "trilinear",
}

# Ops that do not change a feature's scale: dropout (identity at eval, unbiased in training),
# identity and copies. Dtype casts are in CAST_*: they keep the scale only into a floating dtype.
TRANSPARENT_MODULES: tuple[type[nn.Module], ...] = (nn.modules.dropout._DropoutNd, nn.Identity)
TRANSPARENT_FUNCS = {
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
    torch.dropout,
    torch.feature_dropout,
    torch.alpha_dropout,
    torch.feature_alpha_dropout,
    torch.clone,
}
TRANSPARENT_METHODS = {"contiguous", "clone"}
TRANSPARENT_ATEN = {
    aten.dropout,
    aten.dropout_,
    aten.feature_dropout,
    aten.feature_dropout_,
    aten.alpha_dropout,
    aten.alpha_dropout_,
    aten.feature_alpha_dropout,
    aten.feature_alpha_dropout_,
    aten.clone,
    aten.contiguous,
    aten.alias,
}
# Casts, by either frontend's spelling; ``.long()`` & co. are no casts to a floating dtype, so not here.
CAST_METHODS = {"float", "half", "bfloat16", "double", "to", "type", "type_as"}
CAST_ATEN = {aten._to_copy, aten.to, aten.type_as}

# Broadcasting views (``expand``): they repeat size-1 dims, so each value keeps its distribution; the
# site finder reads the shapes to tell a batch broadcast from a spatial one (a replicating upsample).
BROADCAST_METHODS = {"expand", "expand_as", "broadcast_to"}
BROADCAST_FUNCS = {torch.broadcast_to}
BROADCAST_ATEN = {aten.expand, aten.expand_as, aten.broadcast_to}

FUSING_FUNCS: dict[object, str] = {
    F.conv1d: "conv1d",
    F.conv2d: "conv2d",
    F.conv3d: "conv3d",
    F.conv_transpose1d: "conv_transpose1d",
    F.conv_transpose2d: "conv_transpose2d",
    F.conv_transpose3d: "conv_transpose3d",
    F.linear: "linear",
}
FUSING_ATEN = {
    aten.conv1d: "conv1d",
    aten.conv2d: "conv2d",
    aten.conv3d: "conv3d",
    aten.conv_transpose1d: "conv_transpose1d",
    aten.conv_transpose2d: "conv_transpose2d",
    aten.conv_transpose3d: "conv_transpose3d",
    aten.linear: "linear",
    aten.convolution: "convolution",
}
ADD_FUNCS = {operator.add, operator.iadd, torch.add}
ADD_ATEN = {aten.add, aten.add_}
STACK_FUNCS = {torch.stack}
SUM_FUNCS = {torch.sum}
