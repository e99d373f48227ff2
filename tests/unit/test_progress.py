"""Progress with totals and ETA (issue 25 item 7): the line helper, and the train bar on a real Lightning fit."""

from __future__ import annotations

import io
import logging

import pytest

from cardforge.core.progress import Progress, duration


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_progress_lines_have_total_percent_elapsed_and_eta():
    clock, out = Clock(), io.StringIO()
    p = Progress(4, "quant", "steps", every_s=0, file=out, clock=clock)
    assert p.start("2 at a time") == "[quant] 0/4 steps (0%) 0 s: 2 at a time"
    clock.t += 30
    assert p.step(note="calibration in 30.0 s") == "[quant] 1/4 steps (25%) 30 s, ETA 1m30s: calibration in 30.0 s"
    clock.t += 3570
    assert p.step() == "[quant] 2/4 steps (50%) 1h00m, ETA 1h00m"
    clock.t += 10
    p.step(2)
    assert out.getvalue().splitlines()[-1] == "[quant] 4/4 steps (100%) 1h00m"  # done: no ETA


def test_progress_is_throttled_but_always_prints_the_last():
    clock, out = Clock(), io.StringIO()
    p = Progress(100, "data", "samples", every_s=5, file=out, clock=clock)
    printed = []
    for _ in range(100):
        clock.t += 0.5
        printed.append(p.step())
    lines = [x for x in printed if x]
    assert 9 <= len(lines) <= 11  # one per 5 s of 50 s
    assert lines[-1].startswith("[data] 100/100 samples (100%)")


@pytest.mark.parametrize("s,text", [(0, "0 s"), (59.4, "59 s"), (61, "1m01s"), (3599, "59m59s"), (7260, "2h01m")])
def test_duration(s, text):
    assert duration(s) == text


def test_train_bar_counts_optimizer_steps_against_max_steps(capfd):
    import lightning.pytorch as pl
    import torch

    from cardforge.train.callbacks import StepProgressBar, progress_bar

    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 1)

        def training_step(self, batch, i):
            loss = self.lin(batch[0]).pow(2).mean()
            self.log("train/loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=2)
    bar = progress_bar("train r=16 steps=6")
    assert isinstance(bar, StepProgressBar)
    # 4 batches per epoch, 2 per optimizer step: max_steps=6 runs 3 epochs, which Lightning shows as "Epoch 2/-2"
    trainer = pl.Trainer(max_steps=6, max_epochs=-1, accumulate_grad_batches=2, callbacks=[bar], logger=False,
                         enable_checkpointing=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(M(), data)
    err = capfd.readouterr().err.replace("\r", "\n")
    frames = [ln for ln in err.splitlines() if ln.startswith("train r=16 steps=6:")]
    assert frames and "6/6" in frames[-1] and "100%" in frames[-1] and "loss=" in frames[-1]
    assert "step/s" in frames[-1] or "s/step" in frames[-1]
    assert all("/6 " in f for f in frames)  # the total is max_steps from the first frame on
    assert "Epoch" not in err and "-2" not in err
    trainer2 = pl.Trainer(max_epochs=2, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                          accelerator="cpu", callbacks=[StepProgressBar()])
    trainer2.fit(M(), data)
    assert "4/4" in capfd.readouterr().err  # epochs x steps per epoch when max_steps is unset


def test_a_repeated_lightning_notice_is_shown_once(caplog):
    from cardforge.train.callbacks import tidy_lightning_logging

    tidy_lightning_logging()
    lg = logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector")
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            lg.info("`weights_only` was not set, defaulting to `False`.")
        lg.info("Restored all states from the checkpoint")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs.count("`weights_only` was not set, defaulting to `False`.") <= 1
    assert "Restored all states from the checkpoint" in msgs


def test_eval_bar_has_the_total_rate_and_eta(tmp_path, capfd):
    """The eval harness's bar (tqdm on stderr): questions answered against the total, the rate, the time left."""
    from cardforge.agent.client import Sampling
    from cardforge.eval.benchmarks.letters import parse_letter
    from cardforge.eval.harness import HarnessOptions, Question, run_questions
    from support.fake_server import FakeServer

    qs = [Question(f"q{i}", [{"role": "user", "content": f"QID=q{i} ANSWER=B"}], "B") for i in range(4)]
    opts = HarnessOptions(Sampling(max_tokens=16), concurrency=1, timeout_s=5.0, retries=0, progress=True)
    with FakeServer() as srv:
        run_questions(qs, srv.base_url, parse_letter, opts, tmp_path / "r.jsonl", label="m", suite="s")
    frames = [ln for ln in capfd.readouterr().err.replace("\r", "\n").splitlines() if ln.startswith("m/s:")]
    assert frames and all("/4 " in f for f in frames), frames  # the total from the first frame on
    last = frames[-1]
    assert "4/4" in last and "100%" in last and "acc=1.000" in last
    assert "<" in last and ("it/s" in last or "s/it" in last)  # elapsed<remaining, rate


def test_quant_schedule_prints_a_line_per_step_against_the_total(capfd):
    """The quant stage's steps (Schedule.execute, the real run_steps): a first 0/N line, then k/N with an ETA."""
    import time

    from cardforge.quant.schedule import Step
    from cardforge.quant.stage import Schedule

    sched = Schedule.__new__(Schedule)  # the steps only: no model, no llama.cpp
    sched.slots, sched.step_threads, sched._torch_threads = 1, 1, None
    sched.steps = [Step("convert", lambda: time.sleep(0.05)), Step("imatrix", lambda: time.sleep(0.05), ("convert",)),
                   Step("quantize_Q4_K_M", lambda: time.sleep(0.05), ("imatrix",))]
    out = sched.execute()
    assert set(out.results) == {"convert", "imatrix", "quantize_Q4_K_M"}
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("[quant] ") and " steps (" in ln]
    assert lines[0] == "[quant] 0/3 steps (0%) 0 s: 1 at a time"
    assert lines[1].startswith("[quant] 1/3 steps (33%) ") and ", ETA " in lines[1] and lines[1].endswith(
        ": convert in 0.1 s")
    assert lines[-1].startswith("[quant] 3/3 steps (100%) ") and "ETA" not in lines[-1]
