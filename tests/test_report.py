"""Where the loop's records go (report.py): the console with and without a terminal, metrics.jsonl
across a resume, TensorBoard's scalars, images and D-output histograms as TensorBoard reads them
back, RUN_DIR/STATUS, and what a rank other than 0 writes (nothing)."""
import io
import json
import re
import sys

import pytest
import torch
from rich.console import Console

from fastdcgan import plots, report
from fastdcgan.config import UsageError


def terminal():
    return Console(file=io.StringIO(), force_terminal=True, width=120)


def test_without_a_terminal_lines_go_to_stdout_as_they_are(capsys):
    d = report.Display(10, 0, console=Console(file=io.StringIO(), force_terminal=False))
    assert not d.terminal and d.progress is None
    d.update(3, 1, "loss 0.5")  # no bar to move
    d.print("step 3 [x]")
    d.print("done", last=True)
    assert capsys.readouterr().out == "step 3 [x]\ndone\n"


def test_a_rank_other_than_0_shows_nothing(capsys):
    console = terminal()
    d = report.Display(10, 0, enabled=False, console=console)
    assert d.progress is None and not d.terminal
    d.print("step 3", last=True)
    assert capsys.readouterr().out == "" and console.file.getvalue() == ""


def test_on_a_terminal_the_bar_follows_the_steps_and_the_last_line_takes_it_away():
    console = terminal()
    d = report.Display(120, 40, console=console)  # resumed at step 40
    assert d.terminal
    task = d.progress.tasks[0]
    assert (task.total, task.completed, task.fields["epoch"], task.fields["info"]) == (120, 40, 0, "")
    d.update(45, 2, "loss_d 1.2")
    assert (task.completed, task.fields["epoch"], task.fields["info"]) == (45, 2, "loss_d 1.2")
    d.update(46, 3)  # a step without a log line keeps the last info
    assert (task.completed, task.fields["epoch"], task.fields["info"]) == (46, 3, "loss_d 1.2")
    d.print("skipped 2 files (faces/[old] x.jpg, faces/[/tmp]/y.jpg)")  # shown as it is, not as markup
    assert d.progress is not None  # an ordinary line leaves the bar
    d.progress.refresh()
    bar = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", console.file.getvalue().splitlines()[-1])  # no colours
    assert bar.startswith("epoch 3 ━") and " 46/120 loss_d 1.2 " in bar and ":" in bar.split()[-1]
    d.print("finished", last=True)
    assert d.progress is None
    out = console.file.getvalue()
    assert ("skipped 2 files (faces/[old] x.jpg, faces/[/tmp]/y.jpg)\n" in out
            and out.rstrip().endswith("finished"))
    d.close()  # closing again is harmless


def test_each_plain_line_is_flushed_at_once_for_a_batch_jobs_log(monkeypatch):
    class Log:
        def __init__(self):
            self.text, self.flushed = "", ""

        def write(self, s):
            self.text += s

        def flush(self):
            self.flushed = self.text
    log = Log()
    monkeypatch.setattr(sys, "stdout", log)
    d = report.Display(10, 0, console=Console(file=io.StringIO(), force_terminal=False))
    d.print("step 1")
    assert log.flushed == "step 1\n"


def test_metrics_rows_are_on_disk_as_they_come_and_a_launch_forgets_the_steps_it_redoes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    m = report.MetricsFile(path, start=0)
    for step in (2, 4, 6):
        m.record({"step": step, "loss_d": step / 10})
        assert json.loads(path.read_text().splitlines()[-1])["step"] == step  # flushed at once
    m.close()
    m = report.MetricsFile(path, start=4)  # the checkpoint was at step 4: step 6 is done again
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [2, 4]
    m.record({"step": 6, "loss_d": 0.7})
    m.close()
    assert [json.loads(x)["loss_d"] for x in path.read_text().splitlines()] == [0.2, 0.4, 0.7]
    report.MetricsFile(path, start=7).close()  # a launch at a later step forgets nothing
    assert len(path.read_text().splitlines()) == 3
    report.MetricsFile(path, start=0).close()  # no checkpoint left: every step is done again
    assert path.read_text() == ""


def tensorboard_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    return acc


ROW = {"step": 10, "epoch": 1, "images": 80, "time": 1.7e9, "fid_n": 100, "fid_model": 3, "loss_d": 1.5,
       "loss_g": 0.75, "d_real": 0.6, "img_per_s": 300, "mfu": 0.25, "fid": 80.5, "fid_ema": True,
       "fid_network": "torchscript:abc", "warmup_graphs": 4}


