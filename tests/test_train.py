"""Train -> export -> reload -> predict, on small learnable data, with real TensorFlow."""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from digits import contract
from support import (
    ROOT,
    TEST_SIZE,
    TRAIN_SIZE,
    make_digits,
    memory_splits,
    run_cli,
    small_config,
)
from trainer import cli, config, data, outputs, train
from trainer.ema import WeightAverage
from trainer.errors import UserError
from trainer.model import build_model
from trainer.strategy import Cluster

# Under pytest-xdist (make test), this module's tests share module-scoped fixtures:
# one worker runs them all, so each fixture is built once.
pytestmark = pytest.mark.xdist_group("test_train")


@pytest.fixture(scope="module")
def events() -> io.StringIO:
    """The progress events of the `trained` run, as a tool following it reads them."""
    return io.StringIO()


@pytest.fixture(scope="module")
def epochs_fed() -> list[tuple[int, bool]]:
    """(epoch, distorted) of each epoch's training batches in the `trained` run."""
    return []


@pytest.fixture(scope="module")
def trained(
    data_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    events: io.StringIO,
    epochs_fed: list[tuple[int, bool]],
):
    """Trained in-process with the default strategy injected, on in-memory splits of the
    same digits that `data_dir` holds (so `evaluate` on data_dir scores the same test set).
    """
    tmp = tmp_path_factory.mktemp("run")
    cfg = small_config(data_dir, tmp)
    train_batches = data.train_batches

    def spy(*args, **kwargs):
        if "skip_batches" in kwargs:  # an epoch's batches, not the TensorBoard sample
            epochs_fed.append((kwargs["epoch"], kwargs.get("distort", True)))
        return train_batches(*args, **kwargs)

    with outputs.events_to(events), pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "train_batches", spy)
        summary = train.run(cfg, strategy=tf.distribute.get_strategy(), splits=memory_splits())
    return cfg, summary


def test_the_last_epoch_trains_on_undistorted_images(trained, epochs_fed) -> None:
    cfg, _ = trained
    assert cfg.augment and cfg.clean_epochs == 1 and cfg.epochs == 2
    assert epochs_fed == [(0, True), (1, False)]


def test_run_learns_and_exports_version_1(trained) -> None:
    cfg, summary = trained
    version_dir = Path(cfg.export_dir) / "mnist" / "1"
    assert Path(summary["export_path"]) == version_dir
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables" / "variables.index").is_file()
    assert sorted(p.name for p in version_dir.parent.iterdir()) == ["1"]  # no staging left
    assert summary["test_accuracy"] > 0.9  # chance is 0.1
    assert [r["epoch"] for r in summary["history"]] == [1, 2]
    on_disk = json.loads((version_dir / "training_summary.json").read_text())
    assert on_disk["test_accuracy"] == summary["test_accuracy"]
    assert on_disk["config"]["batch_size"] == 32
    assert on_disk["versions"]["tensorflow"] == tf.__version__
    assert on_disk["images_per_second"] > 0 and on_disk["wall_seconds"] > 0
    assert on_disk["parameters"] == 65_194


def test_test_split_scores_are_named_test_from_the_loop_to_the_summary(trained) -> None:
    _, summary = trained
    on_disk = json.loads((Path(summary["export_path"]) / outputs.SUMMARY_FILE).read_text())
    for records in (on_disk["history"], on_disk["evaluations"]):
        assert all({"test_loss", "test_accuracy"} <= set(r) for r in records)
        assert not any(k.startswith("val_") for r in records for k in r)
    assert on_disk["history"][-1]["test_accuracy"] == on_disk["test_accuracy"]
    assert on_disk["evaluations"][-1]["test_accuracy"] == on_disk["test_accuracy"]


