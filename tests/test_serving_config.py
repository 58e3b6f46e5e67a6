"""TF Serving's four config files in serving/, parsed as the server parses them.

models.config and models.labels.config are text-format ModelServerConfig (the
tensorflow-serving-api wheel's model_server_config_pb2); batching.config is a
BatchingParameters and monitoring.config a MonitoringConfig, which the wheel does not ship:
serving_config_protos.py declares every field of both from TF Serving's .proto files (its
docstring names the commits). text_format.Parse is as strict as the server: an unknown or
misspelled field, or a value of the wrong type, fails the parse; the last test proves it
for each file, so the checks cannot pass by accepting anything.
"""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

import serving_config_protos as protos
from digits.contract import MODEL_NAME
from serving.client import DEFAULT_BATCH_SIZE
from support import ROOT

# Each config file and the message TF Serving reads it as.
MESSAGES = {
    "models.config": model_server_config_pb2.ModelServerConfig,
    "models.labels.config": model_server_config_pb2.ModelServerConfig,
    "batching.config": protos.message_class("BatchingParameters"),
    "monitoring.config": protos.message_class("MonitoringConfig"),
}


def _text(name: str) -> str:
    return (ROOT / "serving" / name).read_text(encoding="utf-8")


def parse(name: str, text: str | None = None):
    """serving/`name` (or `text` in its place) as the message the server reads it as."""
    return text_format.Parse(_text(name) if text is None else text, MESSAGES[name]())


# --- The rebuilt messages: every upstream field, built as declared.

SCALAR_NAMES = {number: name for name, number in protos.SCALARS.items()}


def _declaration(field) -> str:
    """A built field written back as its .proto line."""
    if field.message_type is not None:
        kind = field.message_type.full_name.removeprefix(protos.PACKAGE + ".")
    else:
        kind = SCALAR_NAMES[field.type]
    return f"{'repeated ' if field.is_repeated else ''}{kind} {field.name} = {field.number};"


@pytest.mark.parametrize("name", sorted(protos.MESSAGES))
def test_each_message_has_every_field_of_the_proto_text(name: str) -> None:
    fields = protos.message_class(name).DESCRIPTOR.fields
    assert len(fields) == len(protos.declarations(name)) == protos.FIELD_COUNTS[name]
    # Upstream numbers these messages 1..N, with no gaps or reserved numbers.
    assert sorted(f.number for f in fields) == list(range(1, len(fields) + 1))


@pytest.mark.parametrize("name", sorted(protos.MESSAGES))
def test_the_descriptors_say_what_the_declarations_say(name: str) -> None:
    fields = protos.message_class(name).DESCRIPTOR.fields
    assert [_declaration(f) for f in fields] == protos.declarations(name)


def test_the_splitting_fields_are_wrappers_at_8_and_9() -> None:
    """The two fields the old hand-built descriptor lacked (in the .proto since 2020)."""
    fields = protos.message_class("BatchingParameters").DESCRIPTOR.fields_by_name
    assert [
        (fields[n].number, fields[n].message_type.full_name)
        for n in ("enable_large_batch_splitting", "max_execution_batch_size")
    ] == [(8, "google.protobuf.BoolValue"), (9, "google.protobuf.Int64Value")]


# --- The files: parsed strictly, and holding what the README says.


@pytest.mark.parametrize("name", ["models.config", "models.labels.config"])
def test_model_configs_serve_the_model_from_its_folder(name: str) -> None:
    (config,) = parse(name).model_config_list.config
    assert (config.name, config.base_path, config.model_platform) == (
        MODEL_NAME,
        f"/models/{MODEL_NAME}",
        "tensorflow",
    )


def test_models_config_keeps_the_two_newest_versions() -> None:
    (config,) = parse("models.config").model_config_list.config
    assert config.model_version_policy.latest.num_versions == 2


def test_labels_config_pins_versions_and_names_stable_and_canary() -> None:
    (config,) = parse("models.labels.config").model_config_list.config
    assert list(config.model_version_policy.specific.versions) == [1, 2]
    assert dict(config.version_labels) == {"stable": 1, "canary": 2}


