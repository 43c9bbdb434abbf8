"""The Azure deployment template (cron/azure-functions/infra/azuredeploy.json), checked offline.

What can run here without Azure or the Bicep compiler: the file is JSON with the ARM template
shape; every resource type and apiVersion is one of an explicit list of real ARM pairs; every
``[...]`` expression is balanced, calls only ARM template functions and names only declared
parameters and variables; every ``dependsOn`` names a resource of the same template; the role
assignments use the real built-in role GUIDs at the right scopes; and every setting the app reads
from the environment (``os.environ`` in function_app.py and the detector, ``%NAME%`` binding
expressions, ``${NAME}`` in the packaged config) is set by the template, secrets as Key Vault
references. Not checked: that Azure accepts it (no deployment, no ``what-if``); see cron/README.md.
"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = ROOT / "cron" / "azure-functions"
TEMPLATE_PATH = APP_DIR / "infra" / "azuredeploy.json"
PARAMETERS_EXAMPLE = APP_DIR / "infra" / "azuredeploy.parameters.example.json"
FUNCTION_APP = APP_DIR / "function_app.py"
FUNCTION_CONFIG = APP_DIR / "config" / "detector.toml"

#: Resource types and apiVersions the template may use: real ARM pairs (Azure resource reference).
ALLOWED_TYPES: dict[str, set[str]] = {
    "Microsoft.Storage/storageAccounts": {"2023-05-01"},
    "Microsoft.Storage/storageAccounts/blobServices": {"2023-05-01"},
    "Microsoft.Storage/storageAccounts/blobServices/containers": {"2023-05-01"},
    "Microsoft.Insights/components": {"2020-02-02"},
    "Microsoft.Insights/scheduledQueryRules": {"2023-12-01"},
    "Microsoft.Web/serverfarms": {"2024-04-01"},
    "Microsoft.Web/sites": {"2024-04-01"},
    "Microsoft.Authorization/roleAssignments": {"2022-04-01"},
    "Microsoft.Resources/deployments": {"2022-09-01"},
}
#: apiVersions reference() may name (existing resources read at deployment time, too).
ALLOWED_REFERENCE_VERSIONS = {"2023-05-01", "2020-02-02", "2024-04-01", "2023-09-01"}

#: Built-in role definition ids (the same in every tenant; learn.microsoft.com built-in roles).
BUILTIN_ROLES = {
    "73c42c96-874c-492b-b04d-ab87d138a893": "Log Analytics Reader",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
}

#: ARM template functions the template may call (a typo in a name fails only at deployment).
ARM_FUNCTIONS = {
    "concat", "createarray", "empty", "format", "guid", "if", "last", "parameters", "reference",
    "resourcegroup", "resourceid", "split", "subscriptionresourceid", "take", "tolower",
    "uniquestring", "variables",
}  # fmt: skip

#: Environment names the code reads that the template must NOT set, and why.
NOT_APP_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME": "the platform sets it from functionAppConfig.runtime; "
    "Flex Consumption does not take it as an app setting",
    "AZURE_CLIENT_ID": "only for a user-assigned identity; the template uses the system-assigned one",
    "ACS_DETECTOR_STORAGE_CONNECTION_STRING": "a key-based alternative to the managed identity "
    "for Blob state: left unset so the identity is used",
}

#: App settings Flex Consumption moved into functionAppConfig (or dropped): never set them.
FLEX_REJECTED_SETTINGS = {
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
}

_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return json.loads(TEMPLATE_PATH.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Walking the template
# --------------------------------------------------------------------------------------------


def _templates(tpl: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The template and every nested (inline) deployment template in it."""
    yield tpl
    for res in tpl.get("resources", []):
        inner = res.get("properties", {}).get("template")
        if res["type"] == "Microsoft.Resources/deployments" and inner:
            yield from _templates(inner)


