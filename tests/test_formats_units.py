"""The model-format modules called directly: what a transformers or smp ``save_pretrained`` folder, a
``.safetensors`` and a ``.pth`` file hold after eqsurgeon writes them, what reading them gives back, and
the one-line message of every refusal.

Tiny random models (no downloads) are built once per module; folders are written under tmp_path.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from eqsurgeon.errors import CheckpointError, ModelLoadError, OptionError, OutputExistsError
from eqsurgeon.io import folder_files, formats, hf_folder, smp_folder
from eqsurgeon.io.formats import Source
from eqsurgeon.io.recordjson import record_from_value, record_to_plain
from eqsurgeon.records import CalibrationRecord, InputRecord, SiteRecord
from tests._ecosystems import segformer, smp_model

PROCESSOR = {
    "image_mean": [0.5, 0.25, 0.125],
    "image_std": [0.5, 0.5, 0.25],
    "size": {"height": 32, "width": 48},
}


def _record(mode: str = "fold") -> CalibrationRecord:
    site = SiteRecord(
        layer="decoder.seg", op="conv2d", groups=1, channel_dim=1, status="ok",
        inputs=(InputRecord((0, 2), 0.5, 2.0, 0.5), InputRecord((2, 4), -0.1, 0.25, 4.0)),
    )  # fmt: skip
    return CalibrationRecord("tiny", mode, "batch", 4, "f00", sites=(site,))


def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def seg() -> nn.Module:
    torch.manual_seed(0)
    return segformer()


@pytest.fixture(scope="module")
def seg_folder(seg: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "seg"
    seg.save_pretrained(str(folder))
    (folder / hf_folder.PREPROCESSOR).write_text(json.dumps(PROCESSOR))
    return folder


@pytest.fixture(scope="module")
def fpn() -> nn.Module:
    torch.manual_seed(0)  # settings a default FPN would not rebuild: 2 input channels, depth 4
    return smp_model("FPN", in_channels=2, encoder_depth=4)


@pytest.fixture(scope="module")
def smp_dir(fpn: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return formats.write(tmp_path_factory.mktemp("smp") / "fpn", fpn, _record())


@pytest.fixture
def bare_fpn(fpn: nn.Module) -> Any:
    """The module's FPN without image settings, and without the ones a test attached afterwards."""
    if hasattr(fpn, "eqsurgeon_cfg"):
        del fpn.eqsurgeon_cfg
    yield fpn
    if hasattr(fpn, "eqsurgeon_cfg"):
        del fpn.eqsurgeon_cfg


# ---------------------------------------------------------------- folder_files


def test_read_config_refuses_a_missing_broken_or_non_object_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as exc:
        folder_files.read_config(tmp_path)
    assert str(exc.value) == (
        f"folder {tmp_path} has no config.json; name a folder written by save_pretrained (transformers or "
        "segmentation_models_pytorch), or a file.py:factory"
    )
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ModelLoadError) as exc:
        folder_files.read_config(tmp_path)
    assert str(exc.value) == (
        f"{tmp_path / 'config.json'} is not valid JSON (Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)); save the folder again"
    )
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError) as exc:
        folder_files.read_config(tmp_path)
    assert str(exc.value) == f"{tmp_path / 'config.json'} is not a JSON object; save the folder again"


def test_folder_kind_prefers_smp_and_names_both_keys_when_neither_is_there() -> None:
    assert folder_files.folder_kind(Path("m"), {"_model_class": "FPN", "model_type": "x"}) == "smp"
    assert folder_files.folder_kind(Path("m"), {"model_type": "segformer"}) == "hf"
    with pytest.raises(ModelLoadError) as exc:
        folder_files.folder_kind(Path("m"), {"hidden_size": 3})
    assert str(exc.value) == (
        "m/config.json names no architecture (neither transformers' model_type nor "
        "segmentation_models_pytorch's _model_class); save the folder with the library's save_pretrained"
    )


