"""Property tests for everything that parses user text: model specs, ``--arg`` literals, ``--input-size``,
``--mean``/``--std``, ``--set``, recipes and checkpoint records. Whatever the text, the parser either
returns a value or raises its documented error type (an ``EqSurgeonError``), which the CLI turns into one
line with exit 2; any other exception would be a traceback with exit 3.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eqsurgeon.cli._common import in_flags, parse_floats, parse_size, printable
from eqsurgeon.errors import CheckpointError, EqSurgeonError, ModelLoadError, RecipeError
from eqsurgeon.io import METADATA_KEY, record_from_header
from eqsurgeon.loading import _resolve, parse_kwargs
from eqsurgeon.training.config import config_from_dict, load_config, read_toml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models.py"
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text of every kind: control characters, surrogates (undecodable file-name bytes), brackets, quotes.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
PUNCT = st.text(string.ascii_letters + string.digits + " ._:/\\-=[]{}()'\",x×*+#\t\n", max_size=30)
TEXT = st.one_of(ANY_TEXT, PUNCT)
IDENT = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)


@st.composite
def specs(draw: Any) -> str:
    """Model specs: bare names, empty parts, relative, non-identifier and missing modules, files, folders.

    Module names that could exist are prefixed so nothing real is imported (no import side effects).
    """
    where = draw(
        st.one_of(
            TEXT,
            st.sampled_from(["", ".", "..x", "a b", "/", "x.py", "no/such.py", str(FIXTURES), "torchvision"]),
            IDENT.map(lambda s: f"zz_eqsurgeon_missing_{s}"),
            IDENT.map(lambda s: f"zz_eqsurgeon_missing.{s}"),
            IDENT.map(lambda s: f"{tempfile.gettempdir()}/{s}.py"),
        )
    )
    name = draw(st.one_of(TEXT, IDENT, st.sampled_from(["", "dropout_between", "no_sites", "FIXTURES"])))
    form = draw(st.sampled_from(["colon", "bare", "torchvision"]))
    if form == "bare":
        return where if not _could_import(where) else f"zz_eqsurgeon_missing_{where}"
    if form == "torchvision":
        return f"torchvision:{name}"
    return f"{where if not _could_import(where) else 'zz_eqsurgeon_missing_' + where}:{name}"


def _could_import(where: str) -> bool:
    # A dotted identifier other than our prefixes might name a real module; never import those.
    parts = where.split(".")
    real = where in ("torchvision",)
    ours = where.startswith("zz_eqsurgeon_missing")
    return not real and not ours and all(p.isidentifier() for p in parts)


@PROPERTY
@given(specs())
def test_model_specs_resolve_or_raise_model_load_error(spec: str) -> None:
    try:
        factory, label = _resolve(spec)
    except ModelLoadError:
        return
    assert callable(factory) and label == spec


@PROPERTY
@given(st.lists(st.one_of(TEXT, st.builds("{}={}".format, IDENT, TEXT)), max_size=4))
def test_arg_literals_parse_or_raise_model_load_error(pairs: list[str]) -> None:
    try:
        parsed = parse_kwargs(pairs)
    except ModelLoadError:
        return
    assert all(key.isidentifier() for key in parsed)


def test_arg_literals_nested_too_deeply_are_one_error() -> None:
    for text in ("[" * 5000, "(" * 300 + ")" * 300, "{'a': " * 400):
        try:
            value = parse_kwargs([f"x={text}"])["x"]
        except ModelLoadError as exc:
            assert "nests too deeply" in str(exc)
        else:
            assert value == text  # not a literal: kept as the text itself


@PROPERTY
@given(st.one_of(TEXT, st.builds("{}x{}".format, st.integers(-5, 10**6), st.integers(-5, 10**6))))
def test_input_size_parses_or_raises_the_documented_errors(text: str) -> None:
    from eqsurgeon.api import DataOptions

    try:
        size = parse_size(text)
        DataOptions(input_size=size)
    except EqSurgeonError:
        return
    assert size is not None and len(size) == 2 and min(size) >= 1


@PROPERTY
@given(TEXT)
def test_mean_and_std_parse_or_raise_the_documented_errors(text: str) -> None:
    from eqsurgeon.images import LoaderOptions

    try:
        values = parse_floats(text, "--std")
        LoaderOptions(mean=values, std=values)  # type: ignore[arg-type]
    except EqSurgeonError:
        return
    assert values is not None and len(values) == 3


TOML_SCALAR = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=10),
)
TOML_VALUE = st.recursive(
    TOML_SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(IDENT, inner, max_size=3),
    max_leaves=6,
)
SECTIONS = ["model", "data", "optim", "schedule", "loss", "eval", "checkpoint", "eq", "run"]
KEYS = [
    "name",
    "kwargs",
    "init",
    "crop_size",
    "batch_size",
    "workers",
    "lr",
    "iters",
    "stride",
    "interval",
    "log_interval",
    "seed",
    "scale",
    "mode",
    "tolerance",
    "betas",
    "max_pixels",
    "ratio_range",
]


@PROPERTY
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(SECTIONS), IDENT),
        st.one_of(st.dictionaries(st.sampled_from(KEYS) | IDENT, TOML_VALUE, max_size=4), TOML_SCALAR),
        max_size=4,
    )
)
def test_recipes_load_or_raise_recipe_error(raw: dict[str, Any]) -> None:
    try:
        config_from_dict(raw, source="recipe.toml")
    except RecipeError:
        return


def _toml(value: Any) -> str:
    from eqsurgeon.training.recipe_toml import _toml_value

    return _toml_value(list(value) if isinstance(value, tuple) else value)


SET_ITEM = st.one_of(
    TEXT,
    st.builds(
        "{}.{}={}".format,
        st.one_of(st.sampled_from(SECTIONS), IDENT, st.just("")),
        st.one_of(st.sampled_from(KEYS), IDENT, st.builds("{}.{}".format, st.sampled_from(KEYS), IDENT)),
        st.one_of(TEXT, TOML_VALUE.map(_toml)),
    ),
)


@PROPERTY
@given(st.lists(SET_ITEM, max_size=3))
def test_set_overrides_load_or_raise_recipe_error(items: list[str]) -> None:
    try:
        load_config(None, items)
    except RecipeError:
        return


@PROPERTY
@given(st.binary(max_size=200))
def test_recipe_files_of_any_bytes_load_or_raise_recipe_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.toml"
        path.write_bytes(data)
        try:
            config_from_dict(read_toml(path, "recipe"), source=str(path))
        except RecipeError:
            return


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
RECORD_KEYS = [
    "model",
    "mode",
    "bn_mode",
    "images",
    "data_fingerprint",
    "sites",
    "input_size",
    "image_mean",
    "image_std",
    "layer",
    "op",
    "groups",
    "channel_dim",
    "status",
    "inputs",
    "channels",
    "mean",
    "std",
    "scale",
    "model_kwargs",
]


@PROPERTY
@given(
    st.one_of(
        TEXT,
        JSON.map(json.dumps),
        st.dictionaries(st.sampled_from(RECORD_KEYS), JSON, max_size=8).map(json.dumps),
    )
)
def test_checkpoint_records_parse_or_raise_checkpoint_error(text: str) -> None:
    try:
        record_from_header({METADATA_KEY: text}, "w.safetensors")
    except CheckpointError:
        return


@PROPERTY
@given(ANY_TEXT)
def test_error_lines_print_any_text(text: str) -> None:
    line = printable(in_flags(text))
    line.encode("utf-8")  # writable to any UTF-8 terminal: no lone surrogate
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
