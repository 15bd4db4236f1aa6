"""Exact fusion and add sites on a corpus of public models (tests/_corpus.py), under every frontend that
captures each; fx and export find the same sites wherever both capture a model."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from eqsurgeon.api import analyze
from eqsurgeon.capture import capture
from eqsurgeon.checking import DEFAULT_MAX_RATIO, check
from eqsurgeon.inputs import synthetic_batches
from eqsurgeon.records import AddSite, FusionSite
from eqsurgeon.sites import Findings, find
from tests._corpus import CORPUS, Add, Entry, Site

BY_NAME = {e.name: e for e in CORPUS}


def _marks(entry: Entry) -> list[pytest.MarkDecorator]:
    return [pytest.mark.slow] if entry.slow else []


CASES = [pytest.param(e.name, f, marks=_marks(e), id=f"{e.name}-{f}") for e in CORPUS for f in e.frontends]
BOTH = [pytest.param(e.name, marks=_marks(e), id=e.name) for e in CORPUS if len(e.frontends) == 2]


@functools.cache
def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BY_NAME[name].build().eval()


@functools.cache
def _found(name: str, frontend: str) -> tuple[str, Findings]:
    """Findings under ``frontend``; the default frontend is reached through ``auto``."""
    entry, model = BY_NAME[name], _model(name)
    x = torch.randn(1, 3, entry.size, entry.size, generator=torch.Generator().manual_seed(0))
    cap = capture(model, x, "auto" if frontend == entry.default else frontend)
    return cap.frontend, find(cap, model)


def _site(site: FusionSite) -> Site:
    inputs = tuple((*s.channels, s.upsample.mode if s.upsample else None) for s in site.subjects)
    return Site(site.layer, inputs, site.op, site.channel_dim)


def _add(add: AddSite) -> Add:
    return Add(
        add.name.partition(":")[0],
        tuple((s.width, s.upsample.mode if s.upsample else None) for s in add.inputs),
    )


@pytest.mark.parametrize(("name", "frontend"), CASES)
def test_corpus_model_has_exactly_the_sites_its_source_has(name, frontend):
    entry = BY_NAME[name]
    used, found = _found(name, frontend)
    assert used == frontend  # the default frontend is what `auto` ends on
    assert found.unsearched == ()
    assert all(s.ok for s in found.sites), [(s.layer, s.reason) for s in found.sites if not s.ok]
    assert tuple(_site(s) for s in found.sites) == entry.sites
    assert tuple(_add(a) for a in found.add_sites) == entry.adds


@pytest.mark.parametrize("name", BOTH)
def test_fx_and_export_find_the_same_sites(name):
    _, by_fx = _found(name, "fx")
    _, by_export = _found(name, "export")
    assert by_fx.sites == by_export.sites  # sources and upsample factors included
    # Add sites are named after their graph node, which the two frontends number differently.
    assert [(_add(a), a.inputs) for a in by_fx.add_sites] == [
        (_add(a), a.inputs) for a in by_export.add_sites
    ]


def test_corpus_covers_what_it_must():
    libraries = {e.name.split("_")[0] for e in CORPUS}
    assert len(CORPUS) >= 15 and libraries == {"smp", "tv", "hf"}
    assert any("timm/" in e.source for e in CORPUS)  # timm blocks inside smp encoders
    assert sum(len(e.frontends) == 2 for e in CORPUS) >= 8


def test_mobilevit_fusions_are_measured_under_the_default_frontend_and_fail_check():
    # Issue 12: each MobileVitBlock ends in conv_fusion(cat((shortcut, x), 1)) inside a timm no-trace leaf.
    a = analyze(_model("smp_unet_mobilevit"), synthetic_batches((64, 64), 2, 1)).analysis
    assert (a.frontend, a.unsearched) == ("fx", ())
    fusions = [s for s in a.sites if s.layer.endswith("conv_fusion.conv")]
    assert [s.layer.split(".")[2] for s in fusions] == ["stages_2", "stages_3", "stages_4"]
    assert all(a.var_ratio(s) > 2 * DEFAULT_MAX_RATIO for s in fusions)  # shortcut vs transformer output
    failed = {v.layer for v in check(a).verdicts if not v.passed}
    assert {s.layer for s in fusions} <= failed


def test_mobilenetv2_projection_is_measured_through_its_tf_padding():
    model = _model("hf_mobilenetv2_deeplab")
    a = analyze(model, synthetic_batches((64, 64), 2, 1)).analysis
    (site,) = a.sites
    assert site.layer == "segmentation_head.conv_projection.convolution"
    assert model.segmentation_head.conv_projection.config.tf_padding  # the pad sits between cat and conv
    (verdict,) = check(a).verdicts
    assert verdict.layer == site.layer and verdict.ratio == a.var_ratio(site) and verdict.ratio > 1
