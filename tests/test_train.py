"""Training: it learns, resumes exactly, caches runs, and the CLI chains synth -> train -> predict -> score."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from fer_lib.training.augment import AugmentConfig, augment, cutmix
from fer_lib.training.runs import HISTORY_COLUMNS, WEIGHTS_FILE, TrainConfig, load_trained, read_history, selected_row
from fer_lib.training.train import train

from .conftest import TINY, run_cli


def test_overfits_a_small_batch(tiny):
    """With augmentation, dropout and label smoothing off, 32 faces are memorised in fifteen steps (all 32 right
    from the eighth on)."""
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=15, max_train=32, batch_size=32, lr=2e-3, weight_decay=0, label_smoothing=0,
                      weights="random", augment=AugmentConfig(flip=False, shift=0, rotate_deg=0, scale=0, erase_p=0))
    from fer_lib.model.network import build_model
    from fer_lib.training.runs import split_for
    from fer_lib.training.train import make_optimizer, train_step

    model, _ = build_model("random", dropout=0.0)
    model.to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, cfg, steps_per_epoch=1)
    faces = split_for(tiny, cfg)[0]
    images, labels = torch.from_numpy(faces.images), torch.from_numpy(faces.labels)
    gen = torch.Generator().manual_seed(0)
    for _ in range(cfg.epochs):
        loss, _, correct = train_step(model, opt, sched, images, labels, cfg, None, gen, torch.device("cpu"))
    assert correct == 32 and loss / 32 < 0.1


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """One finished TINY run for the tests that only read it (its own parsed-array cache, as every test has)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FER_CACHE", str(tmp_path_factory.mktemp("cache")))
        return train(tiny, TrainConfig(**TINY), tmp_path_factory.mktemp("finished") / "run", progress=False)


def test_history_checkpoint_and_provenance(tiny, finished):
    run = finished
    history = read_history(run)
    assert list(history.columns) == HISTORY_COLUMNS and history["epoch"].tolist() == [1, 2]
    assert history[["train_acc", "val_acc", "train_eval_acc"]].stack().between(0, 1).all()
    assert (history["train_eval_loss"] > 0).all() and history["train_eval_loss"].notna().all()
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)  # loads without pickled code
    assert ckpt["epoch"] == 2 and set(ckpt) >= {"model", "optimizer", "scheduler", "history", "config"}
    model, cfg = load_trained(run)
    assert not model.training and cfg == TrainConfig(**TINY)
    assert (run / "run.json").exists()
    assert not list(run.glob("*.tmp")), "atomic writes leave no temporary files"
    # what the finished run knows about its data, written before run.json: the build only copies it
    calibration = json.loads((run / "calibration.json").read_text())
    assert calibration["temperature"] > 0 and calibration["tta"] == json.loads((run / "run.json").read_text())["tta"]
    outputs = json.loads((run / "test_outputs.json").read_text())
    predictions = pd.read_csv(run / "predictions.csv")
    assert list(predictions.columns) == ["id", "label"] and len(predictions) == len(tiny.test)
    assert sum(outputs["predictions"]["predicted_class_counts"].values()) == len(tiny.test)
    assert outputs["duplicates"]["rows"] == len(pd.read_csv(run / "test_duplicates.csv"))
    # train_eval_loss: plain cross-entropy in eval mode (dropout off, no augmentation) on the fixed training sample,
    # recomputed from the last epoch's weights; run.json's train_eval: the same for the shipped weights
    import torch.nn.functional as F

    from fer_lib.model.inference import predict_logits
    from fer_lib.model.network import build_model
    from fer_lib.training.runs import split_for

    last = build_model("random")[0]
    last.load_state_dict(ckpt["model"])
    faces, val = split_for(tiny, cfg)
    sample = np.random.default_rng(cfg.seed).permutation(len(faces))[:1000]
    labels = torch.from_numpy(faces.labels[sample])
    assert history["train_eval_loss"].iloc[-1] == pytest.approx(
        F.cross_entropy(predict_logits(last.eval(), faces.images[sample], cfg.input_size), labels).item(), rel=1e-4)
    kept = predict_logits(model, faces.images[sample], cfg.input_size)
    info = json.loads((run / "run.json").read_text())
    assert info["train_eval"] == pytest.approx({"acc": (kept.argmax(1) == labels).float().mean().item(),
                                                "loss": F.cross_entropy(kept, labels).item(), "faces": len(faces)})
    # the validation logits the pages read: plain, and with the views the run chose
    stored = np.load(run / "val_logits.npz")
    torch.testing.assert_close(torch.from_numpy(stored["plain"]), predict_logits(model, val.images, cfg.input_size))
    torch.testing.assert_close(torch.from_numpy(stored["views"]),
                               predict_logits(model, val.images, cfg.input_size, tta=info["tta"]))