def test_report_sends_every_record_to_metrics_jsonl_and_tensorboard(tmp_path):
    r = report.Report(tmp_path, main=True, total=20, start=0, tensorboard=True)
    r.record(ROW)
    r.image("samples", torch.rand(3, 10, 18), 10)
    r.histogram("D/real", torch.tensor([1, 3, 0, 4]), 10)
    r.histogram("D/thirds", torch.tensor([2, 0, 1]), 10)
    r.histogram("D/fake", torch.zeros(4), 10)  # no outputs binned yet: nothing to draw
    r.status("running", 10)
    r.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == ROW
    acc = tensorboard_events(tmp_path / "tb")
    tags = acc.Tags()
    assert sorted(tags["scalars"]) == ["D/d_real", "fid/fid", "loss/loss_d", "loss/loss_g", "speed/img_per_s",
                                       "speed/mfu", "train/warmup_graphs"]
    assert [(e.step, e.value) for e in acc.Scalars("loss/loss_g")] == [(10, 0.75)]
    assert tags["images"] == ["samples"]
    image = acc.Images("samples")[0]
    assert (image.step, image.width, image.height) == (10, 18, 10)
    assert sorted(tags["histograms"]) == ["D/real", "D/thirds"]
    thirds = list(acc.Histograms("D/thirds")[0].histogram_value.bucket_limit)
    assert thirds == pytest.approx([1 / 3, 2 / 3, 1], rel=1e-12)  # float64 edges
    h = acc.Histograms("D/real")[0]
    v = h.histogram_value
    assert h.step == 10 and (v.min, v.max, v.num) == (0.0, 1.0, 8)
    assert list(v.bucket_limit) == [0.25, 0.5, 0.75, 1.0] and list(v.bucket) == [1, 3, 0, 4]
    # bin centres 1/8, 3/8, 5/8, 7/8 weighted by the counts
    assert v.sum == pytest.approx(0.125 + 3 * 0.375 + 4 * 0.875)
    assert v.sum_squares == pytest.approx(0.125 ** 2 + 3 * 0.375 ** 2 + 4 * 0.875 ** 2)
    assert (tmp_path / "STATUS").read_text() == "running 10\n"


def test_status_says_the_word_the_step_and_anything_more(tmp_path):
    r = report.Report(tmp_path, main=True, total=20, start=0, tensorboard=False)
    r.status("finished", 20, "FID 80.5 at step 20")
    assert (tmp_path / "STATUS").read_text() == "finished 20; FID 80.5 at step 20\n"
    r.close()
    assert not (tmp_path / "tb").exists()


def test_a_launch_hides_the_tensorboard_events_after_its_start(tmp_path):
    """TensorBoard's record of a run killed past its last checkpoint: the next launch starts at the
    checkpoint's step (10) and does the steps after it again; the earlier events after 10 are hidden."""
    first = report.Report(tmp_path, main=True, total=20, start=0, tensorboard=True)
    for step in (9, 10, 11, 12):
        first.record({"step": step, "loss_d": float(step)})
    first.close()
    again = report.Report(tmp_path, main=True, total=20, start=10, tensorboard=True)
    again.record({"step": 11, "loss_d": -11.0})
    again.close()
    events = [(e.step, e.value) for e in tensorboard_events(tmp_path / "tb").Scalars("loss/loss_d")]
    assert events == [(9, 9.0), (10, 10.0), (11, -11.0)]


def test_a_report_trims_metrics_to_its_start(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (5, 10, 15)))
    report.Report(tmp_path, main=True, total=20, start=10, tensorboard=False).close()
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [5, 10]
    report.Report(tmp_path, main=False, total=20, start=0, tensorboard=False).close()  # rank 1 writes nothing
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_on_a_terminal_the_reports_bar_counts_from_the_resumed_step_to_the_total(tmp_path, monkeypatch):
    console = terminal()
    monkeypatch.setattr(report, "Console", lambda: console)
    r = report.Report(tmp_path, main=True, total=30, start=12, tensorboard=False)
    task = r.display.progress.tasks[0]
    assert (task.total, task.completed) == (30, 12)
    r.print("step 12 [x]")
    assert r.display.progress is not None
    r.print("done", last=True)
    assert r.display.progress is None and "step 12 [x]\n" in console.file.getvalue()
    assert console.file.getvalue().rstrip().endswith("done")
    r.close()


def test_the_main_reports_lines_reach_the_console(tmp_path, capsys):
    r = report.Report(tmp_path, main=True, total=20, start=0, tensorboard=False)
    r.print("step 3  loss 1.0")
    r.close()
    assert capsys.readouterr().out == "step 3  loss 1.0\n"


def test_other_ranks_write_no_file(tmp_path, capsys):
    r = report.Report(tmp_path, main=False, total=20, start=0, tensorboard=True)
    r.record(ROW)
    r.image("samples", torch.rand(3, 4, 4), 1)
    r.histogram("D/real", torch.ones(4), 1)
    r.status("running", 1)
    r.print("hello", last=True)
    r.close()
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().out == ""


def test_tensorboard_asked_for_without_the_package_is_refused_before_anything_runs(monkeypatch):
    report.check_tensorboard(False)
    report.check_tensorboard(True)  # installed here (the dev extra)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not
    report.check_tensorboard(False)
    with pytest.raises(UsageError) as e:
        report.check_tensorboard(True)
    assert str(e.value) == f"log.tensorboard=true needs the tensorboard package: {report.TB_INSTALL}"


def test_a_line_cut_short_by_a_kill_is_dropped_not_fatal(tmp_path):
    """kill -9 in the middle of a row's write: the next launch (fresh or resumed) drops the torn line."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 2, "loss_d": 0.5}) + "\n" + '{"step": 4, "los')
    assert plots.read_metrics(path) == [{"step": 2, "loss_d": 0.5}]
    m = report.MetricsFile(path, start=4)
    m.record({"step": 6, "loss_d": 0.7})
    m.close()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [2, 6]
