"""Progress lines, JSONL and TensorBoard output, process-0-only writing, the MFU helper and useful throughput."""

import io
import json
import struct

import jax
import pytest
from tensorboardX.proto import event_pb2

from mobilebert_jax import hardware
from mobilebert_jax.metrics_writer import MetricsWriter, ProgressLine
from mobilebert_jax.train.throughput import Throughput


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def read_scalars(logdir) -> dict:
    """(tag, step) -> value from tensorboard event files (TFRecord framing around Event protos)."""
    out = {}
    for path in logdir.iterdir():
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out[(v.tag, event.step)] = v.simple_value
    return out


def test_progress_line_rate_eta_and_tokens():
    clock = FakeClock()
    line = ProgressLine(total_steps=1000, tokens_per_step=2048 * 512, smoothing=0.5, clock=clock)
    assert line.update(0, {"loss": 10.0, "other": 1.0}) == "step 0/1000 | loss 10"
    clock.t += 50.0  # 100 steps in 50 s: 2 steps/s
    assert line.update(100, {"loss": 2.34567}) == (
        "step 100/1000 | loss 2.346 | 2 steps/s | 2,097,152 tokens/s | ETA 00:07:30")
    clock.t += 25.0  # 100 steps in 25 s: 4 steps/s, smoothed to 0.5 * 2 + 0.5 * 4 = 3
    assert line.update(200, {}) == "step 200/1000 | 3 steps/s | 3,145,728 tokens/s | ETA 00:04:27"

    slow = ProgressLine(total_steps=101, smoothing=0.0, clock=clock)
    slow.update(0, {})
    clock.t += 3600.0  # one step an hour, 100 to go
    assert slow.update(1, {}) == "step 1/101 | 0.000278 steps/s | ETA 100:00:00"  # hours do not wrap


def test_progress_line_real_tokens_and_padding():
    clock = FakeClock()
    line = ProgressLine(total_steps=1000, tokens_per_step=2048 * 512, smoothing=0.5, clock=clock)
    line.update(0, {"loss": 10.0, "padding_fraction": 0.25})
    clock.t += 50.0  # 2 steps/s
    assert line.update(100, {"loss": 2.5, "padding_fraction": 0.375}) == (
        "step 100/1000 | loss 2.5 | 2 steps/s | 2,097,152 tokens/s (1,310,720 real, 37.5% padding) | ETA 00:07:30")


def test_throughput_of_a_window_with_known_padding():
    """Two steps of 4 rows x 8 tokens (64 padded tokens) holding 40 real ones: 37.5% padding; the useful figures
    are the padded ones times 0.625; a step without an input_mask counts in neither."""
    tp = Throughput(batch_size=4, tokens_per_example=8, flops_per_step=1000.0, dtype="float32")
    assert tp.scalars(None) == {}
    tp.add_step(24)
    tp.add_step(None)
    tp.add_step(16)
    assert tp.scalars(None) == {"padding_fraction": 0.375}  # the first logging step: no rate yet
    tp.add_step(32)
    tp.add_step(16)
    assert tp.scalars(2.0) == {  # no MFU: the test machine's CPUs have no known peak
        "padding_fraction": 0.25, "examples_per_second": 8.0, "tokens_per_second": 64.0,
        "model_flops_per_second": 2000.0, "real_tokens_per_second": 48.0, "useful_model_flops_per_second": 1500.0}
    assert tp.scalars(2.0) == {"examples_per_second": 8.0, "tokens_per_second": 64.0,
                               "model_flops_per_second": 2000.0}  # a window of batches without input_mask


def test_useful_mfu_next_to_mfu(monkeypatch):
    monkeypatch.setattr(hardware, "mfu", lambda flops, seconds, dtype: flops / seconds / 1e4)
    tp = Throughput(batch_size=2, tokens_per_example=4, flops_per_step=1000.0, dtype="bfloat16")
    tp.add_step(6)
    out = tp.scalars(5.0)
    assert out["mfu"] == 0.5 and out["useful_mfu"] == 0.375 and out["padding_fraction"] == 0.25


def test_writer_jsonl_tensorboard_and_stdout(tmp_path):
    clock, out = FakeClock(), io.StringIO()
    with MetricsWriter(str(tmp_path), total_steps=20, tokens_per_step=4, stream=out, clock=clock,
                       progress_keys=("loss", "accuracy")) as writer:
        writer.write(10, {"loss": 1.5, "accuracy": jax.numpy.float32(0.25), "lr": 1e-3})
        clock.t += 5
        writer.write(20, {"loss": float("nan"), "accuracy": 0.5})
        writer.write(20, {"eval_loss": 1.25}, progress=False)
        assert writer.steps_per_second == 2.0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], {k: v for k, v in r.items() if k not in ("step", "time")}) for r in records[:1]] == [
        (10, {"loss": 1.5, "accuracy": 0.25, "lr": 1e-3})]
    assert records[1]["loss"] != records[1]["loss"]  # NaN survives
    assert records[2] == {"step": 20, "time": records[2]["time"], "eval_loss": 1.25}
    assert out.getvalue().splitlines() == [
        "step 10/20 | loss 1.5 | accuracy 0.25",
        "step 20/20 | loss nan | accuracy 0.5 | 2 steps/s | 8 tokens/s | ETA 00:00:00",
    ]
    scalars = read_scalars(tmp_path / "tensorboard")
    assert scalars[("loss", 10)] == 1.5 and scalars[("lr", 10)] == pytest.approx(1e-3)
    assert scalars[("eval_loss", 20)] == 1.25


