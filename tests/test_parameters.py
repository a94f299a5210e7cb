"""Parameter validation: one clear ``ParameterError`` naming the parameter and its bad value."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog
from pydantic import BaseModel

from spire_pipeline.hooks import PARAMETER_MODELS, ParameterValidationHook, validate_all
from spire_pipeline.spire.config import LocalTrainConfig, PartitionConfig, PretrainingConfig
from spire_pipeline.spire.validation import ParameterError, validate_params

REPO = Path(__file__).resolve().parents[1]
SECTION = "data_partitioning"
#: conf/quick's data_partitioning section
QUICK = dict(
    seed=0,
    scheme="shards",
    alpha=0.3,
    classes_per_client=2,
    num_seen_clients=4,
    num_tuning_clients=2,
    num_unseen_clients=3,
    seen_client_size=300,
    unseen_train_size=64,
    test_fraction=0.2,
    min_test_size=48,
    validation_fraction=0.1,
)

BAD_VALUES = [
    ("alpha", 0),
    ("alpha", -1),
    ("alpha", -0.5),
    ("alpha", "lots"),
    ("num_seen_clients", 0),
    ("num_seen_clients", -3),
    ("num_unseen_clients", -1),
    ("num_tuning_clients", -1),
    ("validation_fraction", 1.0),
    ("validation_fraction", -0.1),
    ("classes_per_client", 0),
    ("seen_client_size", 0),
    ("seen_client_size", -300),
    ("unseen_train_size", 0),
    ("unseen_train_size", -64),
    ("min_test_size", 0),
    ("test_fraction", 0),
    ("test_fraction", 1),
    ("test_fraction", 1.5),
    ("test_fraction", -0.1),
    ("scheme", "random"),
    ("seed", "zero"),
]


def _problems(message: str) -> list[str]:
    return re.findall(r"parameter [\w.]+ = ", message)


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=[f"{k}={v}" for k, v in BAD_VALUES])
def test_bad_value_gives_one_error_naming_parameter_and_value(key, value) -> None:
    with pytest.raises(ParameterError) as err:
        validate_params(PartitionConfig, {**QUICK, key: value}, SECTION)
    message = str(err.value)
    assert f"{SECTION}.{key} = {value!r}" in message
    assert len(_problems(message)) == 1, message


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(ParameterError) as err:
        validate_params(PartitionConfig, {**QUICK, "alpah": 0.1}, SECTION)
    message = str(err.value)
    assert f"{SECTION}.alpah = 0.1: unknown key; did you mean 'alpha'?" in message
    assert f"(allowed: {', '.join(sorted(PartitionConfig.model_fields))})" in message
    assert len(_problems(message)) == 1, message


def test_unknown_nested_key_names_what_is_allowed_there() -> None:
    params = {"local": {"stepz": 3}}
    with pytest.raises(ParameterError) as err:
        validate_params(PretrainingConfig, params, "federated_pretraining")
    message = str(err.value)
    assert "federated_pretraining.local.stepz = 3: unknown key; did you mean 'steps'?" in message
    assert f"(allowed: {', '.join(sorted(LocalTrainConfig.model_fields))})" in message


def test_unknown_section_is_rejected_with_the_closest_name() -> None:
    with pytest.raises(ParameterError) as err:
        validate_all({SECTION: QUICK, "federated_pretrainig": {"rounds": 3}})
    message = str(err.value)
    assert "parameter federated_pretrainig = {'rounds': 3}: unknown section" in message
    assert "did you mean 'federated_pretraining'?" in message
    assert all(section in message for section in PARAMETER_MODELS)
    assert len(_problems(message)) == 1, message


def test_every_registered_schema_is_a_strict_pydantic_model() -> None:
    for section, path in PARAMETER_MODELS.items():
        module, name = path.split(":")
        model = getattr(importlib.import_module(module), name)
        assert issubclass(model, BaseModel), section
        assert model.model_config.get("extra") == "forbid", section


def test_several_bad_values_are_all_reported() -> None:
    with pytest.raises(ParameterError) as err:
        validate_params(PartitionConfig, {**QUICK, "alpha": -1, "min_test_size": 0}, SECTION)
    assert len(_problems(str(err.value))) == 2
    assert f"{SECTION}.alpha = -1" in str(err.value)
    assert f"{SECTION}.min_test_size = 0" in str(err.value)


def test_seen_client_size_must_exceed_min_test_size() -> None:
    with pytest.raises(ParameterError) as err:
        validate_params(PartitionConfig, {**QUICK, "seen_client_size": 40}, SECTION)
    message = str(err.value)
    assert "seen_client_size (40)" in message and "min_test_size (48)" in message


def test_good_parameters_validate() -> None:
    cfg = validate_params(PartitionConfig, QUICK, SECTION)
    assert cfg.model_dump() == QUICK
    assert validate_params(PartitionConfig, {**QUICK, "seen_client_size": None}, SECTION)
    # a missing section means the defaults
    assert validate_params(PartitionConfig, None, SECTION) == PartitionConfig()


def test_validate_all_checks_known_sections() -> None:
    assert PARAMETER_MODELS[SECTION].endswith(":PartitionConfig")
    validate_all({SECTION: QUICK})
    validate_all({})
    with pytest.raises(ParameterError, match=rf"{SECTION}\.alpha = -1"):
        validate_all({SECTION: {**QUICK, "alpha": -1}})
    with pytest.raises(ParameterError, match="not_a_pipeline = {}: unknown section"):
        validate_all({SECTION: QUICK, "not_a_pipeline": {}})


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("env", ["base", "quick", "paper"])
def test_shipped_configuration_is_valid(env) -> None:
    if not (REPO / "conf" / env).is_dir():
        pytest.skip(f"no conf/{env}")
    loader = OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env=env)
    parameters = loader["parameters"]
    assert SECTION in parameters
    validate_all(parameters)


def test_hook_stops_the_run_before_any_node() -> None:
    hook = ParameterValidationHook()
    catalog = DataCatalog()
    catalog["parameters"] = {SECTION: {**QUICK, "test_fraction": 1.5}}
    with pytest.raises(ParameterError, match=rf"{SECTION}\.test_fraction = 1\.5"):
        hook.before_pipeline_run(run_params={}, pipeline=None, catalog=catalog)
    catalog["parameters"] = {SECTION: QUICK}
    hook.before_pipeline_run(run_params={}, pipeline=None, catalog=catalog)
    hook.before_pipeline_run(run_params={}, pipeline=None, catalog=DataCatalog())


@pytest.mark.slow
def test_kedro_run_with_bad_runtime_parameter_fails_before_any_node(
    make_project_copy, run_kedro
) -> None:
    project = make_project_copy("bad_params")
    result = run_kedro(
        project,
        "--pipeline",
        "data_partitioning",
        "--env",
        "quick",
        "--params",
        f"{SECTION}.alpha=-1",
        check=False,
        timeout=180,
    )
    assert not result.timed_out, result.tail()
    assert result.returncode == 1, result.tail()
    last = result.stderr.strip().splitlines()[-1]
    expected = f"parameter {SECTION}.alpha = -1: Input should be greater than 0"
    assert last == f"Error: ParameterError: Invalid parameters: {expected}", result.tail()
    assert "Traceback" not in result.output, result.tail()
    assert "Running node" not in result.output, result.tail()
    splits = project / "data" / "05_model_input" / "client_splits"
    assert not splits.exists() or not any(splits.iterdir()), list(splits.iterdir())
    assert not any((project / "data" / "08_reporting").glob("partition_*")), result.tail()
    # rejected before the session started: no MLflow store, hence no run, was even opened
    assert not (project / "mlflow.db").exists()
