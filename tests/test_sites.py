"""Each fusion pattern of issue 2 item 4 has its own test with the exact expected sites."""

import pytest
import torch

from eqsurgeon import find_sites
from eqsurgeon.capture import capture
from eqsurgeon.records import Upsample
from eqsurgeon.sites import find
from fixtures import models as fx_models

FRONTENDS = ["fx", "export"]
BI2 = Upsample("bilinear", (2.0, 2.0), False)


def sites(model, frontend, size=32):
    return find_sites(model, torch.randn(2, 3, size, size), frontend)


def layout(site):
    return [(s.channels, s.upsample) for s in site.subjects]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_dropout_and_identity_between_concat_and_conv(frontend):
    (site,) = sites(fx_models.dropout_between(), frontend)
    assert (site.layer, site.op, site.groups, site.status) == ("fuse", "conv2d", 1, "ok")
    assert layout(site) == [((0, 4), None), ((4, 8), BI2)]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_same_tensor_concatenated_twice_gives_two_subjects(frontend):
    (site,) = sites(fx_models.same_tensor_twice(), frontend)
    assert layout(site) == [((0, 4), None), ((4, 8), None), ((8, 12), BI2)]
    assert site.subjects[0].source == site.subjects[1].source == "a.2"


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_nested_concats_flatten(frontend):
    (site,) = sites(fx_models.nested_concat(), frontend)
    assert site.status == "ok"
    assert layout(site) == [((0, 4), None), ((4, 8), BI2), ((8, 10), Upsample("bilinear", (4.0, 4.0), False))]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_an_upsample_on_an_inner_concat_reaches_each_of_its_inputs(frontend):
    (site,) = sites(fx_models.upsampled_inner_concat(), frontend)
    assert site.status == "ok" and layout(site) == [((0, 4), None), ((4, 8), BI2), ((8, 10), BI2)]
    assert [s.source for s in site.subjects] == ["a.2", "b.2", "c.2"]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_channels_last_concat_into_linear(frontend):
    (site,) = sites(fx_models.channels_last_linear(), frontend)
    assert (site.layer, site.op, site.groups, site.channel_dim, site.status) == (
        "fuse",
        "linear",
        1,
        -1,
        "ok",
    )
    assert layout(site) == [((0, 4), None), ((4, 10), BI2)]


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize(("factory", "groups"), [(fx_models.grouped_conv, 2), (fx_models.depthwise_conv, 8)])
def test_grouped_and_depthwise_first_conv(frontend, factory, groups):
    (site,) = sites(factory(), frontend)
    assert (site.layer, site.groups, site.status) == ("fuse", groups, "ok")
    assert layout(site) == [((0, 4), None), ((4, 8), BI2)]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_every_upsample_spelling_with_mode_and_factor(frontend):
    (site,) = sites(fx_models.upsample_variants(), frontend)
    assert layout(site) == [
        ((0, 2), None),  # not upsampled, still a subject
        ((2, 4), Upsample("nearest", (2.0, 2.0), None)),  # F.interpolate
        ((4, 6), Upsample("bilinear", (4.0, 4.0), False)),  # nn.Upsample
        ((6, 8), Upsample("bilinear", (2.0, 2.0), True)),  # nn.UpsamplingBilinear2d
        ((8, 10), Upsample("bicubic", (8.0, 8.0), False)),  # user wrapper calling F.interpolate
    ]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_module_running_twice_is_skipped(frontend):
    found = sites(fx_models.shared_fuse(), frontend)
    assert [s.layer for s in found] == ["fuse", "fuse"]
    assert all(s.status == "skipped" and "runs 2 times" in s.reason for s in found)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_functional_conv_is_skipped(frontend):
    (site,) = sites(fx_models.functional_conv(), frontend)
    assert site.status == "skipped"
    assert "functional conv2d" in site.reason
    assert layout(site) == [((0, 4), None), ((4, 8), BI2)]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_upsample_add_is_reported_not_a_site(frontend):
    model = fx_models.fpn_add()
    findings = find(capture(model, torch.randn(2, 3, 32, 32), frontend), model)
    assert findings.sites == ()
    (add,) = findings.add_sites
    assert [s.upsample for s in add.inputs] == [None, Upsample("nearest", (2.0, 2.0), None)]
    assert [s.source for s in add.inputs] == ["lateral", "top"]