def test_non_scalar_metric_is_an_error(tmp_path):
    with MetricsWriter(str(tmp_path), total_steps=1, stream=io.StringIO()) as writer:
        with pytest.raises(ValueError, match=r"metric 'loss' at step 3 is not a scalar \(shape \(2,\)\)"):
            writer.write(3, {"loss": [1.0, 2.0]})


def test_other_processes_write_nothing(tmp_path):
    out = io.StringIO()
    workdir = tmp_path / "w"
    with MetricsWriter(str(workdir), total_steps=10, stream=out, process_index=1) as writer:
        writer.write(1, {"loss": 1.0})
        writer.flush()
    assert out.getvalue() == "" and not workdir.exists()


def test_peak_flops_table():
    assert hardware.peak_flops("TPU v4") == 275e12
    assert hardware.peak_flops("TPU v5 lite") == 197e12 and hardware.peak_flops("TPU v5e") == 197e12
    assert hardware.peak_flops("TPU v5") == 459e12 and hardware.peak_flops("TPU v5p") == 459e12
    assert hardware.peak_flops("TPU v6 lite") == 918e12
    assert hardware.peak_flops("TPU v3") == 61.5e12  # per TensorCore
    assert hardware.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert hardware.peak_flops("NVIDIA H100 80GB HBM3", "float32") == 494.7e12  # TF32
    assert hardware.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert hardware.peak_flops("NVIDIA A100-SXM4-40GB", "float32") == 156e12
    assert hardware.peak_flops("NVIDIA H200") == 989e12
    assert hardware.peak_flops("cpu") is None
    with pytest.raises(ValueError, match="dtype='float16'"):
        hardware.peak_flops("TPU v4", "float16")


def test_mfu():
    class FakeDevice:
        def __init__(self, kind):
            self.device_kind = kind

    v4 = [FakeDevice("TPU v4")] * 4
    assert hardware.mfu(275e12 * 4 * 0.5, 1.0, v4) == pytest.approx(0.5)
    assert hardware.mfu(275e12, 2.0, v4) == pytest.approx(0.125)
    assert hardware.mfu(1e9, 1.0) is None  # the test machine's CPUs have no peak
    with pytest.raises(ValueError, match="mixed device kinds"):
        hardware.mfu(1.0, 1.0, [FakeDevice("TPU v4"), FakeDevice("TPU v5 lite")])
    with pytest.raises(ValueError, match="step_time_s=0"):
        hardware.mfu(1.0, 0, v4)


@pytest.mark.parametrize("tail,kept", [('{"step": 3, "lo', ['{"step": 1}', '{"step": 2}']),
                                       ('{"step": 3}', ['{"step": 1}', '{"step": 2}', '{"step": 3}'])])
def test_a_torn_last_line_is_repaired_before_appending(tmp_path, caplog, tail, kept):
    """A run killed mid-write left a line without its newline: the resumed writer neither appends onto it nor
    keeps a line that does not parse."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n' + tail)
    with MetricsWriter(str(tmp_path), total_steps=9, stream=io.StringIO(), tensorboard=False) as writer:
        writer.write(4, {"loss": 1.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines[:-1] == kept and json.loads(lines[-1])["step"] == 4
    assert ("dropped its last line" in caplog.text) == (len(kept) == 2), caplog.text


def test_lines_fit_a_terminal():
    from mobilebert_jax.metrics_writer import LINE_WIDTH, eval_line

    many = {f"layer_{i}/{k}": 0.001 * i for i in range(24) for k in ("feature_map", "mean", "variance")}
    line = eval_line(200, many)
    assert len(line) <= LINE_WIDTH and line.startswith("eval at step 200: layer_0/feature_map 0.0000 | ")
    assert line.endswith("| ... (all in metrics.jsonl)")
    assert eval_line(5, {"loss": 1.5, "accuracy": 0.25}) == "eval at step 5: loss 1.5000 | accuracy 0.2500"
    assert eval_line(5, {"loss": 1.5}, lambda metrics, step: [f"step {step}", "short"]) == (
        "eval at step 5: step 5 | short")
    clock = FakeClock()
    line = ProgressLine(total_steps=10, clock=clock, summary=lambda metrics, step: [f"x {metrics['x']}"])
    assert line.update(1, {"x": 2, "loss": 1.0}) == "step 1/10 | x 2"
