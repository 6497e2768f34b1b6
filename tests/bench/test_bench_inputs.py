"""The --input-shape grammar, shape resolution against a model, and random feeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from compressor.bench.inputs import (
    MAX_INPUT_ELEMENTS,
    format_shape,
    graph_inputs,
    natural_batch,
    parse_input_shape,
    parse_input_shapes,
    random_feeds,
    resolve_input_shapes,
    shapes_for_batch,
)
from compressor.errors import UsageError

# --------------------------------------------------------------------------- grammar


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("x:1x3x224x224", ("x", (1, 3, 224, 224))),
        ("1x3x224x224", (None, (1, 3, 224, 224))),
        ("input_1:0:1x3x8x8", ("input_1:0", (1, 3, 8, 8))),  # TF-style names keep their ':'
        ("x:[1,3,8,8]", ("x", (1, 3, 8, 8))),  # Polygraphy's bracket form
        ("x:1,3", ("x", (1, 3))),
        (" x : 2 x 5 ", ("x", (2, 5))),
        ("7", (None, (7,))),
    ],
)
def test_parse_accepts_documented_forms(spec, expected):
    """Every documented spelling parses to (name or None, dims)."""
    assert parse_input_shape(spec) == expected, f"{spec!r} should parse to {expected}"


@pytest.mark.parametrize(
    "spec",
    ["", "x:", ":1x3", "x:1x0x3", "x:1x-3", "x:1xx3", "x:1x3.5", "x:axb", "x:[]", "1x3x", "x:[1,3"],
)
def test_parse_rejects_bad_grammar_with_one_line(spec):
    """Bad syntax is a UsageError whose message is one line and quotes the spec."""
    with pytest.raises(UsageError) as info:
        parse_input_shape(spec)
    message = str(info.value)
    assert "\n" not in message, f"error for {spec!r} should be one line, got {message!r}"
    assert "--input-shape" in message, f"error should name the flag, got {message!r}"


def test_parse_many_builds_a_dict():
    """Repeated specs become {name: dims}."""
    assert parse_input_shapes(["a:1x2", "b:3"]) == {"a": (1, 2), "b": (3,)}, "two named specs"
    assert parse_input_shapes([]) == {}, "no spec, no shapes"
    assert parse_input_shapes(None) == {}, "None is no spec"


@pytest.mark.parametrize(
    "specs",
    [["a:1x2", "a:1x3"], ["1x2", "3x4"], ["1x2", "a:1x2"]],
    ids=["same-name-twice", "two-unnamed", "unnamed-and-named"],
)
def test_parse_many_rejects_ambiguous_lists(specs):
    """A name given twice, two unnamed specs, or unnamed mixed with named: UsageError."""
    with pytest.raises(UsageError, match="--input-shape"):
        parse_input_shapes(specs)


@settings(max_examples=60, deadline=None)
@given(
    name=st.one_of(st.none(), st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:/]{0,12}", fullmatch=True)),
    dims=st.lists(st.integers(min_value=1, max_value=4096), min_size=1, max_size=6).filter(
        lambda d: math.prod(d) <= MAX_INPUT_ELEMENTS),
)
def test_parse_inverts_format(name, dims):
    """format_shape then parse gives back the same name and dims (round trip)."""
    spec = format_shape(dims) if name is None else f"{name}:{format_shape(dims)}"
    assert parse_input_shape(spec) == (name, tuple(dims)), f"round trip failed for {spec!r}"


# --------------------------------------------------------------------------- resolution


def test_dynamic_batch_defaults_and_is_recorded(models):
    """An unknown dim 0 takes default_batch, and defaults_used names the input and the dim."""
    shapes, defaults = resolve_input_shapes(models.relu(("N", 4)), {}, default_batch=3)
    assert shapes == {"x": (3, 4)}, f"batch dim should default to 3, got {shapes}"
    assert len(defaults) == 1 and defaults[0].startswith("x[0] = 3"), (
        f"the batch default should be recorded for x[0], got {defaults}"
    )


def test_static_model_needs_no_spec_and_records_nothing(models):
    """A fully static input resolves to its own shape with no defaults."""
    shapes, defaults = resolve_input_shapes(models.relu((2, 4)), {})
    assert shapes == {"x": (2, 4)} and defaults == [], f"got {shapes}, {defaults}"


def test_unknown_dim_without_name_counts_as_batch(models):
    """A dim 0 with neither value nor name (None) also takes the batch."""
    shapes, defaults = resolve_input_shapes(models.relu((None, 4)), {}, default_batch=5)
    assert shapes == {"x": (5, 4)} and defaults, f"got {shapes}, {defaults}"


def test_spec_contradicting_a_static_dim_is_an_error(models):
    """--input-shape must agree with every static dim; the error names input and dim."""
    with pytest.raises(UsageError, match=r"'x' has dim 1 fixed to 4"):
        resolve_input_shapes(models.relu(("N", 4)), {"x": (1, 5)})


def test_spec_rank_mismatch_is_an_error(models):
    """A spec of the wrong rank is a UsageError naming both ranks."""
    with pytest.raises(UsageError, match="rank 3 but input 'x' has rank 2"):
        resolve_input_shapes(models.relu(("N", 4)), {"x": (1, 4, 1)})


def test_unknown_non_batch_dim_without_spec_is_an_error(models):
    """A dynamic dim after dim 0 with no spec: the error names the input and the flag."""
    with pytest.raises(UsageError) as info:
        resolve_input_shapes(models.relu(("N", 3, "H", "W")), {})
    message = str(info.value)
    assert "'x'" in message and "--input-shape x:" in message, (
        f"error should name the input and show the flag to pass, got {message!r}"
    )
    assert "\n" not in message, "one line"
    assert "--input-shape x:1x3xD2xD3 with a size for each D" in message, message


def test_the_shape_hint_does_not_copy_an_exporters_dim_expression(models):
    """torch's dynamo export names dims '32*h': the hint read 'x:1x3x32*hx32*w', which does not parse."""
    with pytest.raises(UsageError) as info:
        resolve_input_shapes(models.relu(("N", 3, "32*h", "32*w")), {})
    assert "x:1x3xD2xD3" in str(info.value) and "32*hx" not in str(info.value)