def test_a_malformed_record_in_config_json_names_that_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as exc:
        folder_files.folder_record(tmp_path, {"eqsurgeon": {"mode": "fold"}})
    assert str(exc.value).startswith(f"{tmp_path / 'config.json'} has a malformed eqsurgeon record (")


def test_sharded_weights_are_read_from_every_shard_of_the_index(tmp_path: Path) -> None:
    a, b = {"a.w": torch.ones(2)}, {"b.w": torch.zeros(3), "b.v": torch.full((1,), 2.0)}
    save_file(a, tmp_path / "model-1.safetensors")
    save_file(b, tmp_path / "model-2.safetensors")
    index = {"metadata": {}, "weight_map": {"a.w": "model-1.safetensors", "b.w": "model-2.safetensors",
                                            "b.v": "model-2.safetensors"}}  # fmt: skip
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    _same_tensors(folder_files.read_folder_weights(tmp_path), {**a, **b})
    (tmp_path / "model-2.safetensors").unlink()
    with pytest.raises(CheckpointError) as exc:
        folder_files.read_folder_weights(tmp_path)
    assert str(exc.value) == f"{tmp_path / 'model-2.safetensors'} is missing; save the folder again"


def test_a_broken_shard_index_and_a_folder_without_weights_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as exc:
        folder_files.read_folder_weights(tmp_path)
    assert str(exc.value) == (
        f"folder {tmp_path} holds no weights (model.safetensors or pytorch_model.bin); "
        "save it with the library's save_pretrained"
    )
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError) as exc:
        folder_files.read_folder_weights(tmp_path)
    assert str(exc.value) == f"{index} is not a shard index ('weight_map')"


def test_an_old_transformers_folder_reads_pytorch_model_bin(tmp_path: Path) -> None:
    state = {"w": torch.arange(3.0)}
    torch.save({"state_dict": state, "meta": {}}, tmp_path / "pytorch_model.bin")
    _same_tensors(folder_files.read_folder_weights(tmp_path), state)
    torch.save({"optimizer": {}}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as exc:
        folder_files.read_folder_weights(tmp_path)
    assert str(exc.value).startswith(f"{tmp_path / 'pytorch_model.bin'} holds no state dict of tensors: its ")


# ---------------------------------------------------------------- hf_folder


def test_the_model_class_comes_from_architectures_then_from_model_type(tmp_path: Path) -> None:
    import transformers

    seg_cls = transformers.SegformerForSemanticSegmentation
    assert hf_folder._model_class(tmp_path, {"model_type": "segformer"}) is seg_cls
    assert (
        hf_folder._model_class(tmp_path, {"model_type": "segformer", "architectures": ["SegformerModel"]})
        is seg_cls
    )
    config = {"model_type": "upernet", "architectures": ["SegformerForSemanticSegmentation"]}
    assert hf_folder._model_class(tmp_path, config) is seg_cls


def _types_with_one(message: str) -> list[str]:
    names = message.split("; types with one: ")[1].split(", ")
    assert "segformer" in names and "upernet" in names and names == sorted(names), message
    return names


def test_an_unknown_architecture_names_the_type_the_list_and_the_known_types(tmp_path: Path) -> None:
    import transformers

    config = {"model_type": "segformer", "architectures": ["CustomForSemanticSegmentation"]}
    with pytest.raises(ModelLoadError) as exc:
        hf_folder.hf_factory(tmp_path, config)
    message = str(exc.value)
    assert message.startswith(
        f"{tmp_path}/config.json names model_type 'segformer' "
        "(architectures ['CustomForSemanticSegmentation']), which has no semantic-segmentation model in "
        f"transformers {transformers.__version__}; types with one: "
    )
    _types_with_one(message)
    with pytest.raises(ModelLoadError) as exc:
        hf_folder._model_class(tmp_path, {"model_type": "bert"})
    assert "names model_type 'bert' (architectures none), which has no" in str(exc.value)


def test_no_transformers_installed_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelLoadError) as exc:
        hf_folder._model_class(tmp_path, {"model_type": "segformer"})
    assert str(exc.value) == (
        f"{tmp_path} is a transformers folder, but transformers is not installed; pip install transformers"
    )


