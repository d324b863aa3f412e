"""Tests of the deployment files against what the `fleet` binary really reads.

Run by scripts/deploy-check.sh (which installs the tools and renders the chart first):
    python scripts/deploy_check.py .tools/out
The configuration keys come from the built binary (`fleet config --format json`, the defaults of
FleetConfig), and every rendered configuration is loaded by that binary, so a key the chart or the
compose file invents, a value of the wrong type or a failing validation is caught here. Each checker
returns a list of problems; the tests run it on the real files and on deliberately broken copies
(so a checker that cannot fail would fail its own test).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / ".tools" / "out")
FLEET_BIN = os.environ.get("FLEET_BIN", str(ROOT / "target" / "debug" / "fleet"))
HELM = os.environ.get("HELM", "helm")
CHART = ROOT / "helm" / "lightning-fleet"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILES = [ROOT / "deploy" / "Dockerfile", ROOT / "deploy" / "Dockerfile.cuda"]

# Keys that hold credentials: never in a ConfigMap or a committed file's plain config.
SECRET_KEYS = {"rabbitmq.url", "rabbitmq.urls", "redis.url", "s3.access_key_id", "s3.secret_access_key", "http.api_keys", "client.api_key"}
# Secret keys a fleet server process needs from the Secret (client.api_key is the CLI's alone).
DISPATCHER_SECRETS = {"rabbitmq.url", "redis.url", "s3.access_key_id", "s3.secret_access_key", "http.api_keys"}
WORKER_SECRETS = {"rabbitmq.url", "redis.url", "s3.access_key_id", "s3.secret_access_key"}
# Environment variables the binaries read besides FLEET__SECTION__KEY (config.rs, cli.rs, main.rs,
# fleet-engine's hub loader, hf-hub).
OTHER_ENV = {
    "FLEET_CONFIG", "FLEET_API_KEYS", "FLEET_LOG", "FLEET_SERVER", "FLEET_API_KEY",
    "HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_ENDPOINT", "HF_TOKEN",
}
GPU = "nvidia.com/gpu"
# Stand-ins for the Secret when the chart uses an existing one (same keys as the chart's Secret).
EXTERNAL_SECRET = {
    "rabbitmq-url": "amqp://fleet:pw@rabbitmq:5672/%2f",
    "rabbitmq-management-url": "http://fleet:pw@rabbitmq:15672/%2f",
    "redis-url": "redis://redis:6379/0",
    "api-keys": "external-key-123=ops:admin",
}
PASSWORD_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@")


# ---------------------------------------------------------------- the binary's configuration


def run_fleet_config(env: dict[str, str]) -> dict:
    """`fleet config --format json` in a clean environment plus `env`; raises with fleet's message."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    proc = subprocess.run(
        [FLEET_BIN, "config", "--format", "json"],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ValueError(proc.stderr.strip() or f"fleet config exited {proc.returncode}")
    return json.loads(proc.stdout)


def leaf_keys(cfg: dict) -> dict[str, object]:
    """Dotted keys of every leaf (lists are leaves); model tables become `models.*.<field>`."""
    keys: dict[str, object] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            keys[prefix] = value

    for section, table in cfg.items():
        if section == "models":
            for model in table.values():
                for field, v in model.items():
                    keys[f"models.*.{field}"] = v
        else:
            walk(section, table)
    return keys


DEFAULT_CONFIG = run_fleet_config({})
CONFIG_KEYS = leaf_keys(DEFAULT_CONFIG)


def env_key(name: str) -> str | None:
    """FLEET__S3__ACCESS_KEY_ID -> s3.access_key_id (models.<name>.<field> -> models.*.<field>)."""
    if not name.startswith("FLEET__"):
        return None
    parts = name[len("FLEET__"):].lower().split("__")
    if parts[0] == "models" and len(parts) == 3:
        return f"models.*.{parts[2]}"
    return ".".join(parts)


