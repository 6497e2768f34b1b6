"""Model files written by other tools' conventions: loaded, pruned, or refused at load (exit 2).

Found by fuzzing with hand-built graphs: initializers listed as graph inputs (torch's
``keep_initializers_as_inputs=True``, IR 4-9) failed verification (exit 3), and duplicate node
names, which onnx.checker allows and onnxruntime refuses, failed inside the oracle (exit 1).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from compressor import api
from compressor.cli import main
from tests.core.graphs import G


def _chain():
    g = G(opset=13)
    x = g.input("x", [1, 3, 8, 8])
    return g, g.conv(g.op("Relu", [g.conv(x, 3, 8)]), 8, 4, k=1)


@pytest.mark.parametrize("ir_version", [3, 6, 10])
def test_initializers_listed_as_inputs_are_weights(ir_version):
    g, y = _chain()
    m = g.model([y], ir_version=max(ir_version, 4))
    m.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in m.graph.initializer)
    m.ir_version = ir_version
    res = api.prune(m, ratio=0.5)
    assert res.report["verify"]["passed"] and res.report["groups"]["pruned"] == 1
    assert [i.name for i in res.model.graph.input] == ["x"]
    onnx.checker.check_model(res.model)


def test_duplicate_node_names_are_refused_at_load(tmp_path):
    g, y = _chain()
    m = g.model([y])
    for n in m.graph.node:
        n.name = "blk"
    src = tmp_path / "dup.onnx"
    onnx.save(m, src)
    r = CliRunner().invoke(main, [str(src), "-o", str(tmp_path / "out.onnx")])
    assert r.exit_code == 2 and "two nodes are named 'blk'" in r.output
    assert not (tmp_path / "out.onnx").exists()
    assert onnx.load(src).SerializeToString() == m.SerializeToString()  # the input is untouched


def test_a_model_that_fails_strict_type_inference_is_a_bad_input(tmp_path):
    """onnx.checker's plain check passes a Conv on an int64 input; the pruned model's strict
    inference then failed, reported as a failed verification (exit 3): the input is at fault."""
    from onnx import TensorProto, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.int64), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv1")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, [1, 4, 4, 4])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    src = tmp_path / "int.onnx"
    onnx.save(m, src)
    r = CliRunner().invoke(main, [str(src), "-o", str(tmp_path / "out.onnx")])
    assert r.exit_code == 2 and "strict shape inference" in r.output, r.output


def test_a_model_onnxruntime_cannot_run_is_a_bad_input(tmp_path):
    """A float64 Conv (torch's .double() export) has no CPU kernel: exit 2 naming the cause, not
    an internal error from inside the verification (exit 1)."""
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 4, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    src = tmp_path / "f64.onnx"
    onnx.save(m, src)
    r = CliRunner().invoke(main, [str(src), "-o", str(tmp_path / "out.onnx")])
    assert r.exit_code == 2 and "cannot run this model" in r.output and "float64" in r.output, r.output


def test_training_info_of_pruned_weights_is_dropped_with_a_warning():
    """training_info's algorithm still produced the unpruned weight shapes: the model was written
    inconsistent, silently."""
    g, y = _chain()
    m = g.model([y])
    w = m.graph.initializer[0]
    algo = helper.make_graph([helper.make_node("Identity", [w.name], [w.name + "_next"])], "step", [],
                             [helper.make_tensor_value_info(w.name + "_next", w.data_type, list(w.dims))])
    info = m.training_info.add()
    info.algorithm.CopyFrom(algo)
    info.update_binding.add(key=w.name, value=w.name + "_next")
    res = api.prune(m, ratio=0.5)
    assert not len(res.model.training_info)
    assert any("training_info" in line for line in res.report["warnings"])
    kept = api.prune(m, ratio=0.0)  # nothing pruned: nothing to drop
    assert len(kept.model.training_info) == 1


def test_an_unsorted_graph_is_sorted_on_load(tmp_path):
    """onnxruntime's float16 converter appends its input Casts at the end of the graph: the model
    was refused ("reads ... before it is produced"). Its nodes are now put in order (a copy, for a
    ModelProto: the caller's model is not edited), and the report says so."""
    g, y = _chain()
    m = g.model([y])
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))
    before = m.SerializeToString()
    res = api.prune(m, ratio=0.5)
    assert res.report["verify"]["passed"] and any("topological order" in n for n in res.report["load_notes"])
    assert m.SerializeToString() == before
    path = tmp_path / "unsorted.onnx"
    onnx.save(m, path)
    r = CliRunner().invoke(main, [str(path), "-o", str(tmp_path / "o.onnx")])
    assert r.exit_code == 0 and "loading: the graph's nodes were not in topological order" in r.output, r.output
    assert path.read_bytes() == before


def test_a_cycle_is_still_refused():
    g, y = _chain()
    m = g.model([y])
    m.graph.node[0].input[0] = m.graph.node[-1].output[0]  # the first conv reads the last output
    with pytest.raises(Exception, match="before it is produced|not produced"):
        api.prune(m, ratio=0.5)


def test_a_graph_output_without_shape_is_named():
    """onnx's checker said only "Field 'shape' of 'type' is required but missing"."""
    g, y = _chain()
    m = g.model([y])
    m.graph.output[0].type.tensor_type.ClearField("shape")
    with pytest.raises(Exception, match=f"graph output '{m.graph.output[0].name}' declares no shape"):
        api.prune(m, ratio=0.5)


def test_initializer_metadata_survives_pruning(tmp_path):
    """Tensor metadata_props were dropped from every weight written from an array, pruned or not."""
    g, y = _chain()
    m = g.model([y])
    for t in m.graph.initializer:
        t.metadata_props.add(key="source", value=t.name)
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    res = api.prune(str(path), ratio=0.5, output=tmp_path / "o.onnx")
    out = onnx.load(tmp_path / "o.onnx")
    assert res.report["groups"]["pruned"] == 1
    for t in out.graph.initializer:
        if t.name in {i.name for i in m.graph.initializer}:
            assert [(p.key, p.value) for p in t.metadata_props] == [("source", t.name)], t.name
