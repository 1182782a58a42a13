"""deploy/k8s (kustomize + KEDA) agrees with Kubernetes, with KEDA, and with what the worker reads.

No cluster and no kubectl/kustomize binary. The kustomization is rendered here in Python: `resources`
(files), `configMapGenerator`, `images` and `namespace`, the only fields it uses; any other field fails
the render instead of being silently ignored. Generated ConfigMaps keep their plain names (kustomize
appends a content hash and rewrites every reference with it, so plain names resolve the same way).

Then:
- every core object is validated offline by kubernetes-validate against the Kubernetes 1.31 OpenAPI
  schemas (KEDA 2.16 supports Kubernetes 1.29-1.31), strict: an unknown field is an error, as kubectl's
  default strict field validation makes it;
- the KEDA objects are validated with jsonschema against the openAPIV3Schema of the CRDs vendored in
  deploy/k8s/crds (ScaledObject: KEDA 2.16.1; TriggerAuthentication: chart 2.15.0; sources in the
  files), also with unknown fields made errors;
- the wiring is cross-checked against the worker itself: the container environment goes through
  `Settings.from_env` and the task loader with the mounted files materialised, the Faust app is built
  from it (`build_app`) to read the consumer group and web port it really uses, and the probe paths are
  pages the worker registers (`@app.page` in streams/).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import re
import shlex
import tomllib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from streams.app import build_app
from streams.faust_tuning import FAUST_TUNING
from streams.settings import ENV_DEFAULTS, VARIABLES, Settings
from streams.tasks import parse_tasks

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CRDS = K8S / "crds"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CONFIG_TASKS = ROOT / "config" / "tasks.toml"

#: The Kubernetes minor version the manifests are validated against (kubernetes-validate bundles its schemas).
K8S_VERSION = "1.31"
#: Throughput of one worker with an instant model: about 900 requests/s on its one core (docs/ARCHITECTURE.md).
CPU_CEILING_PER_WORKER = 900.0
#: "A few seconds" of one worker's throughput, the backlog lagThreshold stands for.
LAG_SECONDS = (2.0, 15.0)

_KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "images"}
_CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                   "PersistentVolume", "StorageClass", "PriorityClass", "ClusterTriggerAuthentication"}
_KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
_TASK_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")
_PAGE = re.compile(r"""@app\.page\(\s*["']([^"']+)["']""")

Obj = dict[str, Any]


# --------------------------------------------------------------------------- rendering


def _load_all(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _inside(directory: Path, relative: str) -> Path:
    """A path kustomize may load: in or below the kustomization's directory (its load restrictor)."""
    path = (directory / relative).resolve()
    assert path.is_relative_to(directory.resolve()), f"kustomize refuses {relative}: outside {directory}"
    assert path.is_file(), f"{relative} named in {directory}/kustomization.yaml does not exist"
    return path


def _image_name(ref: str) -> str:
    ref = ref.split("@", 1)[0]
    head, _, tail = ref.rpartition("/")
    return f"{head}/{tail.split(':', 1)[0]}" if head else tail.split(":", 1)[0]


def _containers(obj: Obj) -> list[Obj]:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def render(directory: Path = K8S) -> list[Obj]:
    """What `kubectl apply -k directory` would send, for the kustomization fields this one uses."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kust.get("apiVersion") == "kustomize.config.k8s.io/v1beta1" and kust.get("kind") == "Kustomization"
    unsupported = sorted(set(kust) - _KUSTOMIZE_FIELDS)
    assert not unsupported, f"this test's renderer does not implement {unsupported}; extend render() first"
    objects: list[Obj] = []
    for entry in kust.get("resources", []):
        objects += _load_all(_inside(directory, entry))
    for gen in kust.get("configMapGenerator", []):
        assert not set(gen) - {"name", "files", "literals"}, f"unsupported generator fields in {gen}"
        data: dict[str, str] = {}
        for spec in gen.get("files", []):
            key, sep, rel = spec.partition("=")
            if not sep:
                key, rel = Path(spec).name, spec
            data[key] = _inside(directory, rel).read_text(encoding="utf-8")
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    for image in kust.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                if _image_name(container["image"]) == image["name"]:
                    name = image.get("newName", image["name"])
                    pin = f"@{image['digest']}" if "digest" in image else f":{image['newTag']}"
                    container["image"] = name + pin
    namespace = kust.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] not in _CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    return objects


def _kustomization() -> Obj:
    loaded: Obj = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    return loaded


def _one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind}{' ' + name if name else ''}, found {len(found)}"
    return found[0]


def _pod(objects: list[Obj]) -> Obj:
    spec: Obj = _one(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def _worker(objects: list[Obj]) -> Obj:
    containers = _pod(objects)["containers"]
    assert len(containers) == 1, "one worker container per pod (one worker process is one core)"
    container: Obj = containers[0]
    return container


def _example_secrets() -> dict[str, dict[str, str]]:
    secrets: dict[str, dict[str, str]] = {}
    for doc in _load_all(SECRET_EXAMPLE):
        assert doc["kind"] == "Secret"
        values = dict(doc.get("stringData") or {})
        values.update({k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()})
        secrets[doc["metadata"]["name"]] = values
    return secrets


def _secret_value(ref: Obj) -> str:
    secrets = _example_secrets()
    assert ref["name"] in secrets, f"Secret {ref['name']} is not in {SECRET_EXAMPLE.name}"
    assert ref["key"] in secrets[ref["name"]], f"Secret {ref['name']} has no key {ref['key']} in {SECRET_EXAMPLE.name}"
    return secrets[ref["name"]][ref["key"]]


def _manifest_env(objects: list[Obj]) -> dict[str, str]:
    """The worker container's `env`, secretKeyRef/configMapKeyRef resolved (secrets: the example's values)."""
    container = _worker(objects)
    assert not container.get("envFrom"), "envFrom hides the variable names; list each variable under env"
    env: dict[str, str] = {}
    for item in container.get("env", []):
        name = item["name"]
        assert name not in env, f"{name} is set twice"
        source = item.get("valueFrom")
        if source is None:
            env[name] = str(item.get("value", ""))
        elif "secretKeyRef" in source:
            env[name] = _secret_value(source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[name] = _one(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
        else:
            raise AssertionError(f"{name}: unsupported valueFrom {source}")
    return env


def _dockerfile_env() -> dict[str, str]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    env: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[0].upper() == "ENV":
            for token in shlex.split(parts[1]):
                key, sep, value = token.partition("=")
                if sep:
                    env[key] = value
    return env


def _mounted_file(objects: list[Obj], container_path: str) -> str:
    """The content the worker container sees at `container_path`, from its configMap/secret volumes."""
    pod, container = _pod(objects), _worker(objects)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        base = mount["mountPath"].rstrip("/") + "/"
        if not container_path.startswith(base):
            continue
        assert "subPath" not in mount, "subPath mounts never receive updates; mount the directory"
        relative = container_path[len(base):]
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            source, data = volume["configMap"], _one(objects, "ConfigMap", volume["configMap"]["name"])["data"]
        elif "secret" in volume:
            source = volume["secret"]
            data = {key: _secret_value({"name": source["secretName"], "key": key})
                    for key in [i["key"] for i in source.get("items", [])] or _example_secrets()[source["secretName"]]}
        else:
            raise AssertionError(f"{container_path} is on volume {mount['name']}, which holds no such file")
        items = {i["path"]: i["key"] for i in source.get("items", [])}
        key = items.get(relative, relative if not items else None)
        assert key is not None and key in data, f"{container_path}: volume {mount['name']} has no file {relative}"
        return data[key]
    raise AssertionError(f"{container_path} is on no volume mounted in the worker container")


def _container_env(objects: list[Obj], tmp_path: Path) -> dict[str, str]:
    """What the worker process sees (image ENV, then the manifest's env), with each file it is pointed at
    (task file, SASL password) copied from its volume to tmp_path, and the data dir moved there."""
    env = {**_dockerfile_env(), **_manifest_env(objects)}
    for name in ("STREAMS_TASKS_FILE", "STREAMS_SASL_PASSWORD_FILE"):
        if env.get(name):
            local = tmp_path / name.lower()
            local.write_text(_mounted_file(objects, env[name]), encoding="utf-8")
            env[name] = str(local)
    env["STREAMS_DATA_DIR"] = str(tmp_path / "data")
    return env


def _settings(objects: list[Obj], tmp_path: Path) -> Settings:
    return Settings.from_env(_container_env(objects, tmp_path))


def _worker_app(objects: list[Obj], tmp_path: Path) -> Any:
    async def build() -> Any:
        return build_app(_settings(objects, tmp_path))

    return asyncio.run(build())


def _k8s_tasks(objects: list[Obj]) -> str:
    return _mounted_file(objects, _manifest_env(objects)["STREAMS_TASKS_FILE"])


def _task_doc_refs(doc: Any) -> Iterator[tuple[str, str | None]]:
    if isinstance(doc, str):
        for m in _TASK_REF.finditer(doc):
            yield m.group(1), m.group(2)
    elif isinstance(doc, list):
        for item in doc:
            yield from _task_doc_refs(item)
    elif isinstance(doc, dict):
        for value in doc.values():
            yield from _task_doc_refs(value)


def _api_key_envs(doc: Obj) -> set[str]:
    return {t["model"]["api_key_env"] for t in doc.get("task", []) if t.get("model", {}).get("api_key_env")}


def _port_number(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert named, f"no container port named {port!r}"
    return int(named[0])


def _worker_pages() -> set[str]:
    return {m.group(1) for path in (ROOT / "streams").rglob("*.py") for m in _PAGE.finditer(path.read_text("utf-8"))}


def _quantity(text: str | int) -> Decimal:
    """A Kubernetes resource quantity (cpu in cores, memory in bytes)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    assert m, f"{text!r} is not a resource quantity"
    scale: dict[str | None, Decimal] = {None: Decimal(1), "m": Decimal("0.001"), "k": Decimal(10**3),
                                        "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
                                        "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30),
                                        "Ti": Decimal(2**40)}
    return Decimal(m.group(1)) * scale[m.group(2)]


def _scaled_object(objects: list[Obj]) -> Obj:
    return _one(objects, "ScaledObject")


def _kafka_trigger(objects: list[Obj]) -> Obj:
    triggers = [t for t in _scaled_object(objects)["spec"]["triggers"] if t["type"] == "kafka"]
    assert len(triggers) == 1, "one kafka trigger on the requests topic"
    return triggers[0]


# --------------------------------------------------------------------------- CRD schemas


def _crd_schema(api_version: str, kind: str) -> Obj:
    group, _, version = api_version.partition("/")
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            assert crd["spec"]["scope"] == "Namespaced"
            served = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
            assert served, f"{path.name} serves no {version}"
            schema: Obj = served[0]["schema"]["openAPIV3Schema"]
            return schema
    raise AssertionError(f"no CRD for {api_version} {kind} in {CRDS}")


def _closed(schema: Any) -> Any:
    """The schema with unknown fields made errors (the API server prunes or, strict, rejects them)."""
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) if k in ("items", "additionalProperties") else v for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {k: _closed(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [_closed(s) for s in schema[key]]
    return out


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("int32")
def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


def crd_errors(obj: Obj) -> list[str]:
    schema = _closed(_crd_schema(obj["apiVersion"], obj["kind"]))
    validator = jsonschema.Draft4Validator(schema, format_checker=_FORMATS)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(obj)]


def k8s_errors(obj: Obj) -> list[str]:
    try:
        used = kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [e.message]
    return [] if used == K8S_VERSION else [f"validated against {used}, not {K8S_VERSION}"]


# --------------------------------------------------------------------------- the objects and their schemas


def test_kustomization_renders_the_worker_objects() -> None:
    objects = render()
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(["Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                            "TriggerAuthentication", "ScaledObject"]), kinds
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), f"duplicate objects: {keys}"
    namespace = _kustomization()["namespace"]
    assert _one(objects, "Namespace")["metadata"]["name"] == namespace
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]
    # Every volume and env reference to a ConfigMap resolves to a generated one.
    for volume in _pod(objects).get("volumes", []):
        if "configMap" in volume:
            _one(objects, "ConfigMap", volume["configMap"]["name"])


def test_core_objects_pass_the_kubernetes_schema() -> None:
    core = [o for o in render() if "keda.sh" not in o["apiVersion"]] + _load_all(SECRET_EXAMPLE)
    problems = {f"{o['kind']}/{o['metadata']['name']}": k8s_errors(o) for o in core}
    assert not {k: v for k, v in problems.items() if v}, problems


def test_keda_objects_pass_the_vendored_crd_schemas() -> None:
    keda = [o for o in render() if o["apiVersion"].startswith("keda.sh/")]
    assert {o["kind"] for o in keda} == {"ScaledObject", "TriggerAuthentication"}
    for obj in keda:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert not crd_errors(obj), crd_errors(obj)


def test_the_schema_checks_reject_broken_objects() -> None:
    """Both validators are live: a misspelt field, a wrong type and an unknown kind all fail."""
    objects = render()
    deployment = copy.deepcopy(_one(objects, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz"}}
    assert k8s_errors(deployment)
    pdb = copy.deepcopy(_one(objects, "PodDisruptionBudget"))
    pdb["apiVersion"] = "policy/v1beta1"  # removed in 1.25
    assert k8s_errors(pdb)
    scaled = copy.deepcopy(_scaled_object(objects))
    scaled["spec"]["maxReplicas"] = 8
    assert crd_errors(scaled)
    scaled = copy.deepcopy(_scaled_object(objects))
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 320  # trigger metadata values are strings
    assert crd_errors(scaled)
    scaled = copy.deepcopy(_scaled_object(objects))
    scaled["spec"]["maxReplicaCount"] = 2**31
    assert crd_errors(scaled)


def test_vendored_crds_name_their_keda_release() -> None:
    for path in sorted(CRDS.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert "kedacore/charts" in text and re.search(r"commit [0-9a-f]{40}", text), f"{path.name}: name the source"
        assert re.search(r"app\.kubernetes\.io/version: 2\.\d+\.\d+", text), f"{path.name}: name the KEDA version"
    scaled = yaml.safe_load((CRDS / "keda.sh_scaledobjects.yaml").read_text(encoding="utf-8"))
    assert scaled["metadata"]["labels"]["app.kubernetes.io/version"] == "2.16.1"


# --------------------------------------------------------------------------- the worker container


def test_worker_runs_streams_worker_from_the_image() -> None:
    objects = render()
    container = _worker(objects)
    assert [*container["command"], *container["args"]][:4] == ["python", "-m", "streams", "worker"]
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert entry and yaml.safe_load(entry.group(1)) == container["command"], "command differs from the ENTRYPOINT"
    # Built as `llm-classify` (deploy/Dockerfile's comment); kustomize points it at a pinned registry tag.
    image = container["image"]
    assert _image_name(image).rsplit("/", 1)[-1] == "llm-classify", image
    assert ("@sha256:" in image or re.search(r":[\w.-]+$", image)) and not image.endswith(":latest"), image
    assert "-t llm-classify " in DOCKERFILE.read_text(encoding="utf-8")


def test_every_env_var_is_read_by_the_worker() -> None:
    objects = render()
    names = set(_manifest_env(objects))
    doc = tomllib.loads(_k8s_tasks(objects))
    task_vars = {name for name, _ in _task_doc_refs(doc)} | _api_key_envs(doc)
    unknown = sorted(names - set(ENV_DEFAULTS) - task_vars)
    assert not unknown, f"set in deployment.yaml but read by neither streams.settings nor the task file: {unknown}"
    assert {v.name for v in VARIABLES} == set(ENV_DEFAULTS)
    needed = {name for name, default in _task_doc_refs(doc) if default is None} | _api_key_envs(doc)
    assert not needed - names, f"the task file needs {sorted(needed - names)}; set them on the worker"


def test_worker_environment_passes_the_settings_parser_and_task_loader(tmp_path: Path) -> None:
    objects = render()
    env = _container_env(objects, tmp_path)
    settings = Settings.from_env(env)
    assert settings.web_host == "0.0.0.0", "probes and Prometheus reach the pod IP, not its loopback"
    assert settings.security_protocol == "SASL_SSL" and settings.sasl_password == "CHANGE-ME-kafka-password"
    registry = parse_tasks(Path(env["STREAMS_TASKS_FILE"]).read_text(encoding="utf-8"), "k8s tasks.toml", env)
    for task in registry.tasks.values():
        assert task.model.base_url == env["MODEL_BASE_URL"], "the endpoint comes from the manifest, not a default"
        if task.model.api_key_env:
            assert task.model.api_key(env) == "CHANGE-ME-model-api-key"
    # The API key reaches the worker from a Secret, never as a literal in the manifest.
    literal = {i["name"] for i in _worker(objects)["env"] if "value" in i}
    assert not _api_key_envs(tomllib.loads(_k8s_tasks(objects))) & literal


def test_probes_hit_worker_pages_on_its_web_port(tmp_path: Path) -> None:
    objects = render()
    container = _worker(objects)
    app = _worker_app(objects, tmp_path)
    pages = _worker_pages()
    assert {"/healthz", "/readyz", "/metrics"} <= pages, pages
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{probe} should ask {path}, asks {get['path']}"
        assert get["path"] in pages, f"{probe}: the worker serves no {get['path']}"
        assert _port_number(container, get["port"]) == app.conf.web_port, f"{probe} port is not the web port"
    assert str(app.conf.web_bind) == "0.0.0.0"
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness.get("initialDelaySeconds", 0) >= 5 and readiness["periodSeconds"] <= 15
    # A restart is far costlier than a missed probe: liveness gives a wedged loop about a minute.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 45
    assert "startupProbe" in container and container["startupProbe"]["failureThreshold"] >= 12


def test_metrics_service_reaches_the_web_port_of_every_worker(tmp_path: Path) -> None:
    objects = render()
    container = _worker(objects)
    web_port = _settings(objects, tmp_path).web_port
    service = _one(objects, "Service")
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == web_port
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in _worker_pages()
    ports = service["spec"]["ports"]
    assert len(ports) == 1 and _port_number(container, ports[0]["targetPort"]) == web_port
    assert ports[0]["port"] == web_port
    assert service["spec"].get("clusterIP") == "None", "headless: one target per worker"
    assert service["spec"].get("publishNotReadyAddresses") is True, "scrape workers while they rebalance"


def test_files_the_worker_reads_and_writes_are_mounted() -> None:
    objects = render()
    env, pod, container = _manifest_env(objects), _pod(objects), _worker(objects)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # The only places it writes are emptyDirs: Faust's data dir and /tmp.
    for path in (env["STREAMS_DATA_DIR"], "/tmp"):
        assert path in mounts, f"{path} is not mounted (the root file system is read-only)"
        assert "emptyDir" in volumes[mounts[path]["name"]], f"{path} should be an emptyDir"
        assert not mounts[path].get("readOnly")
    # The task file is the ConfigMap's, the password the Secret's, both read-only.
    assert tomllib.loads(_mounted_file(objects, env["STREAMS_TASKS_FILE"]))["task"]
    assert _mounted_file(objects, env["STREAMS_SASL_PASSWORD_FILE"]) == _example_secrets()["llm-classify-kafka"][
        "password"]
    for name in ("STREAMS_TASKS_FILE", "STREAMS_SASL_PASSWORD_FILE"):
        mount = next(m for p, m in mounts.items() if env[name].startswith(p.rstrip("/") + "/"))
        assert mount.get("readOnly") is True, f"{mount['mountPath']} should be mounted read-only"
    assert "STREAMS_SASL_PASSWORD" not in env, "the password comes from the file, not the environment"
    # fsGroup owns the secret files; the mode must let that group (the worker's) read them.
    secret = volumes["kafka-credentials"]["secret"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    assert secret.get("defaultMode", 0o644) & 0o040 and not secret.get("defaultMode", 0o644) & 0o007


def test_pod_runs_non_root_on_a_read_only_root_file_system() -> None:
    objects = render()
    pod, container = _pod(objects), _worker(objects)
    uid = re.search(r"--uid (\d+)", DOCKERFILE.read_text(encoding="utf-8"))
    assert uid, "deploy/Dockerfile creates no user with --uid"
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == int(uid.group(1)) != 0
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    own = container["securityContext"]
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"] and not own["capabilities"].get("add")
    assert pod.get("automountServiceAccountToken") is False
    assert _one(objects, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_resources_fit_one_worker_process_and_grace_covers_a_model_call(tmp_path: Path) -> None:
    objects = render()
    resources = _worker(objects)["resources"]
    for what in ("cpu", "memory"):
        request, limit = _quantity(resources["requests"][what]), _quantity(resources["limits"][what])
        assert 0 < request <= limit, f"{what}: request {request} and limit {limit}"
    # One worker process is about one core: request it, so the scheduler never packs two on one.
    assert _quantity(resources["requests"]["cpu"]) >= 1
    assert _quantity(resources["limits"]["memory"]) >= 512 * 2**20, "peak RSS was 231 MB over 1M requests"
    settings = _settings(objects, tmp_path)
    grace = _pod(objects)["terminationGracePeriodSeconds"]
    assert grace >= settings.model_timeout_s + 10, f"grace {grace}s cannot outlast a {settings.model_timeout_s}s call"


def test_selectors_match_the_worker_pods_and_keda_owns_the_replicas() -> None:
    objects = render()
    deployment = _one(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(_one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert selects(_one(objects, "Service")["spec"]["selector"])
    for spread in _pod(objects).get("topologySpreadConstraints", []):
        assert selects(spread["labelSelector"]["matchLabels"])
    assert "replicas" not in deployment["spec"], "KEDA's HPA sets the replicas; a fixed count fights it on apply"
    pdb = _one(objects, "PodDisruptionBudget")["spec"]
    assert pdb.get("maxUnavailable") == 1 and "minAvailable" not in pdb
    target = _scaled_object(objects)["spec"]["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment"), target["name"]) == (
        "apps/v1", "Deployment", deployment["metadata"]["name"])


# --------------------------------------------------------------------------- KEDA against the worker


def test_max_replicas_equal_the_partition_count(tmp_path: Path) -> None:
    objects = render()
    spec = _scaled_object(objects)["spec"]
    partitions = _settings(objects, tmp_path).partitions
    assert _worker_app(objects, tmp_path).conf.topic_partitions == partitions
    assert spec["maxReplicaCount"] == partitions, (
        f"maxReplicaCount {spec['maxReplicaCount']} != STREAMS_PARTITIONS {partitions}: one worker per partition")
    assert spec["minReplicaCount"] == 1
    assert _kafka_trigger(objects)["metadata"].get("allowIdleConsumers", "false") == "false"


def test_kafka_trigger_watches_the_workers_group_topic_and_brokers(tmp_path: Path) -> None:
    objects = render()
    settings = _settings(objects, tmp_path)
    app = _worker_app(objects, tmp_path)
    meta = _kafka_trigger(objects)["metadata"]
    assert meta["consumerGroup"] == app.conf.id == settings.app_id, "Faust's consumer group is the app id"
    assert meta["topic"] == settings.topic("requests") == settings.topic_prefix + "classify.requests"
    assert meta["bootstrapServers"] == settings.bootstrap_servers
    assert meta.get("offsetResetPolicy", "latest") == FAUST_TUNING["consumer_auto_offset_reset"]
    uses_sasl = settings.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")
    expected_sasl = _KEDA_SASL[settings.sasl_mechanism] if uses_sasl and settings.sasl_mechanism else "none"
    assert meta.get("sasl", "none") == expected_sasl
    uses_tls = settings.security_protocol in ("SSL", "SASL_SSL")
    assert meta.get("tls", "disable") == ("enable" if uses_tls else "disable")


def test_kafka_trigger_authenticates_with_the_workers_credentials() -> None:
    objects = render()
    trigger = _kafka_trigger(objects)
    auth = _one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert trigger["authenticationRef"].get("kind", "TriggerAuthentication") == "TriggerAuthentication"
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    username = next(i for i in _worker(objects)["env"] if i["name"] == "STREAMS_SASL_USERNAME")["valueFrom"]
    assert refs["username"] == (username["secretKeyRef"]["name"], username["secretKeyRef"]["key"])
    env, volumes = _manifest_env(objects), {v["name"]: v for v in _pod(objects)["volumes"]}
    mount = next(m for m in _worker(objects)["volumeMounts"]
                 if env["STREAMS_SASL_PASSWORD_FILE"].startswith(m["mountPath"].rstrip("/") + "/"))
    secret = volumes[mount["name"]]["secret"]
    filename = env["STREAMS_SASL_PASSWORD_FILE"].rsplit("/", 1)[1]
    key = next(i["key"] for i in secret["items"] if i["path"] == filename)
    assert refs["password"] == (secret["secretName"], key)


def test_lag_threshold_is_a_few_seconds_of_one_worker(tmp_path: Path) -> None:
    objects = render()
    scaled = _scaled_object(objects)
    latency = float(scaled["metadata"]["annotations"]["llm-classify/assumed-model-latency-seconds"])
    per_worker = min(_settings(objects, tmp_path).max_in_flight / latency, CPU_CEILING_PER_WORKER)
    seconds = int(_kafka_trigger(objects)["metadata"]["lagThreshold"]) / per_worker
    low, high = LAG_SECONDS
    assert low <= seconds <= high, (
        f"lagThreshold is {seconds:.1f} s of one worker ({per_worker:.0f}/s); make it {low:.0f}-{high:.0f} s")


# --------------------------------------------------------------------------- task file and secrets


def test_k8s_task_file_is_config_tasks_with_the_api_key_named() -> None:
    shipped = tomllib.loads(CONFIG_TASKS.read_text(encoding="utf-8"))
    k8s = tomllib.loads(_k8s_tasks(render()))
    assert _api_key_envs(k8s), "the Kubernetes task file should name the API key variable (api_key_env)"
    for task in k8s["task"]:
        task.get("model", {}).pop("api_key_env", None)
    assert k8s == shipped, "deploy/k8s/tasks.toml has drifted from config/tasks.toml; copy the change over"


def test_secrets_are_placeholders_and_never_applied() -> None:
    kust = _kustomization()
    assert SECRET_EXAMPLE.name not in kust["resources"], "applying the directory must not overwrite real secrets"
    objects = render()
    assert not [o for o in objects if o["kind"] == "Secret"]
    for name, values in _example_secrets().items():
        for key, value in values.items():
            assert "CHANGE-ME" in value, f"{name}/{key} in {SECRET_EXAMPLE.name} looks like a real value"
    # Every reference to a Secret names one of the example's (names and keys).
    for item in _worker(objects)["env"]:
        if "secretKeyRef" in item.get("valueFrom", {}):
            _secret_value(item["valueFrom"]["secretKeyRef"])
    for volume in _pod(objects)["volumes"]:
        if "secret" in volume:
            for item in volume["secret"].get("items", []):
                _secret_value({"name": volume["secret"]["secretName"], "key": item["key"]})
    for ref in _one(objects, "TriggerAuthentication")["spec"]["secretTargetRef"]:
        _secret_value(ref)


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml")))
def test_manifests_parse_as_yaml(path: str) -> None:
    assert _load_all(K8S / path)