def test_selection_keeps_the_last_average_or_the_best_flip_epoch():
    rows = [{"epoch": 1, "val_acc": 0.50, "val_acc_tta": 0.52}, {"epoch": 2, "val_acc": 0.60, "val_acc_tta": 0.58},
            {"epoch": 3, "val_acc": 0.55, "val_acc_tta": 0.61}, {"epoch": 4, "val_acc": 0.57, "val_acc_tta": 0.61}]
    assert selected_row(rows, averaged=True)["epoch"] == 4  # an average of the weights: the final epoch
    assert selected_row(rows, averaged=False)["epoch"] == 3  # else the first best with flip views, not plain


def test_an_averaged_run_ships_its_final_average(tiny, tmp_path):
    cfg = TrainConfig(**{**TINY, "ema_decay": 0.9})
    run = train(tiny, cfg, tmp_path / "run", progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["selected_epoch"] == 2 and "final epoch" in info["selection"]
    ema = torch.load(run / "checkpoint.pt", weights_only=True)["ema"]
    shipped = torch.load(run / WEIGHTS_FILE, weights_only=True)
    for name, value in shipped.items():  # the averaged model's state, prefixed "module." inside AveragedModel
        if value.is_floating_point():
            assert torch.equal(value, ema[f"module.{name}"].half()), name


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny, tmp_path):
    cfg = TrainConfig(**TINY)  # two epochs: stopped after the first, resumed for the second
    straight = train(tiny, cfg, tmp_path / "straight", progress=False)
    interrupted = train(tiny, cfg, tmp_path / "resumed", stop_after=1, progress=False)
    assert not (interrupted / "run.json").exists() and read_history(interrupted)["epoch"].tolist() == [1]
    resumed = train(tiny, cfg, tmp_path / "resumed", progress=False)
    a, b = read_history(straight), read_history(resumed)
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    wa = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(resumed / "checkpoint.pt", weights_only=True)["model"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)


def test_run_cache_trains_once(tiny_dataset, tmp_path, capsys, monkeypatch):
    import fer_lib.training.train as train_mod

    args = ("train", "--data", tiny_dataset, "--runs", tmp_path, "--profile", "smoke", "--epochs", "1",
            "--max-train", "96", "--weights", "random")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    monkeypatch.setattr(train_mod, "train_one_epoch", lambda *a, **k: pytest.fail("trained again despite the cache"))
    assert run_cli(capsys, *args)[1] == out.splitlines()[-1] + "\n", "the same run, found in the cache"
    with pytest.raises(pytest.fail.Exception):
        run_cli(capsys, *args, "--seed", "7")  # another config is another run


def test_augmentation_is_seeded_and_keeps_shape():
    x = torch.rand(8, 3, 48, 48)
    cfg = AugmentConfig()
    a = augment(x, cfg, torch.Generator().manual_seed(1))
    b = augment(x, cfg, torch.Generator().manual_seed(1))
    c = augment(x, cfg, torch.Generator().manual_seed(2))
    assert a.shape == x.shape
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    # with every transform off, augmentation is the identity
    off = AugmentConfig(flip=False, shift=0, rotate_deg=0, scale=0, erase_p=0)
    torch.testing.assert_close(augment(x, off, torch.Generator().manual_seed(1)), x, atol=1e-5, rtol=0)