def test_progress_events_tell_a_tool_how_the_run_goes(trained, events) -> None:
    """What tools follow instead of the log (make soak): the run's size first, a step
    after every compiled call up to the last, the export's moments in order."""
    cfg, summary = trained
    found = [outputs.parse_event(line) for line in events.getvalue().splitlines()]
    assert found and None not in found
    per_epoch = TRAIN_SIZE // cfg.batch_size
    assert found[0] == {
        "event": "run",
        "steps_per_epoch": per_epoch,
        "total_steps": cfg.epochs * per_epoch,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "train_images": TRAIN_SIZE,
    }
    steps = [e["step"] for e in found if e["event"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == cfg.epochs * per_epoch
    phases = [e["phase"] for e in found if e["event"] == "export"]
    assert phases == list(outputs.EXPORT_PHASES)
    assert outputs.parse_event("12:00:00 INFO epoch 1/2  step 3/12") is None
    # The first call is one step, so its event says when training began (make bench).
    assert steps[0] == 1 and steps[1] > 2


@pytest.mark.parametrize("replicas", [1, 2])
def test_evaluation_traces_once_and_scores_every_test_image(replicas: int) -> None:
    """100 test images in batches of 32: the last batch is padded (weight 0), so the eval
    step is traced once, however many evaluations; the scores and the examples kept for
    the pictures are those of exactly the 100 images, in order."""
    from trainer.loop import eval_batches, evaluate_batches, make_eval_step

    strategy = (
        tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        if replicas == 2
        else tf.distribute.get_strategy()
    )
    images, labels = make_digits(100, seed=2)
    test = tf.data.Dataset.from_tensor_slices((images[..., None], labels.astype(np.int64)))
    with strategy.scope():
        model = build_model(seed=1)
    eval_step = make_eval_step(model, strategy)
    batches = strategy.experimental_distribute_dataset(eval_batches(test, 100, 32))
    for _ in range(2):
        loss, accuracy, (got_labels, probabilities, got_images) = evaluate_batches(
            eval_step, batches
        )
    assert eval_step.experimental_get_tracing_count() == 1
    assert got_labels.tolist() == labels.tolist()
    assert np.array_equal(got_images[..., 0], images)
    expected = model.predict(images[..., None], verbose=0)
    assert np.array_equal(probabilities.argmax(-1), expected.argmax(-1))  # classes exactly
    hits = int((expected.argmax(-1) == labels).sum())
    assert round(accuracy * 100) == hits  # out of exactly 100 images
    cross_entropy = -np.log(expected[np.arange(100), labels]).mean()
    assert loss == pytest.approx(cross_entropy, rel=1e-4)


def test_export_matches_the_checkpointed_keras_model(trained) -> None:
    """The export holds the checkpoint's weight average (what evaluation scored), not
    the last step's weights."""
    cfg, summary = trained
    model = build_model()
    average = WeightAverage(model.trainable_variables, cfg.ema)
    tf.train.Checkpoint(model=model, average=average).restore(
        tf.train.latest_checkpoint(str(cfg.checkpoint_dir))
    ).expect_partial()
    images, labels = make_digits(TEST_SIZE, seed=2)
    images = images[..., None]
    served = tf.saved_model.load(summary["export_path"]).signatures["serving_default"](
        images=tf.constant(images)
    )
    last_step = model.predict(images.astype("float32"), verbose=0)
    with average.applied():
        expected = model.predict(images.astype("float32"), verbose=0)
    assert np.abs(last_step - expected).max() > 1e-4  # the average is not the last step
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(served["classes"].numpy(), expected.argmax(-1))
    assert served["classes"].dtype == tf.int64
    accuracy = float(np.mean(served["classes"].numpy() == labels))
    assert accuracy == pytest.approx(summary["test_accuracy"], abs=1e-6)


def test_signatures_follow_the_serving_contract(trained) -> None:
    """Every signature digits/contract.py names, with its input and outputs exactly."""
    _, summary = trained
    signatures = tf.saved_model.load(summary["export_path"]).signatures
    for sig in contract.SIGNATURES:
        (spec,) = signatures[sig.name].structured_input_signature[1].values()
        assert (spec.name, spec.dtype.name, tuple(spec.shape.as_list())) == (
            sig.input,
            sig.dtype,
            sig.shape,
        )
        outputs = signatures[sig.name].structured_outputs
        assert {
            name: (t.dtype.name, tuple(t.shape.as_list())) for name, t in outputs.items()
        } == sig.outputs


def test_a_non_chief_worker_keeps_nothing(tmp_path: Path) -> None:
    """The cluster seam: as worker 1 of 2 (not the chief) the run trains and saves to a
    scratch folder, but writes no run.json, no TensorBoard logs and no export."""
    cfg = small_config(tmp_path / "no-data", tmp_path, epochs=1)
    worker = Cluster(num_workers=2, task_type="worker", task_index=1)
    summary = train.run(
        cfg, cluster=worker, splits=memory_splits(), strategy=tf.distribute.get_strategy()
    )
    assert summary["test_accuracy"] > 0.5 and "export_path" not in summary
    assert not (tmp_path / "export" / contract.MODEL_NAME).exists() or not contract.versions(
        tmp_path / "export" / contract.MODEL_NAME
    )
    assert (
        not (tmp_path / "job").exists()
        or sorted(p.name for p in (tmp_path / "job").iterdir()) == []
    )


def test_saved_model_cli_shows_the_signature(trained) -> None:
    _, summary = trained
    cli = ROOT / ".venv" / "bin" / "saved_model_cli"
    exe = str(cli) if cli.exists() else "saved_model_cli"
    out = subprocess.run(
        [
            exe,
            "show",
            "--dir",
            summary["export_path"],
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "inputs['images'] tensor_info:" in out
    assert "dtype: DT_UINT8" in out and "shape: (-1, 28, 28, 1)" in out
    assert "outputs['probabilities'] tensor_info:" in out and "shape: (-1, 10)" in out
    assert "outputs['classes'] tensor_info:" in out and "dtype: DT_INT64" in out


def test_graph_rejects_wrong_shapes_fed_by_name(trained) -> None:
    """TF Serving feeds tensors by name without checking shapes (tensorflow/serving#1527);
    feed the graph the same way, below the Python-side check, and expect a refusal."""
    _, summary = trained
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], summary["export_path"])
        sig = meta.signature_def["serving_default"]
        feed = sess.graph.get_tensor_by_name(sig.inputs["images"].name)
        fetch = sess.graph.get_tensor_by_name(sig.outputs["probabilities"].name)
        ok = sess._call_tf_sessionrun(  # noqa: SLF001 - the C API call TF Serving makes
            None,
            {feed._as_tf_output(): np.zeros((2, 28, 28, 1), np.uint8)},
            [fetch._as_tf_output()],
            [],
            None,
        )
        assert ok[0].shape == (2, 10)
        with pytest.raises(tf.errors.InvalidArgumentError, match="28"):
            sess._call_tf_sessionrun(  # noqa: SLF001
                None,
                {feed._as_tf_output(): np.zeros((2, 32, 32, 1), np.uint8)},
                [fetch._as_tf_output()],
                [],
                None,
            )


def test_tensorboard_scalars(trained) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, _ = trained
    tags = {}
    for run in ("train", "validation"):
        acc = EventAccumulator(str(cfg.log_dir / run), size_guidance={"tensors": 0})
        acc.Reload()
        tags[run] = set(acc.Tags()["tensors"])
    assert {"epoch_loss", "epoch_accuracy", "learning_rate", "images_per_second"} <= tags["train"]
    assert {"epoch_loss", "epoch_accuracy"} <= tags["validation"]


def _events(path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def _png_size(acc, tag: str) -> tuple[int, int]:
    """(width, height) of the last image under `tag`, decoded from its PNG."""
    from PIL import Image

    proto = acc.Tensors(tag)[-1].tensor_proto
    width, height, png = proto.string_val[:3]
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (int(width), int(height))
        return image.size


def test_tensorboard_images_once_per_run_and_each_epoch(trained) -> None:
    cfg, summary = trained
    train_run, validation = _events(cfg.log_dir / "train"), _events(cfg.log_dir / "validation")
    assert len(train_run.Tensors("training_images")) == 1  # once per run
    assert _png_size(train_run, "training_images")[0] >= 600  # 8 digits a row, legible
    assert len(validation.Tensors("confusion_matrix")) == 2  # each of the two epochs
    width, height = _png_size(validation, "confusion_matrix")
    assert 450 <= width <= 1200 and 400 <= height <= 1200
    # A grid of mistakes for every epoch that made any.
    wrong_epochs = sum(r["test_accuracy"] < 1 for r in summary["history"])
    worst = validation.Tags()["tensors"].count("worst_misclassified")
    assert (len(validation.Tensors("worst_misclassified")) if worst else 0) == wrong_epochs


def test_tensorboard_histograms_of_weights_and_gradients(trained) -> None:
    cfg, _ = trained
    tags = set(_events(cfg.log_dir / "train").Tags()["tensors"])
    weights = {t for t in tags if t.startswith("weights/")}
    gradients = {t for t in tags if t.startswith("gradients/")}
    assert len(weights) == len(gradients) == 6  # 3 kernels + 3 biases
    assert {t.split("/", 1)[1] for t in weights} == {t.split("/", 1)[1] for t in gradients}


def test_hparams_session_holds_the_run_configuration(trained) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg, _ = trained
    root = _events(cfg.log_dir)
    content = root.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    session = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    values = {
        k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
        for k, v in session.hparams.items()
    }
    assert values["batch_size"] == 32 and values["epochs"] == 2 and values["replicas"] == 1
    assert values["learning_rate"] == pytest.approx(3e-3)
    experiment = root.SummaryMetadata("_hparams_/experiment").plugin_data.content
    metrics = plugin_data_pb2.HParamsPluginData.FromString(experiment).experiment.metric_infos
    assert ("validation", "epoch_accuracy") in {(m.name.group, m.name.tag) for m in metrics}


def test_the_export_carries_its_evaluation_report(trained) -> None:
    from PIL import Image

    from trainer.report.evaluate import percent

    _, summary = trained
    report_dir = Path(summary["export_path"]) / "eval"
    assert Path(summary["report"]) == report_dir
    scores = json.loads((report_dir / "metrics.json").read_text())
    assert scores["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert np.sum(scores["confusion_matrix"]) == TEST_SIZE
    report = (report_dir / "report.md").read_text()
    ece = scores["calibration"]["expected_calibration_error"]
    assert f"| {percent(scores['accuracy'])} | {scores['loss']:.4f} | {percent(ece)} |" in report
    for k, m in scores["per_class"].items():
        row = f"| {k} | {percent(m['precision'])} | {percent(m['recall'])} | {percent(m['f1'])} |"
        assert row in report
    pictures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert {"confusion_matrix.png", "reliability.png"} <= set(pictures)
    for name in pictures:
        with Image.open(report_dir / name) as image:
            assert image.format == "PNG" and min(image.size) >= 300


def test_rerun_of_a_finished_run_says_so_and_exports_nothing(trained, caplog) -> None:
    cfg, summary = trained
    caplog.set_level("INFO")
    again = train.run(cfg, splits=memory_splits())
    assert again["already_finished"] is True
    assert "already finished (2/2 epochs" in caplog.text
    assert sorted(p.name for p in (Path(cfg.export_dir) / "mnist").iterdir()) == ["1"]


def test_evaluate_scores_the_export_through_its_serving_signature(trained, capsys) -> None:
    cfg, summary = trained
    result = run_cli("evaluate", "--export-dir", cfg.export_dir, "--data-dir", cfg.data_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    scored = json.loads(result.stdout)
    assert scored["version_dir"].endswith("mnist/1") and scored["examples"] == TEST_SIZE
    assert scored["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    # The same cli.main in-process: a second process start would prove nothing more.
    assert cli.main(["evaluate", "--export-dir", cfg.export_dir, "--version", "9"]) == 2
    missing = capsys.readouterr().err.strip()
    assert missing.endswith("version 9 is not in " + cfg.export_dir + "/mnist; available: 1")


def test_resuming_with_another_batch_size_is_refused(trained) -> None:
    cfg, _ = trained
    other = config.TrainConfig(**{**cfg.to_dict(), "batch_size": 16, "epochs": 3})
    with pytest.raises(
        UserError, match=r"other settings than this command's: --batch-size 32 \(now 16\)\."
    ):
        train.run(other, splits=memory_splits())
    assert json.loads((Path(cfg.job_dir) / "run.json").read_text())["batch_size"] == 32


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_with_xla_still_exports_float32(tmp_path: Path, policy: str) -> None:
    """The GPU settings, run on the CPU: low-precision compute, an XLA-compiled step,
    and (float16) loss scaling; the export is float32 in and out all the same."""
    cfg = small_config(
        tmp_path / "no-data",
        tmp_path,
        epochs=1,
        mixed_precision=policy,
        jit_compile="on",
        min_accuracy=0,  # about precision, not accuracy: publish whatever one epoch reaches
    )
    summary = train.run(cfg, strategy=tf.distribute.get_strategy(), splits=memory_splits())
    assert summary["device_settings"]["dtype_policy"] == policy
    assert summary["device_settings"]["jit_compile"] is True
    assert summary["test_accuracy"] > 0.5
    sig = tf.saved_model.load(summary["export_path"]).signatures[contract.PIXELS.name]
    assert sig.structured_outputs[contract.PROBABILITIES].dtype == tf.float32
    loaded = tf.saved_model.load(summary["export_path"])
    variables = {v.dtype for v in loaded.variables}
    assert variables == {tf.float32}  # no bfloat16/float16 weights in what is served
