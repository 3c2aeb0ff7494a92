"""The provider as Airflow sees it: discovery, the connection form, the env-var connection, import weight."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from airflow_provider_grok import __version__
from airflow_provider_grok.get_provider_info import get_provider_info

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def test_provider_info_matches_airflows_schema_and_distribution():
    import airflow
    import jsonschema

    info = get_provider_info()
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(info, schema)
    yaml_schema = json.loads((Path(airflow.__file__).parent / "provider.yaml.schema.json").read_text())
    jsonschema.validate(
        info["connection-types"], yaml_schema["properties"]["connection-types"]
    )  # conn-fields and ui-field-behaviour as the 3.2+ UI reads them
    dist = metadata.distribution("airflow-provider-grok")
    assert info["package-name"] == dist.metadata["Name"] == "airflow-provider-grok"
    assert info["versions"] == [__version__] == [dist.version]
    entry_points = [ep for ep in dist.entry_points if ep.group == "apache_airflow_provider"]
    assert [ep.value for ep in entry_points] == ["airflow_provider_grok.get_provider_info:get_provider_info"]


def test_connection_form_declaration():
    (conn,) = get_provider_info()["connection-types"]
    assert conn["connection-type"] == "grok"
    behaviour = conn["ui-field-behaviour"]
    assert sorted(behaviour["hidden-fields"]) == ["login", "port", "schema"]
    assert behaviour["relabeling"] == {"host": "Gateway base URL", "password": "API key"}
    assert behaviour["placeholders"]["host"].startswith("https://api.x.ai")
    fields = conn["conn-fields"]
    assert list(fields) == ["model", "timeout", "max_retries", "requests_per_second", "extra_headers", "redis_conn_id"]
    for name, field in fields.items():
        assert field["label"] and field["description"], name
        assert "type" in field["schema"] and "default" in field["schema"], name


@pytest.mark.filterwarnings("error")
def test_providers_manager_loads_the_form_without_deprecation():
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()
    assert manager.providers["airflow-provider-grok"].version == __version__
    hook = ProvidersManagerTaskRuntime().hooks["grok"]
    assert hook is not None and hook.hook_class_name == "airflow_provider_grok.hooks.grok.GrokHook"
    widgets = manager.connection_form_widgets
    assert widgets["extra__grok__timeout"].field["schema"]["title"] == "Read timeout (s)"
    behaviour = manager.field_behaviours["grok"]
    assert behaviour["relabeling"]["host"] == "Gateway base URL"


@pytest.mark.parametrize(("command", "expected"), [("list", "airflow-provider-grok"), ("hooks", "GrokHook")])
def test_airflow_cli_lists_the_provider(command, expected):
    command_line = [AIRFLOW, "providers", command]
    out = subprocess.run(command_line, capture_output=True, text=True, check=True, timeout=120).stdout
    line = next(line for line in out.splitlines() if expected in line)
    assert "grok" in line


def imported_after(statement: str) -> set[str]:
    code = f"import json, sys; {statement}; print('MODULES=' + json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    line = next(line for line in out.splitlines() if line.startswith("MODULES="))  # Airflow may log to stdout
    return set(json.loads(line.removeprefix("MODULES=")))


def test_package_import_is_light():
    loaded = imported_after("import airflow_provider_grok")
    assert not {"airflow", "requests", "httpx", "boto3", "PIL"} & loaded


def test_hook_import_pulls_in_no_boto3_or_pil():
    loaded = imported_after("import airflow_provider_grok.hooks.grok")
    assert "requests" in loaded  # sanity: the import really happened
    assert not {"boto3", "botocore", "PIL"} & loaded


def test_provider_info_import_is_light():
    loaded = imported_after("from airflow_provider_grok.get_provider_info import get_provider_info")
    assert not {"airflow", "requests", "httpx", "boto3"} & loaded


def test_operator_import_adds_nothing_heavy_at_dag_parse_time():
    baseline = imported_after("from airflow.sdk import BaseOperator, BaseOperatorLink")
    loaded = imported_after("import airflow_provider_grok.operators.grok")
    added = {m for m in loaded - baseline if not m.startswith("airflow_provider_grok")}
    assert added == set()  # nothing beyond what airflow.sdk's BaseOperator already loads
    assert not {"requests", "boto3", "botocore", "PIL", "airflow.providers.amazon.aws.hooks.s3"} & loaded
    # httpx is loaded by airflow.sdk itself (its API client), so it is not ours to avoid.
    assert "httpx" in baseline


def test_the_trigger_can_name_every_provider_error():
    from airflow_provider_grok import exceptions
    from airflow_provider_grok.exceptions import ERROR_TYPES

    assert "GrokCostCapExceededError" in ERROR_TYPES and "GrokPrefixInUseError" in ERROR_TYPES
    # An event from a trigger of an earlier release still names the cap's error by its old name.
    assert ERROR_TYPES["GrokBudgetExceededError"] is exceptions.GrokCostCapExceededError
    assert set(ERROR_TYPES.values()) == {
        cls for cls in vars(exceptions).values() if isinstance(cls, type) and issubclass(cls, exceptions.GrokError)
    }


def test_edit_options_are_the_generation_options_but_size():
    import typing

    from airflow_provider_grok.hooks.grok import EditOptions
    from airflow_provider_grok.protocol import GenerationOptions

    generation = typing.get_type_hints(GenerationOptions)
    del generation["size"]  # an edit keeps its source's shape
    assert typing.get_type_hints(EditOptions) == generation


def test_the_cost_caps_old_error_name_still_imports_with_a_deprecation_warning():
    from airflow_provider_grok import exceptions

    with pytest.warns(DeprecationWarning, match="use GrokCostCapExceededError"):
        from airflow_provider_grok.exceptions import GrokBudgetExceededError
    assert GrokBudgetExceededError is exceptions.GrokCostCapExceededError