def test_hf_factory_loads_the_folder_with_its_image_settings(seg: nn.Module, seg_folder: Path) -> None:
    model = hf_folder.hf_factory(seg_folder, _config(seg_folder))()
    _same_tensors(model.state_dict(), seg.state_dict())
    assert model.eqsurgeon_cfg == {
        "mean": (0.5, 0.25, 0.125),
        "std": (0.5, 0.5, 0.25),
        "input_size": (3, 32, 48),
    }


def test_hf_factory_passes_overrides_and_accepts_a_new_head_only_when_asked(seg_folder: Path) -> None:
    model = hf_folder.hf_factory(seg_folder, _config(seg_folder))(num_labels=5, ignore_mismatched_sizes=True)
    assert model.decode_head.classifier.out_channels == 5 and model.config.num_labels == 5


def test_hf_factory_names_weights_of_another_shape_and_the_way_to_a_new_head(seg_folder: Path) -> None:
    with pytest.raises(CheckpointError) as exc:  # 5 classes asked of a folder saved with its own number
        hf_folder.hf_factory(seg_folder, _config(seg_folder))(num_labels=5)
    assert str(exc.value) == (
        f"the weights in {seg_folder} do not fit SegformerForSemanticSegmentation: 2 wrong shape "
        "(e.g. decode_head.classifier.bias, decode_head.classifier.weight); "
        "pass ignore_mismatched_sizes=True to start those layers anew (a new head), "
        "or save the folder again with the model's own save_pretrained"
    )