def env_name_problems(where: str, names) -> list[str]:
    problems = []
    for name in names:
        key = env_key(name)
        if key is not None:
            if key not in CONFIG_KEYS:
                problems.append(f"{where}: {name} is not a configuration key (no `{key}` in `fleet config`)")
        elif name.startswith("FLEET") and name not in OTHER_ENV:
            problems.append(f"{where}: {name} is read by no fleet binary")
    return problems


# ---------------------------------------------------------------- rendered manifests


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def of_kind(docs, kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def component(doc: dict) -> str | None:
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def deployments(docs, comp: str) -> list[dict]:
    return [d for d in of_kind(docs, "Deployment") if component(d) == comp]


def main_container(dep: dict) -> dict:
    return dep["spec"]["template"]["spec"]["containers"][0]


def config_toml(docs) -> dict:
    maps = [d for d in of_kind(docs, "ConfigMap") if "fleet.toml" in d.get("data", {})]
    if len(maps) != 1:
        raise AssertionError(f"expected one ConfigMap with fleet.toml, found {len(maps)}")
    return tomllib.loads(maps[0]["data"]["fleet.toml"])


def secret_data(docs) -> dict[str, dict[str, str]]:
    out = {}
    for s in of_kind(docs, "Secret"):
        data = dict(s.get("stringData") or {})
        for k, v in (s.get("data") or {}).items():
            data[k] = base64.b64decode(v).decode()
        out[s["metadata"]["name"]] = data
    return out


def container_env(docs, container: dict, toml_path: str) -> tuple[dict[str, str], list[str]]:
    """The container's environment with secretKeyRefs resolved (stand-ins for an external Secret)."""
    secrets = secret_data(docs)
    env, problems = {}, []
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
            continue
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            problems.append(f"{container['name']}: {e['name']} has neither a value nor a secretKeyRef")
            continue
        data = secrets.get(ref["name"], EXTERNAL_SECRET if ref["name"] not in secrets else {})
        if ref["key"] in data:
            env[e["name"]] = data[ref["key"]]
        elif not ref.get("optional"):
            problems.append(f"{container['name']}: {e['name']} needs key {ref['key']} of Secret {ref['name']}")
    if "FLEET_CONFIG" in env:
        env["FLEET_CONFIG"] = toml_path
    return env, problems


def effective_configs(docs) -> dict[str, dict]:
    """Each fleet container (by Deployment name) loaded by the real binary with its ConfigMap and env."""
    toml_text = [d for d in of_kind(docs, "ConfigMap") if "fleet.toml" in d.get("data", {})][0]["data"]["fleet.toml"]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fleet.toml")
        Path(path).write_text(toml_text)
        for dep in of_kind(docs, "Deployment"):
            env, problems = container_env(docs, main_container(dep), path)
            if problems:
                raise AssertionError("; ".join(problems))
            out[dep["metadata"]["name"]] = run_fleet_config(env)
    return out


def configmap_problems(docs) -> list[str]:
    """Every key the binaries read is in the ConfigMap, or (credentials) in the pods' Secret env."""
    problems = []
    cfg = config_toml(docs)
    rendered = leaf_keys(cfg)
    for key, default in CONFIG_KEYS.items():
        if key in SECRET_KEYS or default is None:
            continue  # credentials come from the Secret; null defaults are optional keys
        if key.startswith("models.*."):
            for name, model in cfg.get("models", {}).items():
                if key.split(".")[-1] not in model:
                    problems.append(f"ConfigMap: models.{name}.{key.split('.')[-1]} is missing")
            if not cfg.get("models"):
                problems.append("ConfigMap: no models")
        elif key not in rendered:
            problems.append(f"ConfigMap: {key} is missing")
    for key in rendered:
        if key not in CONFIG_KEYS:
            problems.append(f"ConfigMap: {key} is not a configuration key")
    for dep in of_kind(docs, "Deployment"):
        needed = DISPATCHER_SECRETS if component(dep) == "dispatcher" else WORKER_SECRETS
        names = {e["name"] for e in main_container(dep).get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
        for key in needed:
            var = "FLEET_API_KEYS" if key == "http.api_keys" else "FLEET__" + key.upper().replace(".", "__")
            if var not in names:
                problems.append(f"{dep['metadata']['name']}: {key} is not set from the Secret ({var})")
    return problems


def secret_in_configmap_problems(docs) -> list[str]:
    problems = []
    cfg = config_toml(docs)
    for key in SECRET_KEYS:
        section, field = key.split(".")
        if field in cfg.get(section, {}):
            problems.append(f"ConfigMap: {key} is a credential")
    values = [v for data in secret_data(docs).values() for v in data.values() if len(v) >= 6]
    for cm in of_kind(docs, "ConfigMap"):
        for name, text in (cm.get("data") or {}).items():
            if PASSWORD_URL.search(text):
                problems.append(f"ConfigMap {cm['metadata']['name']}/{name}: a URL with a password")
            problems += [f"ConfigMap {cm['metadata']['name']}/{name}: holds a Secret value" for v in values if v in text]
    return problems


def gpu_problems(docs) -> list[str]:
    problems = []
    workers = deployments(docs, "worker")
    if not workers:
        problems.append("no worker Deployment")
    for dep in workers:
        name = dep["metadata"]["name"]
        pod = dep["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            limit = c.get("resources", {}).get("limits", {}).get(GPU)
            if not isinstance(limit, int) or limit < 1:
                problems.append(f"{name}/{c['name']}: no {GPU} limit")
        if not any(t.get("key") == GPU for t in pod.get("tolerations", [])):
            problems.append(f"{name}: no toleration for {GPU} taints")
        if not pod.get("nodeSelector") and not pod.get("affinity", {}).get("nodeAffinity"):
            problems.append(f"{name}: nothing keeps it on GPU nodes (nodeSelector / node affinity)")
    return problems


def worker_model(dep: dict) -> str:
    args = main_container(dep)["args"]
    return args[args.index("--model") + 1]


def keda_problems(docs, effective) -> list[str]:
    """One ScaledObject per autoscaled pool: rabbitmq trigger, protocol http, the pool's two queues and their lanes only."""
    problems = []
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(docs, "ScaledObject")}
    auths = {a["metadata"]["name"]: a for a in of_kind(docs, "TriggerAuthentication")}
    secrets = secret_data(docs)
    any_cfg = next(iter(effective.values()))
    prefix = any_cfg["rabbitmq"]["queue_prefix"]
    def pool_queues(model):
        shared = {f"{prefix}.{model}.{p}" for p in ("interactive", "bulk")}
        # every tenant's lane of them counts toward the backlog too
        return shared | {f"{q}@{t}" for q in shared for t in ("acme", "a.b_c-1")}

    shared = {f"{prefix}.{m}.{p}" for m in any_cfg["models"] for p in ("interactive", "bulk")}
    shared.add(any_cfg["rabbitmq"]["dead_letter_queue"])
    # names around the real ones, so that a regex without anchors or with an unescaped dot shows
    # (around the shared names only: `<queue>@acme.x` is a lane too, of tenant `acme.x`)
    near = {f"{q}.x" for q in shared} | {f"x{q}" for q in shared} | {q.replace(".", "x") for q in shared}
    # and lanes with no tenant, or one that is not a tenant name
    near |= {f"{prefix}.{m}.bulk@" for m in any_cfg["models"]} | {f"{prefix}.{m}.bulk@a/b" for m in any_cfg["models"]}
    all_queues = shared | near | set().union(*(pool_queues(m) for m in any_cfg["models"]))
    for dep in deployments(docs, "worker"):
        name = dep["metadata"]["name"]
        if "replicas" in dep["spec"] and name not in scaled:
            continue  # a fixed-size pool
        so = scaled.get(name)
        if so is None:
            problems.append(f"{name}: neither replicas nor a ScaledObject")
            continue
        spec = so["spec"]
        if "replicas" in dep["spec"]:
            problems.append(f"{name}: sets replicas although KEDA scales it")
        if not (0 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 0) and spec["maxReplicaCount"] >= 1):
            problems.append(f"{name}: bad min/max replica counts")
        triggers = spec.get("triggers", [])
        if len(triggers) != 1 or triggers[0].get("type") != "rabbitmq":
            problems.append(f"{name}: expected exactly one rabbitmq trigger")
            continue
        meta = triggers[0]["metadata"]
        if meta.get("protocol") != "http":
            problems.append(f"{name}: trigger protocol {meta.get('protocol')!r}, not http (unacked jobs would not count)")
        if meta.get("mode") != "QueueLength" or not str(meta.get("value", "")).isdigit() or int(meta["value"]) < 1:
            problems.append(f"{name}: trigger must be mode QueueLength with a positive value")
        want = pool_queues(worker_model(dep))
        if meta.get("useRegex") == "true":
            if meta.get("operation") != "sum":
                problems.append(f"{name}: a regex trigger must sum its queues")
            rx = re.compile(meta.get("queueName", ""))
            got = {q for q in all_queues if rx.search(q)}
        else:
            got = {meta.get("queueName")}
        if got != want:
            problems.append(f"{name}: trigger covers {sorted(got)}, want {sorted(want)}")
        if "host" in meta:
            problems.append(f"{name}: the RabbitMQ host (with credentials) is in the trigger, not a TriggerAuthentication")
        auth = auths.get(triggers[0].get("authenticationRef", {}).get("name"))
        refs = {r["parameter"]: r for r in (auth or {}).get("spec", {}).get("secretTargetRef", [])}
        if "host" not in refs:
            problems.append(f"{name}: no TriggerAuthentication giving the management host")
        else:
            host = secrets.get(refs["host"]["name"], EXTERNAL_SECRET).get(refs["host"]["key"], "")
            if not host.startswith(("http://", "https://")):
                problems.append(f"{name}: management host {host!r} is not an http(s) URL")
    return problems


def grace_problems(docs, effective) -> list[str]:
    """Grace period >= preStop + the worker's effective drain deadline (plus 10 s to hand jobs back)."""
    problems = []
    for dep in of_kind(docs, "Deployment"):
        name = dep["metadata"]["name"]
        pod = dep["spec"]["template"]["spec"]
        grace = pod.get("terminationGracePeriodSeconds", 30)
        pre = main_container(dep).get("lifecycle", {}).get("preStop", {})
        pre_s = int(pre["exec"]["command"][-1]) if "exec" in pre else int(pre.get("sleep", {}).get("seconds", 0))
        need = pre_s + 10
        if component(dep) == "worker":
            need += effective[name]["worker"]["drain_timeout_secs"]
        if grace < need:
            problems.append(f"{name}: terminationGracePeriodSeconds {grace} < {need} (preStop + drain + 10)")
    return problems


def dispatcher_problems(docs, effective) -> list[str]:
    problems = []
    deps = deployments(docs, "dispatcher")
    if len(deps) != 1:
        return [f"expected one dispatcher Deployment, found {len(deps)}"]
    dep = deps[0]
    c = main_container(dep)
    port = int(effective[dep["metadata"]["name"]]["http"]["listen"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if ports.get("http") != port:
        problems.append(f"dispatcher: container port http {ports.get('http')} != http.listen port {port}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("http", port):
            problems.append(f"dispatcher: {probe} must GET {path} on the http port")
    if c.get("args", [None])[0] != "dispatcher":
        problems.append("dispatcher: does not run `fleet dispatcher`")
    services = [s for s in of_kind(docs, "Service") if component(s) == "dispatcher"]
    if not services or services[0]["spec"]["ports"][0]["targetPort"] not in ("http", port):
        problems.append("dispatcher: no Service on its http port")
    hpas = [h for h in of_kind(docs, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]]
    if hpas and hpas[0]["spec"]["metrics"][0]["resource"]["name"] != "cpu":
        problems.append("dispatcher: the HPA does not scale on CPU")
    return problems


def broker_cluster_problems(docs, effective) -> list[str]:
    """Where the Secret lists a RabbitMQ cluster (`rabbitmq-urls`), every fleet process gets every node."""
    problems = []
    for secret in secret_data(docs).values():
        if "rabbitmq-urls" not in secret:
            continue
        # `fleet config` masks passwords: compare what follows the credentials.
        nodes = [u.rsplit("@", 1)[-1] for u in secret["rabbitmq-urls"].split(",")]
        for name, cfg in effective.items():
            if [u.rsplit("@", 1)[-1] for u in cfg["rabbitmq"]["urls"]] != nodes:
                problems.append(f"{name}: rabbitmq.urls {cfg['rabbitmq']['urls']} != the Secret's {nodes}")
    return problems


def pool_problems(docs, effective) -> list[str]:
    """Each worker runs a configured model, each configured model has a pool, each pool a PDB."""
    problems = []
    pdbs = of_kind(docs, "PodDisruptionBudget")
    served = set()
    for dep in deployments(docs, "worker"):
        name = dep["metadata"]["name"]
        args = main_container(dep)["args"]
        model = worker_model(dep)
        served.add(model)
        if args[0] != "worker" or model not in effective[name]["models"]:
            problems.append(f"{name}: runs {args}, model not configured")
        labels = dep["spec"]["template"]["metadata"]["labels"]
        if not any(all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())
                   and component(p) == "worker" for p in pdbs):
            problems.append(f"{name}: no PodDisruptionBudget")
        if effective[name]["worker"]["device"].split(":")[0] != "cuda":
            problems.append(f"{name}: worker.device is {effective[name]['worker']['device']}, not cuda")
    for model in next(iter(effective.values()))["models"]:
        if model not in served:
            problems.append(f"model {model} is configured but no worker pool serves it")
    return problems


def metrics_problems(docs) -> list[str]:
    """Worker metrics port matches worker.metrics_listen; ServiceMonitor and NetworkPolicy use it."""
    problems = []
    cfg = config_toml(docs)
    port = int(cfg.get("worker", {}).get("metrics_listen", "0.0.0.0:9464").rsplit(":", 1)[1])
    for dep in deployments(docs, "worker"):
        ports = {p["name"]: p["containerPort"] for p in main_container(dep).get("ports", [])}
        if ports.get("metrics") != port:
            problems.append(f"{dep['metadata']['name']}: metrics port {ports.get('metrics')} != {port}")
        probe = main_container(dep).get("livenessProbe", {}).get("httpGet")
        if probe and probe.get("port") not in ("metrics", port):
            problems.append(f"{dep['metadata']['name']}: liveness probe on port {probe.get('port')}, not the metrics port")
    for sm in of_kind(docs, "ServiceMonitor"):
        eps = {(e["port"], e.get("path")) for e in sm["spec"]["endpoints"]}
        if eps != {("http", "/metrics"), ("metrics", "/metrics")}:
            problems.append(f"ServiceMonitor: endpoints {sorted(eps)}")
    for np in of_kind(docs, "NetworkPolicy"):
        if component(np) != "worker":
            continue
        ingress = np["spec"].get("ingress", [])
        open_ports = [p.get("port") for rule in ingress for p in rule.get("ports", [{}])]
        if "Ingress" not in np["spec"].get("policyTypes", []) or open_ports != ["metrics"]:
            problems.append(f"NetworkPolicy {np['metadata']['name']}: workers must accept the metrics port only, got {open_ports}")
    return problems


# ---------------------------------------------------------------- compose and Dockerfiles


def dockerfile_env(path: Path) -> dict[str, str]:
    """ENV of the last stage (the runtime image)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages = re.split(r"(?m)^FROM ", text)
    env = {}
    for line in stages[-1].splitlines():
        if line.startswith("ENV "):
            for name, value in re.findall(r"(\w+)=(\S+)", line[4:]):
                env[name] = value
    return env


def compose_config(profile: str | None = None) -> dict:
    cmd = ["docker-compose", "-f", str(COMPOSE)] + (["--profile", profile] if profile else []) + ["config", "--format", "json"]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def fleet_services(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if str(s.get("image", "")).startswith("lightning-fleet")}


def compose_problems(compose: dict) -> list[str]:
    problems = []
    services = fleet_services(compose)
    if not services:
        return ["compose: no fleet services"]
    drain_max = 0
    for name, svc in services.items():
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        problems += env_name_problems(f"compose {name}", env)
        dockerfile = ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]
        full = {**dockerfile_env(dockerfile), **env}
        try:
            cfg = run_fleet_config({k: v for k, v in full.items() if k.startswith("FLEET")})
        except ValueError as e:
            problems.append(f"compose {name}: fleet refuses its configuration: {e}")
            continue
        command = svc.get("command") or []
        if command[:1] == ["worker"]:
            drain = cfg["worker"]["drain_timeout_secs"]
            drain_max = max(drain_max, drain)
            grace = parse_duration(svc.get("stop_grace_period", "10s"))
            if grace < drain + 10:
                problems.append(f"compose {name}: stop_grace_period {grace}s < worker.drain_timeout_secs {drain} + 10")
            model = command[command.index("--model") + 1]
            if model not in cfg["models"]:
                problems.append(f"compose {name}: model {model} not configured")
            wants_gpu = cfg["worker"]["device"].startswith("cuda")
            devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
            has_gpu = any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
            if wants_gpu != has_gpu:
                problems.append(f"compose {name}: device {cfg['worker']['device']} but GPU reservation {has_gpu}")
        if command[:1] == ["dispatcher"]:
            if not cfg["http"]["listen"].startswith("0.0.0.0:"):
                problems.append(f"compose {name}: the dispatcher listens on {cfg['http']['listen']}, unreachable from other containers")
            if not cfg["http"]["api_keys"]:
                problems.append(f"compose {name}: no API key")
        bucket = cfg["s3"]["bucket"]
        init = " ".join(compose["services"].get("minio-init", {}).get("command") or [])
        if f"/{bucket}" not in init:
            problems.append(f"compose {name}: bucket {bucket} is not created by minio-init")
    redis = " ".join(compose["services"]["redis"].get("command") or [])
    if "--appendonly yes" not in redis:
        problems.append("compose redis: append-only file is off")
    conf = next((v["source"] for v in compose["services"]["rabbitmq"].get("volumes", []) if v["target"].startswith("/etc/rabbitmq")), None)
    timeout = re.search(r"(?m)^consumer_timeout\s*=\s*(\d+)", Path(conf).read_text()) if conf else None
    if not timeout or int(timeout.group(1)) < max(30 * 60, drain_max) * 1000:
        problems.append("compose rabbitmq: consumer_timeout missing or shorter than 30 min / the drain deadline")
    return problems


def parse_duration(text: str | int) -> int:
    if isinstance(text, int):
        return text // 1_000_000_000 if text > 10_000 else text  # compose JSON gives nanoseconds
    total = 0
    for n, unit in re.findall(r"(\d+)([hms])", text):
        total += int(n) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


# ---------------------------------------------------------------- tests


RENDERED = sorted(OUT.glob("*.yaml"))


class Rendered(unittest.TestCase):
    """Every rendered variant: default values and helm/examples/*.yaml."""

    @classmethod
    def setUpClass(cls):
        cls.sets = {p.stem: load_docs(p) for p in RENDERED}
        cls.effective = {name: effective_configs(docs) for name, docs in cls.sets.items()}

    def check(self, fn, *, effective=False):
        for name, docs in self.sets.items():
            with self.subTest(values=name):
                args = (docs, self.effective[name]) if effective else (docs,)
                self.assertEqual(fn(*args), [])

    def test_variants_rendered(self):
        self.assertIn("default", self.sets)
        self.assertIn("multi-pool", self.sets)
        self.assertGreaterEqual(len(deployments(self.sets["multi-pool"], "worker")), 3)

    def test_every_config_key_is_rendered(self):
        self.check(configmap_problems)

    def test_configuration_loads_in_the_binary(self):
        for name, eff in self.effective.items():
            with self.subTest(values=name):
                self.assertTrue(eff)  # effective_configs raised if fleet refused any container's config

    def test_no_secret_in_a_configmap(self):
        self.check(secret_in_configmap_problems)

    def test_workers_have_gpu_limits(self):
        self.check(gpu_problems)

    def test_keda_trigger_on_the_pool_queues_over_http(self):
        for name, docs in self.sets.items():
            with self.subTest(values=name):
                self.assertEqual(keda_problems(docs, self.effective[name]), [])
        self.assertEqual(len(of_kind(self.sets["multi-pool"], "ScaledObject")), 3)
        self.assertEqual([s["spec"]["minReplicaCount"] for s in of_kind(self.sets["multi-pool"], "ScaledObject")].count(0), 1)

    def test_grace_period_covers_the_drain(self):
        self.check(grace_problems, effective=True)

    def test_dispatcher(self):
        self.check(dispatcher_problems, effective=True)

    def test_pools(self):
        self.check(pool_problems, effective=True)

    def test_broker_cluster_reaches_every_process(self):
        self.check(broker_cluster_problems, effective=True)
        effective = self.effective["external-cluster"]
        self.assertTrue(all(len(cfg["rabbitmq"]["urls"]) == 3 for cfg in effective.values()), effective.keys())

    def test_metrics_and_network_policy(self):
        self.check(metrics_problems)
        self.assertTrue(of_kind(self.sets["multi-pool"], "ServiceMonitor"))
        self.assertTrue(of_kind(self.sets["multi-pool"], "NetworkPolicy"))


class CheckersCatchBreakage(unittest.TestCase):
    """Each checker, given a broken copy of the multi-pool render, reports it."""

    @classmethod
    def setUpClass(cls):
        cls.docs = load_docs(OUT / "multi-pool.yaml")
        cls.effective = effective_configs(cls.docs)

    def broken(self, mutate):
        docs = copy.deepcopy(self.docs)
        mutate(docs)
        return docs

    def worker(self, docs, pool="h100-4step"):
        return next(d for d in deployments(docs, "worker") if d["metadata"]["labels"]["lightning-fleet/pool"] == pool)

    def test_broker_cluster_not_passed_on(self):
        docs = load_docs(OUT / "external-cluster.yaml")
        dispatcher = main_container(deployments(docs, "dispatcher")[0])
        dispatcher["env"] = [e for e in dispatcher["env"] if e["name"] != "FLEET__RABBITMQ__URLS"]
        self.assertTrue(broker_cluster_problems(docs, effective_configs(docs)))

    def test_gpu_limit_removed(self):
        def drop(docs):
            main_container(self.worker(docs))["resources"]["limits"].pop(GPU, None)
        self.assertTrue(gpu_problems(self.broken(drop)))

    def test_amqp_protocol(self):
        def amqp(docs):
            of_kind(docs, "ScaledObject")[0]["spec"]["triggers"][0]["metadata"]["protocol"] = "amqp"
        self.assertTrue(keda_problems(self.broken(amqp), self.effective))

    def test_queue_regex_too_wide(self):
        def wide(docs):
            of_kind(docs, "ScaledObject")[0]["spec"]["triggers"][0]["metadata"]["queueName"] = r"^fleet\..*"
        self.assertTrue(keda_problems(self.broken(wide), self.effective))

    def test_grace_shorter_than_drain(self):
        def short(docs):
            # a100-8step drains for 300 s (its workerConfig) and sleeps 10 s in preStop
            self.worker(docs, "a100-8step")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 300
        self.assertTrue(grace_problems(self.broken(short), self.effective))

    def test_key_missing_from_configmap(self):
        def drop(docs):
            cm = [d for d in of_kind(docs, "ConfigMap")][0]
            cm["data"]["fleet.toml"] = cm["data"]["fleet.toml"].replace("drain_timeout_secs = 180\n", "")
        self.assertIn("ConfigMap: worker.drain_timeout_secs is missing", configmap_problems(self.broken(drop)))

    def test_secret_env_missing(self):
        def drop(docs):
            c = main_container(self.worker(docs))
            c["env"] = [e for e in c["env"] if e["name"] != "FLEET__REDIS__URL"]
        self.assertTrue(configmap_problems(self.broken(drop)))

    def test_password_in_configmap(self):
        def leak(docs):
            cm = of_kind(docs, "ConfigMap")[0]
            leaked = '[rabbitmq]\nurl = "amqps://fleet:s3cr3t-amqp@rabbitmq.acme.internal:5671/fleet"\n'
            cm["data"]["fleet.toml"] = cm["data"]["fleet.toml"].replace("[rabbitmq]\n", leaked)
        self.assertTrue(secret_in_configmap_problems(self.broken(leak)))

    def test_unknown_key_is_refused_by_the_binary(self):
        def typo(docs):
            cm = of_kind(docs, "ConfigMap")[0]
            cm["data"]["fleet.toml"] = cm["data"]["fleet.toml"].replace("[worker]\n", "[worker]\nmax_batch = 4\n")
        with self.assertRaisesRegex(ValueError, "max_batch"):
            effective_configs(self.broken(typo))

    def test_unserved_model(self):
        docs = self.broken(lambda d: d.remove(self.worker(d, "l4-2step")))
        self.assertTrue(pool_problems(docs, self.effective))

    def test_worker_metrics_open_to_all_ports(self):
        def open_all(docs):
            np = [n for n in of_kind(docs, "NetworkPolicy") if component(n) == "worker"][0]
            np["spec"]["ingress"] = [{}]
        self.assertTrue(metrics_problems(self.broken(open_all)))


class ChartRefuses(unittest.TestCase):
    """helm template fails on values that would break the fleet."""

    def refuses(self, *sets: str, message: str):
        proc = subprocess.run([HELM, "template", "fleet", str(CHART), *[a for s in sets for a in ("--set", s)]],
                              capture_output=True, text=True, check=False)
        self.assertNotEqual(proc.returncode, 0, f"helm accepted {sets}")
        self.assertIn(message, proc.stderr)

    def test_credential_in_config(self):
        self.refuses("config.rabbitmq.url=amqp://u:p@h/", message="config.rabbitmq.url is a credential")

    def test_pool_with_unknown_model(self):
        self.refuses("workers.pools[0].name=x", "workers.pools[0].model=nope", message='"nope" is not in config.models')

    def test_model_without_pool(self):
        self.refuses("config.models.extra.source=tiny", message="config.models.extra has no worker pool")

    def test_worker_config_typo(self):
        self.refuses("workers.defaults.workerConfig.max_batch=4", message="workerConfig.max_batch: not a worker")


class Compose(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.compose = compose_config("cpu")

    def test_services_configure_real_keys_and_load(self):
        self.assertEqual(compose_problems(self.compose), [])
        self.assertEqual({"dispatcher", "worker", "worker-cpu"}, set(fleet_services(self.compose)))

    def test_default_profile_has_no_cpu_worker(self):
        self.assertNotIn("worker-cpu", compose_config()["services"])

    def test_env_typo_is_caught(self):
        broken = copy.deepcopy(self.compose)
        broken["services"]["worker"]["environment"]["FLEET__WORKER__MAX_BATCH"] = "4"
        self.assertTrue(any("FLEET__WORKER__MAX_BATCH is not" in p for p in compose_problems(broken)))

    def test_short_grace_and_missing_gpu_are_caught(self):
        broken = copy.deepcopy(self.compose)
        broken["services"]["worker"]["stop_grace_period"] = "30s"
        del broken["services"]["worker"]["deploy"]
        self.assertEqual(len([p for p in compose_problems(broken) if p.startswith("compose worker:")]), 2)

    def test_dockerfiles_set_real_keys(self):
        for dockerfile in DOCKERFILES:
            with self.subTest(dockerfile=dockerfile.name):
                env = dockerfile_env(dockerfile)
                self.assertTrue(env)
                self.assertEqual(env_name_problems(dockerfile.name, env), [])
                run_fleet_config(env)


if __name__ == "__main__":
    result = unittest.main(argv=[sys.argv[0], "-v"], exit=False).result
    failed = len(result.failures) + len(result.errors)
    print(f"deploy-check: {result.testsRun - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