def _resources(tpl: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(resource, the template declaring it), nested templates included."""
    for t in _templates(tpl):
        for res in t.get("resources", []):
            yield res, t


def _strings(obj: Any, *, skip_templates: bool = True) -> Iterator[str]:
    """Every string value under ``obj``; nested templates are walked as their own scope."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v, skip_templates=skip_templates)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if skip_templates and k == "template" and isinstance(v, dict) and "resources" in v:
                continue
            yield from _strings(v, skip_templates=skip_templates)


def _expressions(tpl: dict[str, Any]) -> list[str]:
    """ARM expressions of one template scope: strings in ``[...]`` (``[[`` is a literal)."""
    return [
        s[1:-1]
        for s in _strings(tpl)
        if s.startswith("[") and s.endswith("]") and not s.startswith("[[")
    ]


def _strip_literals(expr: str) -> str:
    """The expression with its '...' string literals emptied ('' is an escaped quote)."""
    return re.sub(r"'(?:[^']|'')*'", "''", expr)


def _site(tpl: dict[str, Any]) -> dict[str, Any]:
    (site,) = [r for r, _ in _resources(tpl) if r["type"] == "Microsoft.Web/sites"]
    return site


def _app_settings(tpl: dict[str, Any]) -> dict[str, str]:
    settings = _site(tpl)["properties"]["siteConfig"]["appSettings"]
    names = [s["name"] for s in settings]
    assert len(names) == len(set(names)), f"duplicate app settings: {names}"
    return {s["name"]: s["value"] for s in settings}


# --------------------------------------------------------------------------------------------
# What the app reads
# --------------------------------------------------------------------------------------------


def _module_constants(tree: ast.Module) -> dict[str, str]:
    out: dict[str, str] = {}
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for t in targets:
            if isinstance(t, ast.Name):
                out[t.id] = value.value
    return out


def _is_environ(node: ast.expr) -> bool:
    """``os.environ``, or a mapping named like one (``env = os.environ if ... else env``)."""
    if isinstance(node, ast.Attribute) and node.attr == "environ":
        return True
    return isinstance(node, ast.Name) and node.id in ("env", "environ")


def env_reads(path: Path) -> set[str]:
    """Environment names ``path`` reads: ``os.environ.get/[]``, ``os.getenv``, ``env.get``,
    with module-level string constants resolved. Names computed at run time are not seen."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    consts = _module_constants(tree)

    def name_of(arg: ast.expr) -> str | None:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
        if isinstance(arg, ast.Name):
            return consts.get(arg.id)
        return None

    found: set[str] = set()
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Attribute):
            f = node.func
            from_mapping = f.attr in ("get", "pop") and _is_environ(f.value)
            from_getenv = (
                f.attr == "getenv" and isinstance(f.value, ast.Name) and f.value.id == "os"
            )
            if from_mapping or from_getenv:
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            key = node.slice
        name = name_of(key) if key is not None else None
        if name and _ENV_NAME.match(name):
            found.add(name)
    return found


def binding_settings(path: Path) -> set[str]:
    """App settings named by ``%NAME%`` binding expressions (the timer's schedule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.update(re.findall(r"%([A-Za-z_][A-Za-z0-9_]*)%", node.value))
    return out


def _toml_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _toml_strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _toml_strings(v)


def config_references(path: Path) -> dict[str, bool]:
    """``${NAME}`` references in a config file's values (comments are not read):
    name -> required (no ``:-default``)."""
    out: dict[str, bool] = {}
    for text in _toml_strings(tomllib.loads(path.read_text(encoding="utf-8"))):
        for name, default in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}", text):
            out[name] = out.get(name, False) or not default
    return out


def secret_references(path: Path) -> set[str]:
    """Names referenced from notification and heartbeat URLs: these carry tokens/passwords."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    urls = [u for r in data.get("notify", {}).get("route", []) for u in r.get("urls", [])]
    urls += data.get("health", {}).get("heartbeat_urls", [])
    return {n for u in urls for n in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", u)}


def function_name(path: Path) -> str:
    """Name of the timer-triggered function (what Application Insights calls its requests)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                if (
                    isinstance(dec, ast.Call)
                    and isinstance(dec.func, ast.Attribute)
                    and dec.func.attr == "timer_trigger"
                ):
                    return node.name
    raise AssertionError("function_app.py has no @app.timer_trigger function")


def detector_env_reads() -> set[str]:
    return set().union(*(env_reads(p) for p in sorted((ROOT / "detector").rglob("*.py"))))


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------


def test_is_an_arm_template_with_known_types_and_api_versions(template: dict[str, Any]) -> None:
    for tpl in _templates(template):
        assert tpl["$schema"].endswith("/deploymentTemplate.json#")
        assert tpl["contentVersion"] == "1.0.0.0"
    used = set()
    for res, _ in _resources(template):
        rtype, version = res["type"], res["apiVersion"]
        assert rtype in ALLOWED_TYPES, f"{rtype} is not in the allowlist of ARM types"
        assert version in ALLOWED_TYPES[rtype], f"{rtype}@{version} is not an allowed version"
        used.add(rtype)
    assert used == set(ALLOWED_TYPES), f"allowlist entries never used: {set(ALLOWED_TYPES) - used}"
    params = json.loads(PARAMETERS_EXAMPLE.read_text(encoding="utf-8"))
    assert set(params["parameters"]) <= set(template["parameters"])
    required = {k for k, v in template["parameters"].items() if "defaultValue" not in v}
    assert required <= set(params["parameters"]), "the example must give every required one"


def test_expressions_are_balanced_and_use_only_declared_names(template: dict[str, Any]) -> None:
    for tpl in _templates(template):
        declared_params = set(tpl.get("parameters", {}))
        declared_vars = set(tpl.get("variables", {}))
        used_params: set[str] = set()
        for expr in _expressions(tpl):
            code = _strip_literals(expr)
            assert code.count("'") % 2 == 0, f"unbalanced quote in [{expr}]"
            depth = 0
            for ch in code:
                depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(ch, 0)
                assert depth >= 0, f"unbalanced brackets in [{expr}]"
            assert depth == 0, f"unbalanced brackets in [{expr}]"
            for fn in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", code):
                assert fn.lower() in ARM_FUNCTIONS, f"{fn}() is not an ARM function: [{expr}]"
            for name in re.findall(r"parameters\('([^']+)'\)", expr):
                assert name in declared_params, f"undeclared parameter {name!r}"
                used_params.add(name)
            for name in re.findall(r"variables\('([^']+)'\)", expr):
                assert name in declared_vars, f"undeclared variable {name!r}"
        assert used_params == declared_params, f"unused: {declared_params - used_params}"


def test_depends_on_names_resources_of_the_same_template(template: dict[str, Any]) -> None:
    for tpl in _templates(template):
        types = {r["type"].lower() for r in tpl.get("resources", [])}
        for res in tpl.get("resources", []):
            for dep in res.get("dependsOn", []):
                m = re.match(r"\[resourceId\('([^']+)'", dep)
                assert m, f"dependsOn should be a resourceId(...): {dep}"
                assert m.group(1).lower() in types, f"{dep} is not declared in this template"


def test_reference_calls_name_real_api_versions(template: dict[str, Any]) -> None:
    for tpl in _templates(template):
        for expr in _expressions(tpl):
            for version in re.findall(r"reference\([^)]*\)\s*,\s*'([0-9-]+)'", expr):
                assert version in ALLOWED_REFERENCE_VERSIONS, expr
            for version in re.findall(r"reference\(parameters\('[^']+'\)\s*,\s*'([0-9-]+)'", expr):
                assert version in ALLOWED_REFERENCE_VERSIONS, expr


def test_flex_consumption_plan_python_and_system_identity(template: dict[str, Any]) -> None:
    (plan,) = [r for r, _ in _resources(template) if r["type"] == "Microsoft.Web/serverfarms"]
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert plan["properties"]["reserved"] is True  # Linux
    site = _site(template)
    assert site["kind"] == "functionapp,linux"
    assert site["identity"] == {"type": "SystemAssigned"}
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert config["deployment"]["storage"]["authentication"]["type"] == "SystemAssignedIdentity"
    # host storage through the identity: an account name, never a key
    settings = _app_settings(template)
    assert "AzureWebJobsStorage__accountName" in settings and "AzureWebJobsStorage" not in settings
    for res, _ in _resources(template):
        if res["type"] == "Microsoft.Storage/storageAccounts":
            assert res["properties"]["allowSharedKeyAccess"] is False
            assert res["properties"]["allowBlobPublicAccess"] is False


# --------------------------------------------------------------------------------------------
# Roles
# --------------------------------------------------------------------------------------------


def _resolve(value: str, tpl: dict[str, Any], parents: dict[int, tuple[dict, dict]]) -> str:
    """Follow variables('x') and an inner template's parameters('x') to the text they stand for."""
    for _ in range(5):
        m = re.fullmatch(r"\[variables\('([^']+)'\)\]", value)
        if m:
            value = tpl["variables"][m.group(1)]
            continue
        m = re.fullmatch(r"\[parameters\('([^']+)'\)\]", value)
        if m and id(tpl) in parents:
            deployment, outer = parents[id(tpl)]
            value, tpl = deployment["properties"]["parameters"][m.group(1)]["value"], outer
            continue
        break
    return value


def _role_assignments(template: dict[str, Any]) -> list[tuple[str, str, dict, dict]]:
    """(role GUID, scope text, assignment, declaring template) for every role assignment."""
    parents: dict[int, tuple[dict, dict]] = {}
    for res, tpl in _resources(template):
        inner = res.get("properties", {}).get("template")
        if inner:
            parents[id(inner)] = (res, tpl)
    out = []
    for res, tpl in _resources(template):
        if res["type"] != "Microsoft.Authorization/roleAssignments":
            continue
        role_expr = res["properties"]["roleDefinitionId"]
        assert role_expr.startswith(
            "[subscriptionResourceId('Microsoft.Authorization/roleDefinitions'"
        )
        arg = re.search(r"(variables|parameters)\('[^']+'\)", role_expr)
        assert arg, role_expr
        guid = _resolve(f"[{arg.group(0)}]", tpl, parents)
        out.append((guid, res["scope"], res, tpl))
    return out


def test_role_definition_ids_are_the_real_builtin_guids(template: dict[str, Any]) -> None:
    roles = {
        BUILTIN_ROLES.get(guid, guid): scope for guid, scope, _, _ in _role_assignments(template)
    }
    assert set(roles) == {
        "Log Analytics Reader",
        "Storage Blob Data Contributor",
        "Storage Blob Data Owner",
        "Key Vault Secrets User",
    }, roles
    for _, _, res, _ in _role_assignments(template):
        assert res["properties"]["principalType"] == "ServicePrincipal"
        assert "identity.principalId" in res["properties"]["principalId"] or (
            res["properties"]["principalId"] == "[parameters('principalId')]"
        )


def test_roles_are_scoped_to_the_workspace_and_the_state_container(template: dict) -> None:
    by_role = {BUILTIN_ROLES[g]: (scope, tpl) for g, scope, _, tpl in _role_assignments(template)}
    scope, tpl = by_role["Log Analytics Reader"]
    assert scope.startswith("[format('Microsoft.OperationalInsights/workspaces/{0}'")
    (deployment,) = [
        r for r, _ in _resources(template) if r.get("properties", {}).get("template") is tpl
    ]
    # the nested deployment runs in the workspace's own subscription and resource group
    assert deployment["resourceGroup"] == "[variables('workspaceResourceGroup')]"
    assert deployment["subscriptionId"] == "[variables('workspaceSubscriptionId')]"
    for var in ("workspaceResourceGroup", "workspaceSubscriptionId", "workspaceName"):
        assert "parameters('logAnalyticsWorkspaceResourceId')" in template["variables"][var]

    scope, _ = by_role["Storage Blob Data Contributor"]
    assert "/blobServices/default/containers/{1}" in scope
    assert "variables('stateStorageName'), parameters('stateContainerName')" in scope
    # ... which is the container the job's blob:// state URL names
    state_url = _app_settings(template)["ACS_DETECTOR_STATE_URL"]
    assert state_url.startswith("[format('blob://{0}/{1}/{2}', variables('stateStorageName'), ")
    assert "parameters('stateContainerName')" in state_url

    scope, _ = by_role["Storage Blob Data Owner"]  # the Functions host, on its own account
    assert (
        scope == "[format('Microsoft.Storage/storageAccounts/{0}', variables('hostStorageName'))]"
    )
    assert _app_settings(template)["AzureWebJobsStorage__accountName"] == (
        "[variables('hostStorageName')]"
    )


# --------------------------------------------------------------------------------------------
# App settings: everything the app reads is set
# --------------------------------------------------------------------------------------------


def test_every_setting_the_app_reads_is_set_by_the_template(template: dict[str, Any]) -> None:
    settings = _app_settings(template)
    from_function = env_reads(FUNCTION_APP) | binding_settings(FUNCTION_APP)
    from_config = set(config_references(FUNCTION_CONFIG))
    from_detector = detector_env_reads()
    # the parsers see what they should (a parser that finds nothing would pass vacuously)
    assert {"ACS_DETECTOR_CONFIG", "ACS_DETECTOR_SCHEDULE"} <= from_function
    assert {"LOG_WORKSPACE_ID", "ACS_DETECTOR_STATE_URL"} <= from_config
    assert {"ACS_DETECTOR_LOG_LEVEL", "ACS_DETECTOR_STORAGE_CONNECTION_STRING"} <= from_detector

    read = from_function | from_config | from_detector
    stale = set(NOT_APP_SETTINGS) - read
    assert not stale, f"NOT_APP_SETTINGS lists names nothing reads any more: {stale}"
    missing = sorted(read - set(NOT_APP_SETTINGS) - set(settings))
    assert not missing, f"read by the app but not set by the template: {missing}"
    assert not set(NOT_APP_SETTINGS) & set(settings)
    assert not FLEX_REJECTED_SETTINGS & set(settings)


def test_secrets_are_key_vault_references(template: dict[str, Any]) -> None:
    settings = _app_settings(template)
    secrets = secret_references(FUNCTION_CONFIG)
    assert secrets >= {"ACS_DETECTOR_WEBHOOK_URL", "ACS_DETECTOR_HEARTBEAT_URL"}
    for name in secrets:
        m = re.fullmatch(r"\[variables\('([^']+)'\)\]", settings[name])
        assert m, f"{name} should come from a Key Vault reference variable"
        expr = template["variables"][m.group(1)]
        assert "@Microsoft.KeyVault(VaultName={0};SecretName={1})" in expr, name
        # an unset secret name leaves the setting empty, which the config's ${NAME:-} allows
        assert expr.startswith("[if(empty(parameters('") and ", ''," in expr, name
        assert not config_references(FUNCTION_CONFIG)[name], f"{name} must have a :- default"
    # no other setting carries a literal secret
    for name, value in settings.items():
        assert "AccountKey=" not in value and "InstrumentationKey=" not in value, name
        if not value.startswith("["):
            assert name not in secrets


def test_alerts_watch_the_function_the_app_defines(template: dict[str, Any]) -> None:
    name = function_name(FUNCTION_APP)
    assert template["variables"]["functionName"] == name
    rules = [
        r for r, _ in _resources(template) if r["type"] == "Microsoft.Insights/scheduledQueryRules"
    ]
    by_op = {}
    for rule in rules:
        props = rule["properties"]
        (crit,) = props["criteria"]["allOf"]
        assert "variables('functionName')" in crit["query"]
        assert crit["query"].startswith("[format('requests | where name == ''{0}''")
        assert crit["timeAggregation"] == "Count"
        assert props["scopes"] == [
            "[resourceId('Microsoft.Insights/components', variables('insightsName'))]"
        ]
        assert props["actions"] == {"actionGroups": "[variables('actionGroups')]"}
        by_op[crit["operator"], crit["threshold"]] = crit["query"]
    assert set(by_op) == {("GreaterThan", 0), ("LessThan", 1)}
    assert "success == false" in by_op["GreaterThan", 0]  # failed runs
    assert "success" not in by_op["LessThan", 1]  # any run at all