def test_cutmix_pastes_one_rectangle_and_mixes_labels_by_its_area():
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 48, 48).contiguous()  # face i is all i
    labels = torch.arange(8) % 7
    mixed, pasted, lam = cutmix(x, labels, p=1.0, generator=torch.Generator().manual_seed(3))
    changed = (mixed != x).any(1)  # (B, H, W): where another face was pasted
    rows, cols = changed.any(0).any(1).sum().item(), changed.any(0).any(0).sum().item()
    assert 0 < lam < 1 and abs((1 - lam) - rows * cols / 48 ** 2) < 1e-9, "lam is the share left of the face"
    for i in range(8):  # face i's pasted pixels all come from one partner j, and the pasted label is j's
        values = mixed[i][:, changed[i]].unique()
        partner = int(values.item()) if changed[i].any() else i  # a face drawn as its own partner stays whole
        assert pasted[i] == labels[partner]
    same, same_labels, one = cutmix(x, labels, p=0.0, generator=torch.Generator().manual_seed(3))
    assert one == 1.0 and same is x and same_labels is labels
    g = torch.Generator().manual_seed(5)
    cutmix(x, labels, p=0.0, generator=g)
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(5).get_state()), "off draws nothing"


def test_the_run_key_hashes_the_settings_and_the_training_faces(tiny):
    from fer_lib.training.runs import run_key

    base = run_key(tiny, TrainConfig(**TINY))
    assert base == run_key(tiny, TrainConfig(**TINY)) and len(base) == 12
    assert run_key(tiny, TrainConfig(**{**TINY, "cutmix": 0.5})) != base
    fewer = dataclasses.replace(tiny, train=tiny.train.subset(np.arange(len(tiny.train) - 1)))
    assert run_key(fewer, TrainConfig(**TINY)) != base


def test_cli_synth_train_predict_score_chain(tmp_path, capsys):
    def cli(*args):
        code, out, err = run_cli(capsys, *args)
        assert code == 0, err
        return out

    cli("synth", "--out", str(tmp_path / "d"), "--n-train", "200", "--n-test", "40")
    cli("train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--epochs", "1",
        "--max-train", "64", "--weights", "random")
    cli("predict", "--run", str(tmp_path / "run"), "--data", str(tmp_path / "d" / "test.csv"),
        "--out", str(tmp_path / "pred.csv"))
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert list(pred.columns) == ["id", "label"] and len(pred) == 40
    assert pred["id"].tolist() == list(range(40)) and pred["label"].between(0, 6).all()
    out = cli("score", "--pred", str(tmp_path / "pred.csv"), "--labels", str(tmp_path / "d" / "test_labels.csv"))
    assert "on 40 faces" in out