def test_unnamed_spec_applies_to_the_single_input(models):
    """A spec without a name is the shape of the only input."""
    shapes, defaults = resolve_input_shapes(models.relu(("N", 3, "H", "W")), {None: (2, 3, 8, 8)})
    assert shapes == {"x": (2, 3, 8, 8)} and defaults == [], f"got {shapes}, {defaults}"


def two_input_model(models, extra_initializer: bool = False):
    inputs = [("ids", TensorProto.INT64, ["B", "S"]), ("mask", TensorProto.INT64, ["B", "S"])]
    initializers = []
    if extra_initializer:  # old exporters list initializers as graph inputs too
        inputs.append(("bias", TensorProto.INT64, [1]))
        initializers.append(helper.make_tensor("bias", TensorProto.INT64, [1], [1]))
    nodes = [helper.make_node("Add", ["ids", "mask"], ["s"])]
    if extra_initializer:
        nodes.append(helper.make_node("Add", ["s", "bias"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["s"], ["y"]))
    return models.build(inputs, nodes, ["y"], initializers)


def test_unnamed_spec_on_multi_input_model_is_an_error(models):
    """An unnamed spec is ambiguous with two inputs: the error lists them."""
    with pytest.raises(UsageError, match="ids, mask"):
        resolve_input_shapes(two_input_model(models), {None: (1, 8)})


def test_spec_for_a_missing_input_is_an_error(models):
    """A spec naming no input of the model is a UsageError listing the real inputs."""
    with pytest.raises(UsageError, match=r"'nope', which is not an input .*inputs: x"):
        resolve_input_shapes(models.relu(("N", 4)), {"nope": (1, 4)})


def test_symbolic_dims_propagate_between_inputs(models):
    """A named dim fixed by one input's spec ('S' = 16) fills the same dim of another input."""
    shapes, defaults = resolve_input_shapes(two_input_model(models), {"ids": (2, 16)})
    assert shapes == {"ids": (2, 16), "mask": (2, 16)}, f"mask should follow ids, got {shapes}"
    assert any(d.startswith("mask[1] = 16") for d in defaults), f"recorded: {defaults}"


def test_conflicting_values_for_one_symbolic_dim_are_an_error(models):
    """Two specs giving 'S' different values contradict each other."""
    with pytest.raises(UsageError, match="dim 'S' two values"):
        resolve_input_shapes(two_input_model(models), {"ids": (1, 8), "mask": (1, 9)})


def test_initializer_inputs_are_skipped(models):
    """Graph inputs that are initializers need no shape and get no feed."""
    model = two_input_model(models, extra_initializer=True)
    assert [vi.name for vi in graph_inputs(model)] == ["ids", "mask"], "bias is an initializer"
    shapes, _ = resolve_input_shapes(model, {"ids": (1, 4)})
    assert set(shapes) == {"ids", "mask"}, f"only run-time inputs, got {set(shapes)}"


def test_batch_replaces_dim_zero_of_specs(models):
    """shapes_for_batch puts --batch into dim 0 of every spec."""
    shapes, _ = shapes_for_batch(models.relu(("N", 3, "H", "W")), {None: (1, 3, 8, 8)}, batch=4)
    assert shapes == {"x": (4, 3, 8, 8)}, f"batch 4 should replace dim 0, got {shapes}"


def image_and_scale_model(models):
    """x[N, 4] * scale[1]: the scale input has a static dim 0 but is not batched."""
    return models.build([("x", TensorProto.FLOAT, ["N", 4]), ("scale", TensorProto.FLOAT, [1])],
                        [helper.make_node("Mul", ["x", "scale"], ["y"])], ["y"])


def test_static_unbatched_input_keeps_its_dim_zero(models):
    """With a dynamic-batch input present, a static dim 0 elsewhere is not a batch: kept as is."""
    model = image_and_scale_model(models)
    shapes, _ = shapes_for_batch(model, {"scale": (1,)}, batch=8)
    assert shapes == {"x": (8, 4), "scale": (1,)}, f"scale must stay [1], got {shapes}"


def test_natural_batch(models):
    """No --batch: dim 0 of a dynamic input's spec, else a fixed model's own batch, else None."""
    assert natural_batch(models.relu(("N", 4)), {None: (6, 4)}) == 6, "from the unnamed spec"
    assert natural_batch(models.relu((3, 4)), {}) == 3, "the model's fixed batch"
    assert natural_batch(models.relu(("N", 4)), {}) is None, "nothing implies a batch"
    assert natural_batch(image_and_scale_model(models), {"scale": (1,)}) is None, (
        "a spec of an unbatched static input implies no batch"
    )


def test_fixed_batch_model_rejects_another_batch(models):
    """A model whose dim 0 is static cannot run at another batch: the error says which to pass."""
    with pytest.raises(UsageError, match="fixed batch size of 2.*--batch 2"):
        shapes_for_batch(models.relu((2, 4)), {}, batch=8)
    shapes, _ = shapes_for_batch(models.relu((2, 4)), {}, batch=2)
    assert shapes == {"x": (2, 4)}, "the model's own batch works"


# --------------------------------------------------------------------------- random feeds


@pytest.mark.parametrize(
    ("elem_type", "dtype"),
    [
        (TensorProto.FLOAT, np.float32),
        (TensorProto.FLOAT16, np.float16),
        (TensorProto.DOUBLE, np.float64),
        (TensorProto.INT64, np.int64),
        (TensorProto.INT32, np.int32),
        (TensorProto.UINT8, np.uint8),
        (TensorProto.BOOL, np.bool_),
    ],
)
def test_feeds_have_the_input_dtype_and_shape(models, elem_type, dtype):
    """Each feed has the model's element type and the resolved shape."""
    model = models.build([("x", elem_type, ["N", 3])], [helper.make_node("Identity", ["x"], ["y"])],
                         ["y"])
    feeds = random_feeds(model, {"x": (2, 3)})
    assert feeds["x"].dtype == dtype, f"expected {np.dtype(dtype)}, got {feeds['x'].dtype}"
    assert feeds["x"].shape == (2, 3), f"expected (2, 3), got {feeds['x'].shape}"


def test_feeds_are_seeded(models):
    """Same seed, same values; another seed, other values."""
    model = models.relu(("N", 16))
    a, b = random_feeds(model, {"x": (1, 16)}, seed=1), random_feeds(model, {"x": (1, 16)}, seed=1)
    c = random_feeds(model, {"x": (1, 16)}, seed=2)
    assert np.array_equal(a["x"], b["x"]), "same seed should give the same input"
    assert not np.array_equal(a["x"], c["x"]), "different seeds should differ"


def test_integer_feeds_are_small_non_negative(models):
    """Integer inputs are in [0, 10): safe as indices and token ids."""
    model = models.build([("i", TensorProto.INT64, [64])],
                         [helper.make_node("Identity", ["i"], ["y"])], ["y"])
    values = random_feeds(model, {"i": (64,)})["i"]
    assert values.min() >= 0 and values.max() < 10, f"got range [{values.min()}, {values.max()}]"


def test_string_inputs_are_a_usage_error(models):
    """No random input can be made for a string tensor: a UsageError naming the input."""
    model = models.build([("s", TensorProto.STRING, [1])],
                         [helper.make_node("Identity", ["s"], ["y"])], ["y"])
    with pytest.raises(UsageError, match="'s' has type STRING"):
        random_feeds(model, {"s": (1,)})


@pytest.mark.parametrize("spec", ["99999999999999999999x3x64x64", "1x3x100000x100000"])
def test_an_input_shape_too_large_to_feed_is_a_usage_error(spec):
    """It reached protobuf ("Value out of range") or numpy (MemoryError): exit 1."""
    with pytest.raises(UsageError, match="elements; at most"):
        parse_input_shapes([spec])


def test_a_resolved_shape_too_large_to_feed_is_a_usage_error(models):
    """Shapes given to the Python API as a dict skip the parser: resolution checks them too."""
    with pytest.raises(UsageError, match="elements; at most"):
        resolve_input_shapes(models.relu(("N", 3, "H", "W")), {"x": (1, 3, 100000, 100000)})