def test_hf_factory_names_missing_and_unexpected_weights(seg_folder: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(seg_folder, tmp_path / "cut")
    tensors = load_file(folder / "model.safetensors")
    cut = sorted(k for k in tensors if k.startswith("decode_head.batch_norm."))  # 5 of them
    for key in cut:
        del tensors[key]
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as exc:
        hf_folder.hf_factory(folder, _config(folder))()
    assert len(cut) > 3
    assert str(exc.value) == (
        f"the weights in {folder} do not fit SegformerForSemanticSegmentation: {len(cut)} missing "
        f"(e.g. {', '.join(cut[:3])}); 1 unexpected (e.g. extra.weight); "
        "save the folder again with the model's own save_pretrained"
    )


def test_a_bf16_model_is_widened_to_float32(seg_folder: Path) -> None:
    model = hf_folder.hf_factory(seg_folder, _config(seg_folder))(dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_preprocessor_settings_scale_size_and_crop_size(tmp_path: Path) -> None:
    path = tmp_path / hf_folder.PREPROCESSOR
    assert hf_folder.preprocessor_settings(tmp_path) is None
    path.write_text(json.dumps(PROCESSOR))
    assert hf_folder.preprocessor_settings(tmp_path) == {
        "mean": (0.5, 0.25, 0.125), "std": (0.5, 0.5, 0.25), "input_size": (3, 32, 48)
    }  # fmt: skip
    path.write_text(json.dumps({"image_mean": [127.5, 51.0, 25.5], "image_std": [255.0] * 3}))
    assert hf_folder.preprocessor_settings(tmp_path) == {"mean": (0.5, 0.2, 0.1), "std": (1.0, 1.0, 1.0)}
    # a mean without std is not half a normalization; crop_size stands in for a missing size
    path.write_text(json.dumps({"image_mean": [0.5] * 3, "crop_size": {"height": 16, "width": 24}}))
    assert hf_folder.preprocessor_settings(tmp_path) == {"input_size": (3, 16, 24)}
    path.write_text(
        json.dumps({"image_mean": [0.5], "image_std": [0.5], "size": 512})
    )  # grayscale, a bare int
    assert hf_folder.preprocessor_settings(tmp_path) is None


def test_a_broken_preprocessor_config_is_named(tmp_path: Path) -> None:
    path = tmp_path / hf_folder.PREPROCESSOR
    path.write_text("")
    with pytest.raises(CheckpointError) as exc:
        hf_folder.preprocessor_settings(tmp_path)
    assert (
        str(exc.value)
        == f"{path} is not valid JSON (Expecting value: line 1 column 1 (char 0)); fix or remove it"
    )


def test_is_hf_model_without_transformers_imported(seg: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hf_folder.is_hf_model(seg) and not hf_folder.is_hf_model(nn.Linear(1, 1))
    monkeypatch.delitem(sys.modules, "transformers")
    assert not hf_folder.is_hf_model(nn.Linear(1, 1))


_ABSENT = object()


@pytest.mark.parametrize("before", [_ABSENT, None, {"model": "older"}], ids=["absent", "null", "older"])
def test_write_hf_puts_the_record_in_config_json_and_leaves_the_model_config(
    seg: nn.Module, tmp_path: Path, before: object
) -> None:
    if before is not _ABSENT:
        seg.config.eqsurgeon = before
    try:
        hf_folder.write_hf(tmp_path, seg, _record(), None)
        assert _config(tmp_path)["eqsurgeon"] == record_to_plain(_record())
        assert not (tmp_path / hf_folder.PREPROCESSOR).exists()
        if before is _ABSENT:
            assert not hasattr(seg.config, "eqsurgeon")
        else:
            assert seg.config.eqsurgeon == before
    finally:
        if hasattr(seg.config, "eqsurgeon"):
            del seg.config.eqsurgeon


def test_write_hf_copies_the_source_preprocessor(seg: nn.Module, seg_folder: Path, tmp_path: Path) -> None:
    hf_folder.write_hf(tmp_path, seg, None, seg_folder)
    assert "eqsurgeon" not in _config(tmp_path)
    assert (tmp_path / hf_folder.PREPROCESSOR).read_bytes() == (
        seg_folder / hf_folder.PREPROCESSOR
    ).read_bytes()
    _same_tensors(load_file(tmp_path / "model.safetensors"), load_file(seg_folder / "model.safetensors"))


# ---------------------------------------------------------------- smp_folder


def _patch_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """resnet18's settings as smp < 0.5 stated them (0.6 keeps them on the hub): 0–1 and 0–255 scales."""
    from segmentation_models_pytorch.encoders import encoders

    table = encoders["resnet18"]["pretrained_settings"]
    monkeypatch.setitem(table, "imagenet", {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    monkeypatch.setitem(table, "ssl", {"mean": [127.5, 51.0, 25.5], "std": [255.0, 127.5, 51.0]})


IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def test_encoder_settings_of_the_named_weights_default_imagenet(
    bare_fpn: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    _patch_settings(monkeypatch)
    assert smp_folder.with_encoder_settings(bare_fpn) is bare_fpn  # encoder_weights None: imagenet's
    assert bare_fpn.eqsurgeon_cfg == IMAGENET
    del bare_fpn.eqsurgeon_cfg
    monkeypatch.setattr(
        bare_fpn, "_hub_mixin_config", {**bare_fpn._hub_mixin_config, "encoder_weights": "ssl"}
    )
    smp_folder.with_encoder_settings(bare_fpn)  # 0–255 values brought to 0–1
    assert bare_fpn.eqsurgeon_cfg == {"mean": (0.5, 0.2, 0.1), "std": (1.0, 0.5, 0.2)}


def test_encoder_settings_keep_declared_ones_and_skip_unknown_encoders(
    bare_fpn: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    _patch_settings(monkeypatch)
    bare_fpn.eqsurgeon_cfg = {"mean": (0.1, 0.1, 0.1), "std": (0.3, 0.3, 0.3)}
    smp_folder.with_encoder_settings(bare_fpn)
    assert bare_fpn.eqsurgeon_cfg == {"mean": (0.1, 0.1, 0.1), "std": (0.3, 0.3, 0.3)}
    plain = nn.Linear(1, 1)  # no _hub_mixin_config at all
    assert smp_folder.with_encoder_settings(plain) is plain and not hasattr(plain, "eqsurgeon_cfg")
    del bare_fpn.eqsurgeon_cfg  # an encoder missing from smp's table (timm's) declares nothing here
    monkeypatch.setattr(
        bare_fpn, "_hub_mixin_config", {"encoder_name": "tu-resnet18", "encoder_weights": None}
    )
    smp_folder.with_encoder_settings(bare_fpn)
    assert not hasattr(bare_fpn, "eqsurgeon_cfg")


def test_offline_factory_defaults_encoder_weights_and_passes_other_callables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import segmentation_models_pytorch as smp

    _patch_settings(monkeypatch)
    model = smp_folder.offline_factory(smp.FPN)(encoder_name="resnet18", encoder_depth=3, classes=2)
    assert model._hub_mixin_config["encoder_weights"] is None and model.eqsurgeon_cfg == IMAGENET
    assert smp_folder.offline_factory(dict)(a=1) == {"a": 1}  # no signature: nothing added


def test_write_smp_carries_the_constructor_arguments_and_the_record(fpn: nn.Module, smp_dir: Path) -> None:
    import segmentation_models_pytorch as smp

    config = _config(smp_dir)
    assert config == {**fpn._hub_mixin_config, "_model_class": "FPN", "eqsurgeon": record_to_plain(_record())}
    assert (
        config["in_channels"] == 2
        and config["encoder_depth"] == 4
        and config["decoder_pyramid_channels"] == 32
    )
    again = smp.from_pretrained(str(smp_dir))  # smp's own loader rebuilds the same model
    _same_tensors(again.state_dict(), fpn.state_dict())


def test_write_smp_drops_a_stale_record_of_the_source(fpn: nn.Module, tmp_path: Path) -> None:
    source = {**fpn._hub_mixin_config, "eqsurgeon": {"model": "older"}, "dataset": "cityscapes"}
    smp_folder.write_smp(tmp_path, fpn, None, source)
    assert _config(tmp_path) == {**fpn._hub_mixin_config, "dataset": "cityscapes", "_model_class": "FPN"}


def test_smp_factory_builds_offline_and_loads_the_folder(
    fpn: nn.Module, smp_dir: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(smp_dir, tmp_path / "f")
    config = {**_config(folder), "encoder_weights": "imagenet"}  # as a hub model's config says
    (folder / "config.json").write_text(json.dumps(config))
    model = smp_folder.smp_factory(folder, config)()
    _same_tensors(model.state_dict(), fpn.state_dict())
    # built from the constructor arguments alone: the folder's record does not ride along in the model
    assert model._hub_mixin_config == fpn._hub_mixin_config
    tensors = load_file(folder / "model.safetensors")
    del tensors["segmentation_head.0.bias"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"^checkpoint {folder} does not fit the model: 1 missing"):
        smp_folder.smp_factory(folder, config)()


def test_an_unknown_smp_class_lists_smps_models(tmp_path: Path) -> None:
    import segmentation_models_pytorch as smp

    with pytest.raises(ModelLoadError) as exc:
        smp_folder.smp_factory(tmp_path, {"_model_class": "NoSuchNet"})
    message = str(exc.value)
    head = f"{tmp_path}/config.json names _model_class 'NoSuchNet', which segmentation_models_pytorch "
    assert message.startswith(f"{head}{smp.__version__} does not have; its models: ")
    names = message.split("its models: ")[1].split(", ")
    assert "FPN" in names and "Unet" in names and names == sorted(names)


def test_no_smp_installed_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)
    with pytest.raises(ModelLoadError) as exc:
        smp_folder._model_class(tmp_path, {"_model_class": "FPN"})
    assert str(exc.value) == (
        f"{tmp_path} is a segmentation_models_pytorch folder, but smp is not installed; "
        "pip install segmentation-models-pytorch"
    )


def test_is_smp_model_without_smp_or_without_its_hub_mixin(
    fpn: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert smp_folder.is_smp_model(fpn) and not smp_folder.is_smp_model(nn.Linear(1, 1))
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch.base.hub_mixin", None)  # smp < 0.3.4
    assert not smp_folder.is_smp_model(fpn)
    monkeypatch.delitem(sys.modules, "segmentation_models_pytorch")
    assert not smp_folder.is_smp_model(fpn)


# ---------------------------------------------------------------- formats


def test_a_checkpoint_key_for_a_folder_or_safetensors_is_refused(smp_dir: Path, tmp_path: Path) -> None:
    single = formats.write(tmp_path / "w.safetensors", nn.Linear(1, 1), None)
    for path in (smp_dir, single):
        with pytest.raises(OptionError) as exc:
            formats.read(path, key="state_dict_ema")
        assert exc.value.name == "checkpoint_key" and exc.value.value == "state_dict_ema"
        assert str(exc.value) == (
            f"checkpoint_key='state_dict_ema' names an entry of a pickled checkpoint, and {path} is not one; "
            "leave it out"
        )


def test_read_an_smp_folder(fpn: nn.Module, smp_dir: Path) -> None:
    loaded = formats.read(smp_dir)
    _same_tensors(loaded.tensors, fpn.state_dict())
    assert loaded.record == record_from_value(record_to_plain(_record()))
    assert loaded.source == Source("smp", smp_dir, config=_config(smp_dir))


def test_read_a_transformers_folder(seg: nn.Module, seg_folder: Path) -> None:
    loaded = formats.read(seg_folder)
    _same_tensors(loaded.tensors, seg.state_dict())
    assert loaded.record is None and loaded.source == Source("hf", seg_folder, config=_config(seg_folder))


def test_read_files_name_their_source(tmp_path: Path) -> None:
    single = formats.write(tmp_path / "w.safetensors", nn.Linear(1, 1), _record())
    loaded = formats.read(single)
    assert loaded.source == Source("safetensors", single) and loaded.record.mode == "fold"
    pth = tmp_path / "w.pth"
    torch.save(
        {"state_dict": {"w": torch.ones(1)}, "state_dict_ema": {"w": torch.zeros(1)}, "meta": {"a": 1}}, pth
    )
    assert formats.read(pth).source == Source("pth", pth, meta={"a": 1})
    assert formats.read_checkpoint(pth, "state_dict_ema")[0]["w"].item() == 0.0
    torch.save({"state_dict": {"w": torch.ones(1)}, "meta": {"eqsurgeon": {"mode": "fold"}}}, pth)
    with pytest.raises(CheckpointError) as exc:
        formats.read(pth)
    assert str(exc.value).startswith(f"{pth} has a malformed eqsurgeon record (")


def test_folder_model_names_the_folder(fpn: nn.Module, smp_dir: Path, tmp_path: Path) -> None:
    _factory, source, record = formats.folder_model(smp_dir)
    assert source == Source("smp", smp_dir, config=_config(smp_dir)) and record.mode == "fold"
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=rf"^{tmp_path}/config.json names no architecture"):
        formats.folder_model(tmp_path)
    with pytest.raises(ModelLoadError, match=rf"^{tmp_path}/config.json names no architecture"):
        formats.read(tmp_path)


def test_check_out_treats_a_folder_output_as_a_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert formats.check_out(out, True) == out
    with pytest.raises(OutputExistsError, match="already exists; choose another path or pass force=True"):
        formats.check_out(out, False)
    existing = tmp_path / "cal.safetensors"  # a file output: replaced only with force
    existing.write_bytes(b"x")
    assert formats.check_out(existing, True) == existing
    with pytest.raises(OutputExistsError, match="already exists; choose another path or pass force=True"):
        formats.check_out(existing, False)


def test_check_writable_refuses_other_models_and_insert_mode(
    seg: nn.Module, fpn: nn.Module, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    for model in (seg, fpn):
        formats.check_writable(out, model, "fold")
        with pytest.raises(OptionError) as exc:
            formats.check_writable(out, model, "insert")
        assert exc.value.name == "mode" and str(exc.value) == (
            "mode='insert' adds equalizer modules that the library's from_pretrained does not know; "
            "use mode=fold for a save_pretrained folder, or write a .safetensors or .pth file"
        )
    formats.check_writable(tmp_path / "w.pth", nn.Linear(1, 1), "insert")
    with pytest.raises(OptionError) as exc:
        formats.check_writable(out, nn.Linear(1, 1), "fold")
    assert exc.value.name == "out" and str(exc.value) == (
        f"out='{out}' is a folder, which is written with save_pretrained, and Linear is neither a "
        "transformers nor an smp model; name a .safetensors or .pth file"
    )


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth"])
def test_write_a_file_keeps_the_record_and_replaces_only_with_force(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="already exists"):
        formats.write(path, nn.Linear(1, 1), _record())
    assert formats.write(path, nn.Linear(1, 1), _record(), force=True) == path
    assert formats.read(path).record == record_from_value(record_to_plain(_record()))


def test_write_a_folder_replaces_only_with_force_and_only_in_fold_mode(
    fpn: nn.Module, smp_dir: Path, tmp_path: Path
) -> None:
    smp_dir = shutil.copytree(smp_dir, tmp_path / "taken")
    with pytest.raises(OutputExistsError, match="already exists"):
        formats.write(smp_dir, fpn, None)
    with pytest.raises(OptionError, match="mode='insert'"):
        formats.write(smp_dir, fpn, _record("insert"), force=True)
    assert formats.write(smp_dir, fpn, _record(), force=True) == smp_dir
    assert _config(smp_dir)["eqsurgeon"] == record_to_plain(_record())


def test_write_a_transformers_folder_from_a_transformers_source(
    seg: nn.Module, seg_folder: Path, tmp_path: Path
) -> None:
    source = formats.read(seg_folder).source
    out = formats.write(tmp_path / "cal", seg, _record(), source)
    assert _config(out)["eqsurgeon"] == record_to_plain(_record()) and not hasattr(seg.config, "eqsurgeon")
    assert (out / hf_folder.PREPROCESSOR).read_text() == json.dumps(PROCESSOR)
    model = hf_folder.hf_factory(out, _config(out))()  # loads back with no missing or unexpected weights
    _same_tensors(model.state_dict(), seg.state_dict())
    bare = formats.write(tmp_path / "bare", seg, None)  # no source: no processor to copy
    assert sorted(p.name for p in bare.iterdir()) == ["config.json", "model.safetensors"]
    assert "eqsurgeon" not in _config(bare)


def test_write_an_smp_folder_keeps_an_smp_sources_config(
    fpn: nn.Module, smp_dir: Path, tmp_path: Path
) -> None:
    source = Source("smp", smp_dir, config={**_config(smp_dir), "dataset": "cityscapes"})
    out = formats.write(tmp_path / "cal", fpn, None, source)
    assert _config(out) == {**fpn._hub_mixin_config, "dataset": "cityscapes", "_model_class": "FPN"}
    pth_source = Source("pth", tmp_path / "w.pth", meta={"a": 1})
    plain = formats.write(tmp_path / "plain", fpn, None, pth_source)
    assert _config(plain) == {**fpn._hub_mixin_config, "_model_class": "FPN"}