def test_upsample_factor_follows_the_input_size():
    (site,) = find_sites(fx_models.nested_concat(), torch.randn(2, 3, 64, 96))
    assert site.subjects[2].upsample.factor == (4.0, 4.0)


def test_no_sites():
    assert sites(fx_models.no_sites(), "fx") == []


def test_shape_dependent_if_falls_back_to_export():
    model = fx_models.shape_dependent_if()
    cap = capture(model, torch.randn(2, 3, 32, 32))
    assert cap.frontend == "export"
    assert "TraceError" in cap.fx_error
    (site,) = find(cap, model).sites
    assert layout(site) == [((0, 4), None), ((4, 8), BI2)]


def test_torchvision_deeplabv3_has_one_aspp_site():
    from eqsurgeon.loading import load_model

    model = load_model("torchvision:deeplabv3_resnet50", {"num_classes": 3})
    (site,) = find_sites(model, torch.randn(2, 3, 64, 64))
    assert site.layer == "classifier.0.project.0"
    assert [s.channels for s in site.subjects] == [(i * 256, (i + 1) * 256) for i in range(5)]
    assert [s.upsample is not None for s in site.subjects] == [False] * 4 + [True]
    assert site.subjects[-1].upsample.mode == "bilinear"


def test_torchvision_fcn_has_no_site():
    from eqsurgeon.loading import load_model

    model = load_model("torchvision:fcn_resnet50", {"num_classes": 3})
    assert find_sites(model, torch.randn(2, 3, 64, 64)) == []


def test_find_sites_uses_the_frontend_it_is_given():
    from eqsurgeon.errors import CaptureError

    model, x = fx_models.shape_dependent_if(), torch.randn(2, 3, 32, 32)
    assert [s.layer for s in find_sites(model, x)] == ["fuse"]  # auto: export after fx fails
    with pytest.raises(CaptureError, match=r"torch\.fx cannot trace the model"):
        find_sites(model, x, "fx")


class _BufferWeightConv(fx_models.TwoBranch):
    """A functional conv whose weight is a buffer: export passes it as an input that is no parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.randn(6, 8, 1, 1))

    def forward(self, x):
        a, b = self.branches(x)
        return torch.nn.functional.conv2d(torch.cat([a, b], 1), self.w)


class _KeywordWeightLinear(fx_models.TwoBranch):
    """``F.linear(x, weight=w)``: the weight is a keyword argument, not the second positional one."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(5, 8))

    def forward(self, x):
        a, b = self.branches(x)
        return torch.nn.functional.linear(torch.cat([a, b], 1).permute(0, 2, 3, 1), weight=self.w)


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("factory", [_BufferWeightConv, _KeywordWeightLinear])
def test_functional_fusions_without_a_weight_module_are_skipped(frontend, factory):
    (site,) = sites(factory(), frontend)
    assert site.status == "skipped" and "with no module of its own" in site.reason
    assert layout(site) == [((0, 4), None), ((4, 8), BI2)]
    op, channel_dim = ("conv2d", 1) if factory is _BufferWeightConv else ("linear", -1)
    assert (site.op, site.groups, site.channel_dim) == (op, 1, channel_dim)
    assert site.layer in {n.name for n in capture(factory(), torch.randn(2, 3, 32, 32), frontend).graph.nodes}


class _ThreeInner(fx_models.TwoBranch):
    """cat([cat([a, b, c]), d]): the offset after a three-input inner concat."""

    def __init__(self) -> None:
        super().__init__(fuse_in=14)
        self.c = fx_models.conv_bn_relu(3, 2)
        self.d = fx_models.conv_bn_relu(3, 4)

    def forward(self, x):
        a, b = self.branches(x)
        return self.fuse(torch.cat([torch.cat([a, b, self.c(x)], 1), self.d(x)], 1))


class _SharedWeight(fx_models.TwoBranch):
    """The fusing conv's weight also used by a functional conv: the layer runs twice per forward."""

    def forward(self, x):
        a, b = self.branches(x)
        y = self.fuse(torch.cat([a, b], 1))
        return y + torch.nn.functional.conv2d(torch.cat([b, a], 1), self.fuse.weight)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_offsets_continue_after_an_inner_concat_of_three(frontend):
    (site,) = sites(_ThreeInner(), frontend)
    assert site.status == "ok"
    assert [s.channels for s in site.subjects] == [(0, 4), (4, 8), (8, 10), (10, 14)]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_weight_shared_with_a_functional_call_counts_as_a_second_run(frontend):
    found = sites(_SharedWeight(), frontend)
    ok = [s for s in found if s.layer == "fuse"]
    assert ok and all(s.status == "skipped" and "runs 2 times" in s.reason for s in ok)