def test_cli_reports_bad_data_clearly(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("label,feature\n3,1 2 3\n")
    code, _, err = run_cli(capsys, "train", "--data", tmp_path, "--epochs", "1")
    assert code == 2
    assert "line 2: expected 2304 pixel values" in err and "Traceback" not in err


def test_every_command_and_profile_is_documented(capsys):
    """The help names every profile the code defines, and the README every command the parser accepts."""
    from pathlib import Path

    from fer_lib.training.runs import PROFILES

    # in this process (`python -m fer_lib` itself runs as a user types it in test_concurrency.py)
    commands = re.search(r"\{([a-z,]+)\}", run_cli(capsys, "--help")[1]).group(1).split(",")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for command in commands:
        assert f"python -m fer_lib {command}" in readme, f"README does not show `{command}`"
    help_text = " ".join(run_cli(capsys, "train", "--help")[1].split())
    for profile in PROFILES:
        assert profile in help_text, f"train --help does not explain the {profile!r} profile"


def test_class_weights_lift_rare_classes():
    from fer_lib.training.train import class_weights

    labels = np.array([0] * 100 + [1] * 4 + list(range(2, 7)) * 10)
    w = class_weights(labels, "sqrt")
    assert w[1] > w[0] and class_weights(labels, "none") is None


def test_long_profile_runs_a_few_steps_on_the_cpu(tiny, tmp_path):
    from fer_lib.training.runs import config_for

    cfg = config_for("long", max_train=48, batch_size=16, weights="random")
    assert cfg.epochs >= 200 and cfg.input_size > 48, "the published kind of schedule"
    run = train(tiny, cfg, tmp_path / "long", device="cpu", stop_after=1, progress=False)
    history = read_history(run)
    assert history["epoch"].tolist() == [1] and history["train_ce"].notna().all()


@pytest.mark.parametrize("has_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_precision_auto_follows_the_cpu(monkeypatch, has_bf16, expected):
    import fer_lib.training.runs as runs_mod

    monkeypatch.setattr(runs_mod, "cpu_has_fast_bf16", lambda: has_bf16)
    assert runs_mod.resolve_precision("auto", torch.device("cpu")) == expected
    assert runs_mod.resolve_precision("fp32", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("flags, native", [("fpu sse2 avx2 fma", False), ("avx2 avx512f avx512_bf16", True),
                                           ("avx2 amx_bf16 amx_tile", True)])
def test_cpu_description_says_whether_bf16_is_native(monkeypatch, flags, native):
    import fer_lib.core.io as io_mod

    cpuinfo = f"processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: {flags}\n"
    monkeypatch.setattr(io_mod, "_cpuinfo", lambda: cpuinfo)
    assert io_mod.cpu_has_fast_bf16() is native
    assert io_mod.cpu_model() == f"Test CPU 9000 ({'native bf16' if native else 'no native bf16'})"


def test_bf16_run_records_its_precision_and_ships_float16_weights(tiny, tmp_path):
    import json

    run = train(tiny, TrainConfig(**{**TINY, "epochs": 1, "precision": "bf16"}), tmp_path / "run", progress=False)
    provenance = json.loads((run / "run.json").read_text())
    from fer_lib.core.io import cpu_model

    assert provenance["precision"] == "bf16" and provenance["cpu"] == cpu_model()
    shipped = torch.load(run / "weights.pt", weights_only=True)
    best = torch.load(run / "best.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in shipped.values() if v.is_floating_point())
    model, _ = load_trained(run)
    torch.testing.assert_close(model.conv1.weight, best["conv1.weight"].half().float(), rtol=0, atol=0)
    history = read_history(run)
    assert {"train_ce", "val_acc_tta"} <= set(history.columns)


def test_outputs_for_other_faces_are_computed_once_outside_the_run(tiny, finished, tmp_path, monkeypatch):
    """Faces a finished run did not finish on (a copy a shipped model serves, another test set) get their
    validation logits and predictions once, in another folder; the run's own folder is left as it was."""
    import fer_lib.training.finish as finish_mod
    from fer_lib.data.layouts import FaceSet
    from fer_lib.training.finish import ensure_outputs, read_test_outputs, read_val_logits
    from fer_lib.training.runs import split_for

    cfg, run = TrainConfig(**TINY), finished
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    val = split_for(tiny, cfg)[1]
    ensure_outputs(run, tmp_path / "elsewhere", tiny.train, val, tiny.test, device="cpu")
    assert not (tmp_path / "elsewhere").exists(), "the run's own outputs serve its own faces"
    val_copy = val.subset(np.arange(len(val))[::-1])
    test_copy = FaceSet(tiny.test.images[:10], None, tiny.test.ids[:10])
    ensure_outputs(run, tmp_path / "elsewhere", tiny.train, val_copy, test_copy, device="cpu")
    plain, _ = read_val_logits(run, val)
    torch.testing.assert_close(read_val_logits(tmp_path / "elsewhere", val_copy)[0], plain.flip(0))
    assert read_test_outputs(tmp_path / "elsewhere", test_copy)["predictions"]["rows"] == 10
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    monkeypatch.setattr(finish_mod, "write_test_outputs", lambda *a, **k: pytest.fail("computed twice"))
    monkeypatch.setattr(finish_mod, "write_val_logits", lambda *a, **k: pytest.fail("computed twice"))
    ensure_outputs(run, tmp_path / "elsewhere", tiny.train, val_copy, test_copy, device="cpu")
