"""tools/detection_coverage.py: its pure helpers only (the weights recipe, the liveness measure, the
table). No torchvision or ultralytics: the rows themselves run in the zoo venv (make zoo-detect)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

TOOL = Path(__file__).resolve().parents[2] / "tools" / "detection_coverage.py"


def _load():
    spec = importlib.util.spec_from_file_location("_detection_coverage", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


dc = _load()


class FrozenBatchNorm2d(torch.nn.Module):
    """torchvision.ops.FrozenBatchNorm2d's buffers and arithmetic (matched by its class name)."""

    def __init__(self, n: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        for name, value in (("weight", torch.ones(n)), ("bias", torch.zeros(n)), ("running_mean", torch.zeros(n)),
                            ("running_var", torch.ones(n))):
            self.register_buffer(name, value)

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 6, 3, padding=1, bias=False), FrozenBatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 5, 1))


def _inputs_of(net, x) -> dict:
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a: seen.setdefault(mod, a[0].detach().clone()))
             for m in net if dc._is_norm(m)]
    net(x)
    for h in hooks:
        h.remove()
    return seen


def test_measured_norms_hold_the_statistics_of_their_inputs():
    net, x = _net(), torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    assert dc.set_norms(net, lambda: net(x), seed=0) == 2
    with torch.no_grad():
        for norm, inp in _inputs_of(net, x).items():  # every norm sees its input as calibrated
            torch.testing.assert_close(norm.running_mean, inp.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(norm.running_var, inp.var((0, 2, 3), unbiased=False), rtol=1e-5, atol=1e-6)
            assert ((norm.weight >= 0.5) & (norm.weight <= 1.5)).all()
            out = norm(inp)  # normalised: per channel, mean = bias and std = weight
            torch.testing.assert_close(out.mean((0, 2, 3)), norm.bias, rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(out.std((0, 2, 3), unbiased=False), norm.weight, rtol=1e-3, atol=1e-4)


def test_the_draws_are_seeded():
    def state(seed):
        net, x = _net(), torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
        dc.set_norms(net, lambda: net(x), seed=seed)
        return torch.cat([net[1].weight, net[1].bias, net[4].weight, net[4].running_var])

    assert torch.equal(state(0), state(0))
    assert not torch.equal(state(0), state(1))


def test_drawn_norms_are_at_their_fixed_ranges_without_a_forward_pass():
    net = _net()
    dc.set_norms(net, lambda: pytest.fail("drawn statistics need no forward pass"), mode="drawn")
    for norm in (net[1], net[4]):
        assert ((norm.running_var >= 0.15) & (norm.running_var <= 0.45)).all()
        assert ((norm.weight >= 0.5) & (norm.weight <= 1.5)).all()
    with pytest.raises(ValueError):
        dc.set_norms(net, lambda: None, mode="trained")


def test_unit_convs_get_unit_output_in_the_same_pass():
    net, x = _net(), torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        net[6].weight.mul_(0.01)  # a head at torchvision's N(0, 0.01) init
    dc.set_norms(net, lambda: net(x), unit_layers=[net[6]])
    with torch.no_grad():
        out = net(x) - net[6].bias.view(1, -1, 1, 1)
    assert abs(float(out.std()) - 1.0) < 1e-4


def test_relative_change_and_input_effect():
    a = np.array([1.0, 2.0, 4.0])
    assert dc.relative_change(a, a) == 0.0
    assert dc.relative_change(a, a + [0, 0, 1]) == pytest.approx(0.25)
    assert dc.relative_change(a, np.ones(2)) == 1.0, "another number of detections"
    assert dc.relative_change(np.zeros((0, 4)), np.zeros((0, 4))) is None, "nothing to compare"
    effect, name = dc.input_effect({"boxes": a, "scores": a}, {"boxes": a * 2, "scores": a * 1.001})
    assert name == "scores" and effect == pytest.approx(1e-3)
    assert dc.input_effect({"boxes": np.zeros((0, 4))}, {"boxes": np.zeros((0, 4))}) == (None, "")


def test_class_scores_of_each_yolo_output():
    rows = np.arange(2 * 9 * 3, dtype=np.float32).reshape(1, 18, 3)  # 4 box rows, nc = 2, extras
    assert dc.class_scores("rows", rows, 2).tolist() == rows[0, 4:6].tolist()
    dets = np.arange(2 * 6, dtype=np.float32).reshape(1, 2, 6)
    assert dc.class_scores("dets", dets, 80).tolist() == [4.0, 10.0]
    assert dc.class_scores("softmax", np.ones((1, 5)), 5).shape == (5,)


def test_warmup_follows_the_run_time():
    assert dc.warmup_runs(None) == 10 and dc.warmup_runs(20.0) == 10
    assert dc.warmup_runs(10_000.0) == 2 and dc.warmup_runs(1000.0) == 5


def _rows():
    ok = dc.Row(model="yolov8n", exporter="ultralytics", stage="done", input_effect=0.23, least_live="output0",
                scores_median=1.2e-5, scores_max=2.2e-3, groups_pruned=59, groups_total=63, macs_ratio=3.88,
                passed=True, max_rel_err=3.9e-7, discrimination=0.23, pinned=0, compared=4, prune_s=0.5,
                dense_ms=18.0, speedup=2.27, speedup_p10=2.19, speedup_p90=2.40)
    dead = dc.Row(**{**ok.__dict__, "model": "dead", "input_effect": 2.5e-4, "discrimination": 1e-5})
    fail = dc.Row(model="yolov10n", exporter="ultralytics (nms=False)", status="FAIL", stage="prune",
                  note="VerificationError: max relative error 0.000577 > 0.0001", passed=False, max_rel_err=5.8e-4)
    slow = dc.Row(model="maskrcnn_resnet50_fpn", exporter="torchscript", status="timed out",
                  note="over 900 s, in bench", stage="bench")
    empty = dc.Row(**{**ok.__dict__, "model": "empty", "input_effect": None, "least_live": ""})
    return ok, dead, fail, slow, empty


def test_the_status_cell_shows_every_failure_and_flag():
    ok, dead, fail, slow, empty = _rows()
    assert dc.verdict(ok) == "ok"
    assert "barely depend on the input (output0)" in dc.verdict(dead) and "weak proof" in dc.verdict(dead)
    assert dc.verdict(fail).startswith("FAIL: VerificationError")
    assert dc.verdict(slow) == "timed out: over 900 s, in bench"
    assert "outputs empty" in dc.verdict(empty)
    assert dc.good(ok) and not any(dc.good(r) for r in (dead, fail, slow, empty))
    assert len(dc.cells(fail)) == len(dc.HEAD)


def test_the_table_is_written_into_its_block_and_replaced(tmp_path):
    doc = tmp_path / "coverage.md"
    doc.write_text("# Coverage\n\nprose before\n")
    rows = list(_rows())
    text = dc.markdown(rows, "tools/detection_coverage.py --markdown docs/coverage.md", "today")
    assert "| yolov8n | ultralytics | ok | 59/63 | 3.88 | 3.9e-07 | 2.3e-01 | 0 | 4 | 0.5 | 18.0 | 2.27 (2.19-2.40) " \
           "|  |  | 0.23 (output0) | 1.2e-05 / 2.2e-03 |" in text
    assert "3/5 rows pruned and proven (1 with no flag); 2 failed, crashed or timed out; 0 did not export." in text
    dc.write_block(doc, dc.BEGIN, dc.END, text, dc.TITLE)
    dc.write_block(doc, dc.BEGIN, dc.END, dc.markdown(rows[:1], "again", "later"), dc.TITLE)
    out = doc.read_text()
    assert out.count(dc.BEGIN) == 1 and out.count(dc.TITLE) == 1 and "prose before" in out
    assert "| yolov10n |" not in out and "1/1 rows pruned and proven" in out


def test_saturated_scores_are_flagged():
    ok = _rows()[0]
    assert dc.verdict(dc.Row(**{**ok.__dict__, "scores_saturated": 0.0})) == "ok"
    few = dc.Row(**{**ok.__dict__, "scores_saturated": 9e-4})  # a few extreme logits: not flagged, but shown
    assert dc.verdict(few) == "ok" and dc.cells(few)[-1] == "1.2e-05 / 2.2e-03 (0.09% at 0 or 1)"
    assert "99% of the scores saturated" in dc.verdict(dc.Row(**{**ok.__dict__, "scores_saturated": 0.99}))


def test_an_export_error_says_its_cause_in_one_line():
    wrapped = RuntimeError("Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m of ...\n"
                           "- Modify the model code\n## Exception summary\n\n"
                           "<class 'torch.fx.experimental.symbolic_shapes.GuardOnDataDependentSymNode'>: Could not "
                           "guard on data-dependent expression u0 > 4000\n\nmore")
    assert dc._err(wrapped) == "RuntimeError: GuardOnDataDependentSymNode: Could not guard on data-dependent " \
                               "expression u0 > 4000"
    assert dc._err(ValueError("first\nsecond")) == "ValueError: first"


def test_nms_share_of_a_profile_leaves_out_the_warm_up_and_control_flow():
    def node(op, ts, dur):
        return {"cat": "Node", "name": f"{op}_1_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
              node("NonMaxSuppression", 10, 90),  # the warm-up run: left out
              {"cat": "Session", "name": "model_run", "ts": 100, "dur": 100},
              node("Conv", 110, 30), node("NonMaxSuppression", 140, 60), node("If", 130, 70)]
    assert dc.kernel_shares(events) == pytest.approx(60 / 90)
    assert dc.kernel_shares(events[:2]) == 1.0, "one run only: it is all there is"
    assert dc.kernel_shares([]) is None
    row = dc.Row(**{**_rows()[0].__dict__, "nms_dense": 0.86, "nms_pruned": 0.9})
    assert dc.cells(row)[dc.HEAD.index("NMS share dense / pruned")] == "86% / 90%"
    row = dc.Row(**{**row.__dict__, "boxes_dense": 300, "boxes_pruned": 0})
    assert dc.cells(row)[dc.HEAD.index("boxes dense / pruned")] == "300 / 0"
    assert "speedup not like for like: the pruned model returns 0 boxes" in dc.verdict(row)
    assert dc.verdict(dc.Row(**{**row.__dict__, "boxes_pruned": 300})) == "ok"


def test_rows_are_picked_by_model_or_row_id_and_exporter():
    assert {s.exporter for s in dc.select("fcn_resnet50", None)} == {"torchscript", "dynamo"}
    assert [s.id for s in dc.select("yolov10n", None)] == ["yolov10n@ultralytics", "yolov10n+e2e@ultralytics"]
    assert [s.id for s in dc.select("yolov8n+nms@ultralytics", None)] == ["yolov8n+nms@ultralytics"]
    assert all(s.exporter == "dynamo" for s in dc.select(None, "dynamo"))
    assert len({s.id for s in dc.ROWS}) == len(dc.ROWS), "row ids are unique"
    with pytest.raises(SystemExit):
        dc.select("resnet18", None)