def test_batching_splits_large_requests_into_model_sized_batches() -> None:
    params = parse("batching.config")
    assert params.HasField("enable_large_batch_splitting")
    assert params.enable_large_batch_splitting.value
    execution, request = params.max_execution_batch_size.value, params.max_batch_size.value
    assert (execution, request) == (128, 1024)  # the model's batch; the largest request
    assert DEFAULT_BATCH_SIZE <= execution  # the client's requests each fit one model run
    # An idle queue has room for the largest request (else it would get 503, not 200).
    assert params.max_enqueued_batches.value * execution >= request
    assert list(params.allowed_batch_sizes) == []  # no padding to fixed sizes
    assert params.num_batch_threads.value >= 1 and params.batch_timeout_micros.value > 0


def test_monitoring_serves_prometheus_metrics_on_the_rest_port() -> None:
    prometheus = parse("monitoring.config").prometheus_config
    assert prometheus.enable and prometheus.path == "/monitoring/prometheus/metrics"


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        # A misspelled field name.
        ("batching.config", "max_execution_batch_size {", "max_execution_batch_sise {"),
        ("monitoring.config", "enable: true", "enabled: true"),
        ("models.config", "model_platform:", "model_platfrom:"),
        ("models.labels.config", 'version_labels { key: "canary"', 'version_label { key: "canary"'),
        # A value of the wrong type.
        ("batching.config", "{ value: true }", "{ value: 128 }"),  # int for a BoolValue
        ("batching.config", "max_batch_size { value: 1024 }", "max_batch_size: 1024"),
        ("batching.config", "{ value: 2000 }", '{ value: "2ms" }'),  # string for Int64Value
        ("monitoring.config", 'path: "/monitoring/prometheus/metrics"', "path: 8501"),
        ("models.config", "num_versions: 2", "num_versions: two"),
        ("models.labels.config", 'key: "stable" value: 1', 'key: "stable" value: "1"'),
    ],
)
def test_a_misspelled_field_or_a_wrong_type_fails_the_parse(name, old, new) -> None:
    text = _text(name)
    assert text.count(old) == 1, f"{old!r} is not (once) in {name}: update this case"
    parse(name)  # the file itself parses...
    with pytest.raises(text_format.ParseError):  # ...and the broken copy does not
        parse(name, text.replace(old, new))


# --- The stand-in image's tensorflow_model_server reads them as the server does.


def _wrapper():
    """docker/standin/tensorflow_model_server.py, loaded as a module."""
    import importlib.util

    path = ROOT / "docker" / "standin" / "tensorflow_model_server.py"
    spec = importlib.util.spec_from_file_location("standin_model_server", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_standin_server_reads_batching_config_as_the_server_does() -> None:
    """Every field the stand-in's batching uses, the value the real parse gives."""
    wrapper = _wrapper()
    flags = wrapper.parse_flags(
        ["--enable_batching", f"--batching_parameters_file={ROOT / 'serving' / 'batching.config'}"]
    )
    ours, real = wrapper.batching(flags), parse("batching.config")
    assert (
        ours.max_batch_size,
        ours.batch_timeout_micros,
        ours.max_enqueued_batches,
        ours.num_batch_threads,
        ours.enable_large_batch_splitting,
        ours.max_execution_batch_size,
    ) == (
        real.max_batch_size.value,
        real.batch_timeout_micros.value,
        real.max_enqueued_batches.value,
        real.num_batch_threads.value,
        real.enable_large_batch_splitting.value,
        real.max_execution_batch_size.value,
    )
    # Without a file: SharedBatchScheduler's defaults (shared_batch_scheduler.h).
    default = wrapper.batching(wrapper.parse_flags(["--enable_batching"]))
    assert (default.max_batch_size, default.max_enqueued_batches) == (1000, 10)
    assert wrapper.batching(wrapper.parse_flags([])) is None


def test_the_standin_server_takes_the_model_config_to_re_read() -> None:
    wrapper = _wrapper()
    path = ROOT / "serving" / "models.labels.config"
    spec = wrapper.model_from_flags(wrapper.parse_flags([f"--model_config_file={path}"]))
    assert spec["config_file"] == path and spec["versions"] == [1, 2]
    assert spec["name"] == MODEL_NAME and spec["base_path"] == f"/models/{MODEL_NAME}"
    with pytest.raises(wrapper.FlagError, match="unknown command line flag"):
        wrapper.parse_flags(["--model_config_file_poll_wait_secs=30"])