class _KeywordCatToOddSize(torch.nn.Module):
    """``torch.cat(tensors=..., dim=...)`` by keyword, of a map upsampled to a size 10/3 times its own."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 2, 1)
        self.b = torch.nn.Conv2d(3, 2, 3, stride=3)
        self.fuse = torch.nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = torch.nn.functional.interpolate(self.b(x), size=x.shape[-2:], mode="nearest")
        return self.fuse(torch.cat(tensors=[self.a(x), up], dim=1))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_keyword_concat_and_a_non_integer_factor_rounded_to_four_places(frontend):
    (site,) = find_sites(_KeywordCatToOddSize(), torch.randn(2, 3, 10, 10), frontend)
    assert site.status == "ok"
    assert layout(site) == [((0, 2), None), ((2, 4), Upsample("nearest", (3.3333, 3.3333), None))]


def test_module_paths_from_either_frontend_read_as_qualified_names():
    from eqsurgeon.graph_ops import clean_path

    assert clean_path("L['self'].decode_head._modules['0']") == "decode_head.0"
    assert clean_path("L['self']") == ""
    assert clean_path("head._modules['fuse']._modules['1']") == "head.fuse.1"
    assert clean_path("plain.name") == "plain.name"


class _StackSumMerge(torch.nn.Module):
    """smp's FPN merge: ``torch.stack([...]).sum(0)`` of a lateral map and upsampled ones (an add site)."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.lateral = torch.nn.Conv2d(3, 4, 1)
        self.top = torch.nn.Conv2d(3, 4, 1)
        self.out = torch.nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = torch.nn.functional.interpolate(self.top(torch.nn.functional.avg_pool2d(x, 2)), scale_factor=2.0)
        parts = [self.lateral(x), up]
        if self.spelling == "method":
            merged = torch.stack(parts).sum(0)
        elif self.spelling == "keywords":
            merged = torch.sum(torch.stack(tensors=parts, dim=0), dim=0)
        else:  # summed over another dim, or stacked on another: not a merge of the parts
            merged = torch.stack(parts, dim=1).sum(1)
        return self.out(merged)


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("spelling", ["method", "keywords"])
def test_a_stack_sum_merge_is_an_add_site_of_its_parts(frontend, spelling):
    model = _StackSumMerge(spelling)
    findings = find(capture(model, torch.randn(2, 3, 16, 16), frontend), model)
    (add,) = findings.add_sites
    assert [s.source for s in add.inputs] == ["lateral", "top"]
    assert [s.upsample for s in add.inputs] == [None, Upsample("nearest", (2.0, 2.0), None)]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_stack_summed_over_another_dim_is_no_add_site(frontend):
    model = _StackSumMerge("other")
    assert find(capture(model, torch.randn(2, 3, 16, 16), frontend), model).add_sites == ()


class _Spellings(torch.nn.Module):
    """F.interpolate with align_corners by keyword and mode by position, and F.upsample_bilinear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 2, 1)
        self.b = torch.nn.Conv2d(3, 2, 1, stride=2)
        self.c = torch.nn.Conv2d(3, 2, 1, stride=2)
        self.d = torch.nn.Conv2d(3, 2, 1, stride=2)
        self.fuse = torch.nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional
        b = f.interpolate(self.b(x), scale_factor=2.0, mode="bilinear", align_corners=True)
        c = f.interpolate(self.c(x), None, 2.0, "bicubic")
        d = f.upsample_bilinear(self.d(x), scale_factor=2)
        return self.fuse(torch.cat([self.a(x), b, c, d], 1))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_align_corners_by_keyword_mode_by_position_and_upsample_bilinear(frontend):
    (site,) = sites(_Spellings(), frontend, size=16)
    assert [s.upsample for s in site.subjects] == [
        None,
        Upsample("bilinear", (2.0, 2.0), True),
        Upsample("bicubic", (2.0, 2.0), False),
        Upsample("bilinear", (2.0, 2.0), True),  # F.upsample_bilinear aligns corners
    ]
