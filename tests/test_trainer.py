"""The generic Trainer with a user's own model, loss and data (issue 18, item 5)."""
import json

import numpy as np
import pytest

import minidl
from minidl import backend, nn, optim
from minidl.data import DataLoader, TensorDataset
from minidl.nn import functional as F
from minidl.serialization import load
from minidl.train import Trainer, TrainingDiverged


def _regression_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 0.25).astype(np.float32)
    return x, y


def _trainer(tmp_path, epochs=3, lr=0.05, log=None, schedule=None, **kw):
    minidl.manual_seed(0)
    x, y = _regression_data()
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)

    def evaluate(m):
        return {"test_loss": float(F.mse_loss(m(minidl.tensor(x)), minidl.tensor(y)).item())}

    kw.setdefault("evaluate", evaluate)
    return Trainer(model, opt, F.mse_loss, loader, epochs=epochs, out=str(tmp_path / "run"),
                   scheduler=schedule(opt) if schedule else None, progress=False,
                   log=log or (lambda m: None), **kw)


def test_a_users_model_trains_and_writes_the_run_files(tmp_path):
    logs = []

    def loss_with_parts(out, y):
        mse = F.mse_loss(out, y)
        l1 = (out - y).abs().mean()
        return mse, {"l1": l1}

    minidl.manual_seed(0)
    x, y = _regression_data()
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    trainer = Trainer(model, opt, loss_with_parts, loader, epochs=4, out=str(tmp_path / "run"),
                      progress=False, log=logs.append,
                      metrics={"bias": lambda out, y: (out - y).mean()},
                      settings={"lr": 0.05})
    history = trainer.fit()
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert set(history[0]) >= {"train_loss", "train_l1", "train_bias", "lr", "seconds"}
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 4
    assert logs[0].startswith("Epoch: 1 \tTraining Loss: ")
    run = tmp_path / "run"
    for name in ("checkpoint.safetensors", "model.safetensors", "metrics.json", "metrics.csv"):
        assert (run / name).is_file(), name
    assert json.loads((run / "metrics.json").read_text()) == history
    assert load(str(run / "checkpoint.safetensors"))["config"] == {"lr": 0.05}


def test_running_values_are_read_once_per_logging_interval(tmp_path, monkeypatch):
    """The loss stays on the device: 6 steps per epoch, read every 4 -> 2 reads per epoch."""
    reads = []
    as_numpy = backend.as_numpy

    def counting(array):
        reads.append(getattr(array, "shape", None))
        return as_numpy(array)
    monkeypatch.setattr(backend, "as_numpy", counting)
    trainer = _trainer(tmp_path, epochs=2, log_every=4, evaluate=None)
    trainer.save_checkpoint = lambda path=None: path     # count the training loop's reads only
    trainer.fit()
    assert reads == [(4, 1), (2, 1)] * 2


def test_nan_names_the_exact_step_inside_an_interval(tmp_path):
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        loss = F.mse_loss(out, y)
        return loss * float("nan") if len(calls) == 9 else loss   # epoch 2, step 3
    minidl.manual_seed(0)
    x, y = _regression_data()
    model = nn.Linear(3, 1)
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.01), loss_fn,
                      DataLoader(TensorDataset(x, y), batch_size=16),
                      epochs=3, out=str(tmp_path / "run"), progress=False, log_every=20,
                      log=lambda m: None)
    with pytest.raises(TrainingDiverged, match=r"the loss became nan at epoch 2, step 3 "
                                               r"\(global step 9\); last good checkpoint: .*"
                                               r"checkpoint.safetensors"):
        trainer.fit()
    assert trainer.epoch == 1


def test_resume_continues_exactly_with_an_epoch_scheduler(tmp_path):
    def make(out, **kw):
        return _trainer(out, epochs=3, scheduler_step="epoch", **kw,
                        schedule=lambda opt: optim.lr_scheduler.StepLR(opt, 1, gamma=0.5))
    straight = make(tmp_path / "a")
    straight.fit()

    def stop_after_one(message):
        if message.startswith("Epoch: 1 "):
            raise KeyboardInterrupt
    broken = make(tmp_path / "b", log=stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        broken.fit()
    assert (tmp_path / "b" / "run" / "interrupted.safetensors").is_file()
    resumed = make(tmp_path / "b", resume=True)
    assert resumed.epoch == 1
    resumed.fit()
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in straight.history] \
        == [0.025, 0.0125, 0.00625]
    assert [h["train_loss"] for h in resumed.history] == \
        [h["train_loss"] for h in straight.history]
    for (k, a), b in zip(straight.model.state_dict().items(),
                         resumed.model.state_dict().values()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=k)


def test_eval_every_and_the_last_epoch(tmp_path):
    history = _trainer(tmp_path, epochs=5, eval_every=2).fit()
    assert ["test_loss" in h for h in history] == [False, True, False, True, True]
    csv = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert "test_loss" in csv[0].split(",") and len(csv) == 6
    assert all(len(line.split(",")) == len(csv[0].split(",")) for line in csv)


def test_distributed_hooks(tmp_path):
    """A rank other than 0 writes and prints nothing; reduce() sees the epoch's
    totals; the loader's set_epoch is called before each epoch."""
    epochs_seen, totals_seen, logs = [], [], []

    class Rank1(Trainer):
        is_main = False

        def reduce(self, totals):
            totals_seen.append(totals.copy())
            return totals * 2          # as if a second rank had the same totals

    x, y = _regression_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    loader.set_epoch = epochs_seen.append
    model = nn.Linear(3, 1)
    out = tmp_path / "rank1"
    trainer = Rank1(model, optim.SGD(model.parameters(), lr=0.01), F.mse_loss, loader,
                    epochs=2, out=str(out), progress=False, log=logs.append)
    history = trainer.fit()
    assert epochs_seen == [0, 1] and logs == [] and not out.exists()
    assert [t[-1] for t in totals_seen] == [96, 96]
    assert history[0]["train_loss"] == round(totals_seen[0][0] / 96, 6)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        _trainer(tmp_path, epochs=0)
    with pytest.raises(ValueError, match="scheduler_step must be 'batch' or 'epoch'"):
        _trainer(tmp_path, scheduler_step="minute")
    with pytest.raises(ValueError, match="log_every must be a positive int"):
        _trainer(tmp_path, log_every=0)
