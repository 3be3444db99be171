#!/usr/bin/env python3
"""Checks the Kubernetes manifests of deploy/kubernetes/ against what sample_server's code
expects: the variables it reads and the values it accepts, the port it listens on, the paths of
its probes, how long it drains, which settings are secrets.

    check_kubernetes.py MANIFEST_DIR SOURCE_ROOT              check; exit 1 listing every failure
    check_kubernetes.py --self-test MANIFEST_DIR SOURCE_ROOT  the manifests pass, and each mutation
                                                              (of a manifest or of the code) makes
                                                              its check fail

MANIFEST_DIR is deploy/kubernetes (its kustomization.yaml and the files it lists); SOURCE_ROOT
is the repository, whose code the checks read rather than repeat:

- sample_server/config.hpp: every CHAT_* setting (`{"CHAT_...",`), the values it accepts
  (`one_of(n, v, {...})`, `parse_int<T>(n, v, MIN, MAX)`), its default (struct config), the
  variables it falls back to (OPENAI_API_KEY, ...), and which are secrets (those whose shown value
  is always empty, as --help shows them).
- sample_server/main.cpp: what counts as a loopback address (`is_loopback`).
- sample_server/key_directory.hpp: the databases that can keep API keys (CHAT_AUTH=keys).
- include/chatkit/service.hpp: the paths of /health and /ready.
- adapters/beast/include/chatkit/beast_server.hpp: how long requests in flight may finish after
  the listener closes (`drain_timeout`), and that CHAT_LOOPS=0 counts the machine's cores.
- plugins/otel/include/chatkit/*.hpp, plugins/aws/include/chatkit/aws/*.hpp,
  plugins/dynamodb/include/chatkit/*.hpp, sample_server/*.hpp: the OTEL_* and AWS_* variables
  read besides CHAT_*.

Needs python3 with PyYAML (Debian: python3-yaml).
"""

import base64
import copy
import glob
import os
import re
import sys
import urllib.parse

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("check_kubernetes.py needs PyYAML: apt-get install python3-yaml (or pip install pyyaml)")

KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_-]{8,}|sk-ant-[A-Za-z0-9_-]{8,}|AIza[0-9A-Za-z_-]{20,}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|ck-[A-Za-z0-9_-]{20,}")
SECRET_NAME = re.compile(r"(^|_)(API_KEY|KEY|TOKEN|SECRET|PASSWORD|SECRET_ACCESS_KEY)$")
# A collector's headers may carry its API key (docs/observability.md: never logged).
SECRET_VARIABLES = {"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"}
PLACEHOLDER = "REPLACE_WITH"
# A replica whose /health answers 503 because PostgreSQL or the provider is down is not cured by a
# restart (without PostgreSQL it does not even start): liveness must outlast such an outage.
LIVENESS_TOLERANCE_S = 120
# Kubernetes' defaults for a probe's timing.
PROBE_DEFAULTS = {"periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3}
K8S_DEFAULT_GRACE_S = 30


class Failure(Exception):
    pass


# --- the code: what the checks compare the manifests with -------------------------------------

SOURCE_FILES = {
    "config": "sample_server/config.hpp",
    "main": "sample_server/main.cpp",
    "keys": "sample_server/key_directory.hpp",
    "service": "include/chatkit/service.hpp",
    "beast": "adapters/beast/include/chatkit/beast_server.hpp",
}
# Read for the names of the variables they read (OTEL_*, AWS_*), besides CHAT_*.
VARIABLE_SOURCES = ["plugins/otel/include/chatkit/*.hpp", "plugins/aws/include/chatkit/aws/*.hpp", "sample_server/*.hpp",
                    "plugins/dynamodb/include/chatkit/*.hpp"]


def read_sources(root):
    texts = {}
    for key, rel in SOURCE_FILES.items():
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                texts[key] = f.read()
        except OSError as e:
            raise SystemExit(f"cannot read {rel} under {root}: {e}")
    texts["variables"] = ""
    for pattern in VARIABLE_SOURCES:
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            with open(path, encoding="utf-8") as f:
                texts["variables"] += f.read()
    return texts


def cpp_int(text):
    """A C++ integer literal or `1u << 30` as an int."""
    text = text.strip().replace("'", "")
    shift = re.fullmatch(r"(-?\d+)[uUlL]*\s*<<\s*(\d+)", text)
    if shift:
        return int(shift.group(1)) << int(shift.group(2))
    return int(re.sub(r"[uUlL]+$", "", text))


def settings_of(config_text):
    """{CHAT_NAME: {"one_of": [...] or None, "range": (min, max) or None, "empty_ok": bool,
    "secret": bool, "fallbacks": [...]}} from the table of settings()."""
    body = re.search(r"static const std::vector<setting> table = \{\n(.*?)\n    \};\n", config_text, re.S)
    if not body:
        raise Failure("found no `static const std::vector<setting> table = {` in sample_server/config.hpp: has it moved?")
    text = body.group(1)
    starts = [(m.start(), m.group(1)) for m in re.finditer(r'\{"(CHAT_[A-Z0-9_]+)",', text)]
    if not starts:
        raise Failure("found no `{\"CHAT_...\",` setting in sample_server/config.hpp")
    out = {}
    for i, (start, name) in enumerate(starts):
        chunk = text[start:starts[i + 1][0] if i + 1 < len(starts) else len(text)]
        one_of = re.search(r"one_of\(n, v, \{([^}]*)\}\)", chunk)
        rng = re.search(r"parse_int<[^>]+>\(n, v, ([^,]+), ([^)]+)\)", chunk)
        fallbacks = re.search(r'\}\s*,\s*"([A-Z][A-Z0-9_]*)"(?:\s*,\s*"([A-Z][A-Z0-9_]*)")?\s*\},?\s*$', chunk.strip())
        out[name] = {
            "one_of": re.findall(r'"([^"]*)"', one_of.group(1)) if one_of else None,
            "range": (cpp_int(rng.group(1)), cpp_int(rng.group(2))) if rng else None,
            "empty_ok": bool(re.search(r"v\.empty\(\)\s*\?", chunk)),
            # --help shows a secret as nothing, whatever it is: `[](const config&) { return std::string{}; }`
            "secret": bool(re.search(r"\[\]\(const config&\) \{ return std::string\{\}; \}", chunk)),
            "fallbacks": [f for f in (fallbacks.groups() if fallbacks else ()) if f],
        }
    return out


def defaults_of(config_text):
    """{CHAT_NAME: default text} from struct config's member initialisers (`int port = 8000;`,
    `std::chrono::seconds drain_delay{5};`)."""
    body = re.search(r"struct config \{\n(.*?)\n\};", config_text, re.S)
    if not body:
        raise Failure("found no `struct config {` in sample_server/config.hpp")
    out = {}
    for m in re.finditer(r"^\s+[\w:<>]+\s+(\w+)\s*(?:=\s*([^;]+)|\{([^}]*)\});", body.group(1), re.M):
        value = (m.group(2) if m.group(2) is not None else m.group(3)).strip()
        out["CHAT_" + m.group(1).upper()] = value[1:-1] if value.startswith('"') and value.endswith('"') else value
    return out


def facts_of(texts):
    facts = {"settings": settings_of(texts["config"]), "defaults": defaults_of(texts["config"])}
    # The non-CHAT variables: the settings' fallbacks and the OTEL_* and AWS_* names the code reads.
    known = {f for s in facts["settings"].values() for f in s["fallbacks"]}
    known |= set(re.findall(r'"((?:OTEL|AWS)_[A-Z0-9_]+)"', texts["variables"]))
    facts["other_variables"] = known
    facts["secret_variables"] = {n for n, s in facts["settings"].items() if s["secret"]} | {
        f for s in facts["settings"].values() if s["secret"] for f in s["fallbacks"]}
    # The probe paths: the routes of handle_health() and handle_ready().
    paths = dict((handler, path) for path, handler in
                 re.findall(r'req\.path == "(/[^"]*)"\)[^\n]*handle_(health|ready)\(\)', texts["service"]))
    if set(paths) != {"health", "ready"}:
        raise Failure("found no `req.path == \"/...\"` routing to handle_health() and handle_ready() in include/chatkit/service.hpp")
    facts["health_path"], facts["ready_path"] = paths["health"], paths["ready"]
    drain = re.search(r"std::chrono::seconds drain_timeout\{(\d+)\};", texts["beast"])
    if not drain:
        raise Failure("found no `std::chrono::seconds drain_timeout{N};` in beast_server.hpp: has it moved?")
    facts["drain_timeout"] = int(drain.group(1))
    facts["loops_count_cores"] = re.search(r"options_\.loops \? options_\.loops : [^;]*hardware_concurrency\(\)", texts["beast"]) is not None
    loopback = re.search(r"static bool is_loopback\(std::string_view host\) \{\s*return ([^;]+);", texts["main"])
    if not loopback:
        raise Failure("found no `is_loopback(std::string_view host)` in sample_server/main.cpp: has it moved?")
    facts["loopback_exact"] = set(re.findall(r'host == "([^"]+)"', loopback.group(1)))
    facts["loopback_prefixes"] = set(re.findall(r'host\.starts_with\("([^"]+)"\)', loopback.group(1)))
    body = re.search(r"inline key_directory_type make_key_directory\(.*?\n\}\n", texts["keys"], re.S)
    if not body:
        raise Failure("found no make_key_directory() in sample_server/key_directory.hpp: has it moved?")
    facts["key_databases"] = set(re.findall(r'database_url\.starts_with\("([a-z]+:)"\)', body.group(0)))
    if "is_postgres_url(c.database_url)" in body.group(0):
        postgres = re.search(r"inline bool is_postgres_url\(std::string_view url\) \{\s*return ([^;]+);", texts["config"])
        if not postgres:
            raise Failure("found no is_postgres_url() in sample_server/config.hpp: has it moved?")
        facts["key_databases"] |= set(re.findall(r'starts_with\("([a-z]+:)//"\)', postgres.group(1)))
    return facts


# --- the manifests --------------------------------------------------------------------------------

def load_manifests(directory):
    """{"kustomization": the kustomization, "files": {name: [objects]}, "present": [yaml files]}."""
    with open(os.path.join(directory, "kustomization.yaml"), encoding="utf-8") as f:
        kustomization = yaml.safe_load(f)
    files = {}
    for name in kustomization.get("resources") or []:
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            files[name] = [d for d in yaml.safe_load_all(f) if d is not None]
    present = sorted(os.path.basename(p) for p in glob.glob(os.path.join(directory, "*.yaml")) + glob.glob(os.path.join(directory, "*.yml")))
    return {"kustomization": kustomization, "files": files, "present": present}


def objects(m, kind=None):
    return [o for docs in m["files"].values() for o in docs if isinstance(o, dict) and (kind is None or o.get("kind") == kind)]


def the_one(m, kind):
    found = objects(m, kind)
    if len(found) != 1:
        raise Failure(f"expected exactly one {kind}, found {len(found)}")
    return found[0]


def named(m, kind, name):
    for o in objects(m, kind):
        if (o.get("metadata") or {}).get("name") == name:
            return o
    raise Failure(f"no {kind} named {name!r} among the manifests")


def container(m):
    pod = the_one(m, "Deployment").get("spec", {}).get("template", {}).get("spec", {})
    containers = pod.get("containers") or []
    if len(containers) != 1:
        raise Failure(f"the Deployment's pod has {len(containers)} containers, not the one sample_server")
    return pod, containers[0]


def secret_values(secret):
    values = dict((secret.get("stringData") or {}).items())
    for k, v in (secret.get("data") or {}).items():
        try:
            values.setdefault(k, base64.b64decode(v).decode("utf-8"))
        except Exception:
            raise Failure(f"Secret {secret['metadata']['name']}: data.{k} is not base64 of UTF-8")
    return values


def environment(m):
    """{NAME: (value, source)} as the container sees it, source being "configmap", "secret" or
    "literal"; `env` entries win over `envFrom`, and a later envFrom over an earlier one."""
    _, c = container(m)
    env = {}
    for src in c.get("envFrom") or []:
        if src.get("prefix"):
            raise Failure(f"envFrom with prefix {src['prefix']!r}: sample_server reads the names as they are")
        if "configMapRef" in src:
            cm = named(m, "ConfigMap", src["configMapRef"].get("name"))
            for k, v in (cm.get("data") or {}).items():
                env[k] = (v, "configmap")
        elif "secretRef" in src:
            for k, v in secret_values(named(m, "Secret", src["secretRef"].get("name"))).items():
                env[k] = (v, "secret")
        else:
            raise Failure(f"an envFrom entry that is neither configMapRef nor secretRef: {src}")
    for e in c.get("env") or []:
        name = e.get("name")
        if "value" in e:
            env[name] = (e["value"], "literal")
        elif "secretKeyRef" in (e.get("valueFrom") or {}):
            ref = e["valueFrom"]["secretKeyRef"]
            values = secret_values(named(m, "Secret", ref.get("name")))
            if ref.get("key") not in values and not ref.get("optional"):
                raise Failure(f"{name} takes the key {ref.get('key')!r}, which Secret {ref.get('name')} lacks")
            env[name] = (values.get(ref.get("key"), ""), "secret")
        elif "configMapKeyRef" in (e.get("valueFrom") or {}):
            ref = e["valueFrom"]["configMapKeyRef"]
            data = named(m, "ConfigMap", ref.get("name")).get("data") or {}
            if ref.get("key") not in data and not ref.get("optional"):
                raise Failure(f"{name} takes the key {ref.get('key')!r}, which ConfigMap {ref.get('name')} lacks")
            env[name] = (data.get(ref.get("key"), ""), "configmap")
        else:
            raise Failure(f"{name} is set neither by value, secretKeyRef nor configMapKeyRef")
    return env


def setting(m, facts, name):
    """The value of a CHAT_* setting the container gets, else its default in the code."""
    env = environment(m)
    if name in env:
        return env[name][0]
    return facts["defaults"].get(name, "")


def port_number(c, port):
    """A probe's or Service's port (a number, or the name of one of the container's ports)."""
    if isinstance(port, int):
        return port
    for p in c.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    raise Failure(f"port {port!r} names none of the container's ports")


def url_password(url):
    """The password of a postgresql:// or redis:// URL (user info or a password= parameter)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        return parts.password
    return (urllib.parse.parse_qs(parts.query).get("password") or [None])[0]


# --- the checks -----------------------------------------------------------------------------------

CHECKS = []


def check(check_id):
    def register(fn):
        CHECKS.append((check_id, fn))
        return fn
    return register


@check("kustomization")
def _(m, facts):
    listed = m["kustomization"].get("resources") or []
    others = [f for f in m["present"] if f not in ("kustomization.yaml", "kustomization.yml")]
    if sorted(listed) != sorted(others):
        raise Failure(f"kustomization.yaml lists {sorted(listed)}, but the directory holds {others}: "
                      f"`kubectl apply -k` would apply a different set")
    for name, docs in m["files"].items():
        for o in docs:
            if not isinstance(o, dict) or not o.get("apiVersion") or not o.get("kind") or not (o.get("metadata") or {}).get("name"):
                raise Failure(f"{name}: an object without apiVersion, kind or metadata.name")
    for kind in ("Deployment", "Service"):
        the_one(m, kind)


@check("references")
def _(m, facts):
    environment(m)  # every envFrom and valueFrom names an object (and key) of the manifests
    pod, c = container(m)
    if not c.get("envFrom") and not c.get("env"):
        raise Failure("the container gets no environment: sample_server would run on its defaults")


@check("env-known-variables")
def _(m, facts):
    env = environment(m)
    with_config = "CHAT_CONFIG" in env
    unknown = []
    for name, (_, source) in env.items():
        if name in facts["settings"] or name in facts["other_variables"]:
            continue
        if any(p.endswith("_") and name.startswith(p) for p in facts["other_variables"]):
            continue  # AWS_ENDPOINT_URL_<SERVICE>
        # A CHAT_CONFIG file may name any variable for a provider's key (api_key_env).
        if with_config and source == "secret" and not name.startswith("CHAT_"):
            continue
        unknown.append(name)
    if unknown:
        raise Failure(f"the container gets {sorted(unknown)}, which sample_server does not read (see sample_server --help)")


@check("env-strings")
def _(m, facts):
    # YAML reads 8000 as a number and off as false; Kubernetes wants strings in a ConfigMap's data,
    # a Secret's stringData and an env value, and refuses the object otherwise.
    for kind, field in (("ConfigMap", "data"), ("Secret", "stringData")):
        for o in objects(m, kind):
            for k, v in (o.get(field) or {}).items():
                if not isinstance(v, str):
                    raise Failure(f"{kind} {o['metadata']['name']}: {k} is {v!r} ({type(v).__name__}), not a string: quote it")
    _, c = container(m)
    for e in c.get("env") or []:
        if "value" in e and not isinstance(e["value"], str):
            raise Failure(f"env {e.get('name')} is {e['value']!r}, not a string: quote it")


@check("env-allowed-values")
def _(m, facts):
    for name, (value, _) in environment(m).items():
        s = facts["settings"].get(name)
        if s is None or not isinstance(value, str):
            continue
        if s["one_of"] is not None and value not in s["one_of"]:
            raise Failure(f"{name}={value!r}: sample_server accepts only {s['one_of']}")
        if s["range"] is not None and not (s["empty_ok"] and value == ""):
            lo, hi = s["range"]
            if not re.fullmatch(r"\d+", value) or not lo <= int(value) <= hi:
                raise Failure(f"{name}={value!r}: sample_server accepts an integer from {lo} to {hi}")
    db = setting(m, facts, "CHAT_DATABASE_URL")
    if not (db == "none" or db.startswith(("sqlite:", "dynamodb://", "postgresql://", "postgres://"))):
        raise Failure(f"CHAT_DATABASE_URL={db!r} is none of sqlite:PATH, dynamodb://TABLE, postgresql://...")
    redis = setting(m, facts, "CHAT_REDIS_URL")
    if redis and not redis.startswith(("redis://", "rediss://")):
        raise Failure(f"CHAT_REDIS_URL={redis!r}: only redis:// and rediss:// (TLS) are accepted")
    for name in facts["settings"]:
        if name.endswith("_BASE_URL"):
            value = setting(m, facts, name)
            if value and not value.startswith(("http://", "https://")):
                raise Failure(f"{name}={value!r} must start with http:// or https://")


@check("starts-up")
def _(m, facts):
    # The combinations sample_server refuses at start-up (a replica that exits, over and over).
    get = lambda n: setting(m, facts, n)  # noqa: E731
    if get("CHAT_AUTH") == "keys" and not get("CHAT_DATABASE_URL").startswith(tuple(facts["key_databases"])):
        raise Failure(f"CHAT_AUTH=keys keeps API keys in the database, which must start with one of "
                      f"{sorted(facts['key_databases'])} (sample_server/key_directory.hpp); it is "
                      f"{get('CHAT_DATABASE_URL').split('://')[0]}://...: the replicas would not start")
    if get("CHAT_ADMIN_KEY") and get("CHAT_AUTH") != "keys":
        raise Failure("CHAT_ADMIN_KEY without CHAT_AUTH=keys: sample_server refuses to start")
    if get("CHAT_METRICS_PORT") != "-1" and get("CHAT_METRICS_PORT") != "":
        if get("CHAT_METRICS") != "on":
            raise Failure("CHAT_METRICS_PORT with CHAT_METRICS=off: sample_server refuses to start")
        if get("CHAT_METRICS_PORT") == get("CHAT_PORT"):
            raise Failure("CHAT_METRICS_PORT equals CHAT_PORT: sample_server refuses to start")
    if get("CHAT_LIMITS") == "shared" and not get("CHAT_REDIS_URL") and not get("CHAT_DATABASE_URL").startswith("dynamodb:"):
        raise Failure("CHAT_LIMITS=shared without CHAT_REDIS_URL or a dynamodb:// database: sample_server refuses to start")
    if get("CHAT_CONFIG") and (get("CHAT_PROVIDER") not in ("", "auto") or get("CHAT_MODEL")):
        raise Failure("CHAT_CONFIG with CHAT_PROVIDER or CHAT_MODEL: sample_server refuses to start")


@check("fleet-shared-state")
def _(m, facts):
    replicas = the_one(m, "Deployment").get("spec", {}).get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 2:
        raise Failure(f"replicas is {replicas!r}: a fleet has two or more")
    db = setting(m, facts, "CHAT_DATABASE_URL")
    if not db.startswith(("postgresql://", "postgres://", "dynamodb://")):
        raise Failure(f"CHAT_DATABASE_URL is {db!r}: each replica would keep its own history; a fleet shares "
                      f"PostgreSQL (or DynamoDB)")
    if not setting(m, facts, "CHAT_REDIS_URL"):
        raise Failure("no CHAT_REDIS_URL: each replica would cache answers for itself alone")


@check("host")
def _(m, facts):
    host = setting(m, facts, "CHAT_HOST")
    if host in facts["loopback_exact"] or any(host.startswith(p) for p in facts["loopback_prefixes"]):
        raise Failure(f"CHAT_HOST is {host!r}, a loopback address: neither the probes nor the Service could reach it")


@check("ports")
def _(m, facts):
    _, c = container(m)
    port = setting(m, facts, "CHAT_PORT")
    if not re.fullmatch(r"[1-9]\d*", port):
        raise Failure(f"CHAT_PORT is {port!r}: the probes and the Service need a fixed port")
    port = int(port)
    container_ports = [p.get("containerPort") for p in c.get("ports") or []]
    if port not in container_ports:
        raise Failure(f"CHAT_PORT {port} is not a containerPort of the container ({container_ports})")
    metrics = setting(m, facts, "CHAT_METRICS_PORT")
    metrics = int(metrics) if re.fullmatch(r"\d+", metrics or "") else None
    if metrics is not None and metrics not in container_ports:
        raise Failure(f"CHAT_METRICS_PORT {metrics} is not a containerPort of the container ({container_ports})")
    service = the_one(m, "Service")
    targets = [port_number(c, p.get("targetPort", p.get("port"))) for p in service.get("spec", {}).get("ports") or []]
    if not targets or any(t != port for t in targets):
        raise Failure(f"the Service sends to {targets}, not to CHAT_PORT {port}"
                      + (" (the metrics port serves /metrics alone, to anyone, with no key)" if metrics in targets else ""))


@check("probes")
def _(m, facts):
    _, c = container(m)
    port = int(setting(m, facts, "CHAT_PORT"))
    for probe_name, path in (("readinessProbe", facts["ready_path"]), ("livenessProbe", facts["health_path"])):
        probe = c.get(probe_name)
        get = (probe or {}).get("httpGet")
        if not get:
            raise Failure(f"no {probe_name} with httpGet (on {path})")
        if get.get("path") != path:
            raise Failure(f"{probe_name} asks for {get.get('path')!r}, not {path!r}")
        if port_number(c, get.get("port")) != port:
            raise Failure(f"{probe_name} asks port {get.get('port')!r}, not CHAT_PORT {port}"
                          " (the metrics port answers 404 to anything but /metrics)")
        if get.get("scheme", "HTTP") != "HTTP":
            raise Failure(f"{probe_name} uses {get.get('scheme')}: sample_server speaks plain HTTP")


@check("probe-timing")
def _(m, facts):
    _, c = container(m)
    timing = lambda probe, key: (c.get(probe) or {}).get(key, PROBE_DEFAULTS[key])  # noqa: E731
    drain = int(setting(m, facts, "CHAT_DRAIN_DELAY"))
    noticed = timing("readinessProbe", "periodSeconds") * timing("readinessProbe", "failureThreshold") \
        + timing("readinessProbe", "timeoutSeconds")
    if noticed > drain:
        raise Failure(f"the readiness probe may take {noticed} s to see /ready at 503, longer than CHAT_DRAIN_DELAY "
                      f"({drain} s): the listener would close first")
    tolerance = timing("livenessProbe", "periodSeconds") * timing("livenessProbe", "failureThreshold")
    if tolerance < LIVENESS_TOLERANCE_S:
        raise Failure(f"the liveness probe restarts a replica after {tolerance} s of /health failing; it answers 503 "
                      f"while PostgreSQL or the provider is down, which a restart does not cure: allow "
                      f"{LIVENESS_TOLERANCE_S} s at least")


@check("grace-period")
def _(m, facts):
    pod, _ = container(m)
    grace = pod.get("terminationGracePeriodSeconds", K8S_DEFAULT_GRACE_S)
    drain = int(setting(m, facts, "CHAT_DRAIN_DELAY"))
    needed = drain + facts["drain_timeout"]
    if not isinstance(grace, int) or grace <= needed:
        raise Failure(f"terminationGracePeriodSeconds is {grace}: SIGKILL would come before CHAT_DRAIN_DELAY ({drain} s) "
                      f"plus the {facts['drain_timeout']} s requests in flight may take (beast_server.hpp) are over")


@check("secrets")
def _(m, facts):
    for name, (value, source) in environment(m).items():
        secret = name in facts["secret_variables"] or name in SECRET_VARIABLES or (SECRET_NAME.search(name) and not name.endswith("_ARN"))
        if name in ("CHAT_DATABASE_URL", "CHAT_REDIS_URL") and isinstance(value, str) and url_password(value):
            secret = True
        if secret and source != "secret":
            where = "the ConfigMap" if source == "configmap" else "a value written in the Deployment"
            raise Failure(f"{name} comes from {where}, not a Secret: it holds a password or key")
        if isinstance(value, str) and KEY_LIKE.search(value):
            raise Failure(f"{name} holds what looks like a real key")
    for o in objects(m, "Secret"):
        for k, v in secret_values(o).items():
            if v and PLACEHOLDER not in v:
                raise Failure(f"Secret {o['metadata']['name']}: {k} is not a placeholder ({PLACEHOLDER}...): "
                              f"a real secret must not be committed")
    for o in objects(m, "ConfigMap"):
        for k, v in (o.get("data") or {}).items():
            if isinstance(v, str) and (KEY_LIKE.search(v) or PLACEHOLDER in v):
                raise Failure(f"ConfigMap {o['metadata']['name']}: {k} holds a key or a secret's placeholder")


@check("selectors")
def _(m, facts):
    deployment = the_one(m, "Deployment")
    labels = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {}
    selector = deployment.get("spec", {}).get("selector", {})
    if set(selector) - {"matchLabels"} or not selector.get("matchLabels"):
        raise Failure("the Deployment's selector is not plain matchLabels")
    for kind, sel in [("Deployment", selector["matchLabels"]), ("Service", the_one(m, "Service").get("spec", {}).get("selector"))] + [
            (f"PodDisruptionBudget {p['metadata']['name']}", (p.get("spec", {}).get("selector") or {}).get("matchLabels"))
            for p in objects(m, "PodDisruptionBudget")]:
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            raise Failure(f"the {kind}'s selector {sel} does not match the pods' labels {labels}")


@check("security")
def _(m, facts):
    pod, c = container(m)
    pod_sc, sc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    either = lambda key: sc.get(key, pod_sc.get(key))  # noqa: E731
    if either("runAsNonRoot") is not True or either("runAsUser") in (0, None):
        raise Failure("the container may run as root: set runAsNonRoot and a runAsUser other than 0")
    if sc.get("readOnlyRootFilesystem") is not True:
        raise Failure("the root filesystem is writable: with PostgreSQL and Redis sample_server writes no file")
    if sc.get("allowPrivilegeEscalation") is not False:
        raise Failure("allowPrivilegeEscalation is not false")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        raise Failure("capabilities are not all dropped (sample_server listens on unprivileged ports)")
    if setting(m, facts, "CHAT_DATABASE_URL").startswith("sqlite:"):
        raise Failure("a SQLite database on a read-only root filesystem cannot be written")


@check("loops")
def _(m, facts):
    if setting(m, facts, "CHAT_SERVER") != "beast":
        return
    loops = setting(m, facts, "CHAT_LOOPS")
    if facts["loops_count_cores"] and loops in ("0", ""):
        raise Failure("CHAT_LOOPS is 0, one event loop per core of the node (hardware_concurrency, not the pod's CPU): "
                      "set it to the CPUs the pod gets")


def run_checks(m, facts):
    failures = []
    for check_id, fn in CHECKS:
        try:
            fn(m, facts)
        except Failure as e:
            failures.append((check_id, str(e)))
        except Exception as e:  # a mutated shape the check did not expect still fails it
            failures.append((check_id, f"{type(e).__name__}: {e}"))
    return failures


# --- self-test: each mutation must make its check fail --------------------------------------------

def obj(m, kind):
    return objects(m, kind)[0]


def cm(m):
    return obj(m, "ConfigMap")["data"]


def sec(m):
    return obj(m, "Secret")["stringData"]


def ctr(m):
    return obj(m, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def pod(m):
    return obj(m, "Deployment")["spec"]["template"]["spec"]


def move(name):
    """Moves a setting from the Secret to the ConfigMap."""
    def mutate(m):
        cm(m)[name] = sec(m).pop(name)
    return mutate


MUTATIONS = [
    ("kustomization", "a manifest not listed", lambda m: m["kustomization"]["resources"].remove("pdb.yaml")),
    ("kustomization", "a listed file that is not there", lambda m: m["present"].remove("service.yaml")),
    ("kustomization", "two Services", lambda m: m["files"]["service.yaml"].append(copy.deepcopy(obj(m, "Service")))),
    ("references", "envFrom naming a ConfigMap that does not exist",
     lambda m: ctr(m)["envFrom"][0]["configMapRef"].__setitem__("name", "chat-config")),
    ("references", "secretKeyRef naming a key the Secret lacks",
     lambda m: ctr(m).setdefault("env", []).append({"name": "CHAT_ADMIN_KEY", "valueFrom": {"secretKeyRef": {"name": "chatkit-secrets", "key": "admin"}}})),
    ("references", "no environment", lambda m: ctr(m).pop("envFrom")),
    ("env-known-variables", "a misspelt variable", lambda m: cm(m).__setitem__("CHAT_DRAIN_DELAY_S", "10")),
    ("env-known-variables", "a variable of another program", lambda m: cm(m).__setitem__("PORT", "8000")),
    ("env-strings", "an unquoted port", lambda m: cm(m).__setitem__("CHAT_PORT", 8000)),
    ("env-strings", "an unquoted off (YAML's false)", lambda m: cm(m).__setitem__("CHAT_USAGE", False)),
    ("env-strings", "an unquoted env value", lambda m: ctr(m).setdefault("env", []).append({"name": "CHAT_CACHE_TTL", "value": 60})),
    ("env-allowed-values", "an unknown server", lambda m: cm(m).__setitem__("CHAT_SERVER", "asio")),
    ("env-allowed-values", "yes for on", lambda m: cm(m).__setitem__("CHAT_METRICS", "yes")),
    ("env-allowed-values", "an unknown log format", lambda m: cm(m).__setitem__("CHAT_LOG_FORMAT", "logfmt")),
    ("env-allowed-values", "a drain delay out of range", lambda m: cm(m).__setitem__("CHAT_DRAIN_DELAY", "5000")),
    ("env-allowed-values", "a drain delay with a unit", lambda m: cm(m).__setitem__("CHAT_DRAIN_DELAY", "10s")),
    ("env-allowed-values", "a redis URL of another scheme", lambda m: sec(m).__setitem__("CHAT_REDIS_URL", "valkey://:REPLACE_WITH_X@redis:6379/0")),
    ("env-allowed-values", "a mysql database", lambda m: sec(m).__setitem__("CHAT_DATABASE_URL", "mysql://u:REPLACE_WITH_X@db/chatkit")),
    ("starts-up", "API keys with no database", lambda m: (cm(m).__setitem__("CHAT_AUTH", "keys"), sec(m).__setitem__("CHAT_DATABASE_URL", "none"))),
    ("starts-up", "an admin key without API keys",
     lambda m: sec(m).__setitem__("CHAT_ADMIN_KEY", "REPLACE_WITH_AN_ADMIN_KEY_OF_32_CHARACTERS")),
    ("starts-up", "a metrics port with the metrics off", lambda m: cm(m).__setitem__("CHAT_METRICS", "off")),
    ("starts-up", "shared limits with nowhere to count", lambda m: (cm(m).__setitem__("CHAT_LIMITS", "shared"), sec(m).pop("CHAT_REDIS_URL"))),
    ("fleet-shared-state", "one replica", lambda m: obj(m, "Deployment")["spec"].__setitem__("replicas", 1)),
    ("fleet-shared-state", "a SQLite file each", lambda m: sec(m).pop("CHAT_DATABASE_URL")),
    ("fleet-shared-state", "no Redis", lambda m: sec(m).pop("CHAT_REDIS_URL")),
    ("host", "CHAT_HOST left at its default", lambda m: cm(m).pop("CHAT_HOST")),
    ("host", "localhost", lambda m: cm(m).__setitem__("CHAT_HOST", "localhost")),
    ("host", "127.0.0.2", lambda m: cm(m).__setitem__("CHAT_HOST", "127.0.0.2")),
    ("ports", "CHAT_PORT unlike the containerPort", lambda m: cm(m).__setitem__("CHAT_PORT", "8080")),
    ("ports", "port 0 (any free port)", lambda m: cm(m).__setitem__("CHAT_PORT", "0")),
    ("ports", "the Service sending to the metrics port", lambda m: obj(m, "Service")["spec"]["ports"][0].__setitem__("targetPort", "metrics")),
    ("ports", "the Service sending to a port by number", lambda m: obj(m, "Service")["spec"]["ports"][0].__setitem__("targetPort", 8080)),
    ("ports", "the metrics port not a containerPort", lambda m: ctr(m)["ports"].pop(1)),
    ("probes", "readiness on /health", lambda m: ctr(m)["readinessProbe"]["httpGet"].__setitem__("path", "/health")),
    ("probes", "liveness on /healthz", lambda m: ctr(m)["livenessProbe"]["httpGet"].__setitem__("path", "/healthz")),
    ("probes", "readiness on the metrics port", lambda m: ctr(m)["readinessProbe"]["httpGet"].__setitem__("port", "metrics")),
    ("probes", "liveness on a port no container has", lambda m: ctr(m)["livenessProbe"]["httpGet"].__setitem__("port", "web")),
    ("probes", "readiness over HTTPS", lambda m: ctr(m)["readinessProbe"]["httpGet"].__setitem__("scheme", "HTTPS")),
    ("probes", "no liveness probe", lambda m: ctr(m).pop("livenessProbe")),
    ("probe-timing", "readiness polled too slowly for the drain", lambda m: ctr(m)["readinessProbe"].__setitem__("periodSeconds", 10)),
    ("probe-timing", "a drain shorter than readiness needs", lambda m: cm(m).__setitem__("CHAT_DRAIN_DELAY", "2")),
    ("probe-timing", "liveness on Kubernetes' defaults", lambda m: [ctr(m)["livenessProbe"].pop(k) for k in ("periodSeconds", "failureThreshold")]),
    ("grace-period", "Kubernetes' default 30 s", lambda m: pod(m).pop("terminationGracePeriodSeconds")),
    ("grace-period", "a longer drain, the same grace", lambda m: cm(m).__setitem__("CHAT_DRAIN_DELAY", "30")),
    ("secrets", "the database URL in the ConfigMap", move("CHAT_DATABASE_URL")),
    ("secrets", "the Redis password in the ConfigMap", move("CHAT_REDIS_URL")),
    ("secrets", "the OpenAI key in the ConfigMap", move("CHAT_OPENAI_API_KEY")),
    ("secrets", "the Anthropic key as a literal",
     lambda m: ctr(m).setdefault("env", []).append({"name": "CHAT_ANTHROPIC_API_KEY", "value": "REPLACE_WITH_KEY"})),
    ("secrets", "OPENAI_API_KEY (the fallback) in the ConfigMap", lambda m: cm(m).__setitem__("OPENAI_API_KEY", "x")),
    ("secrets", "a real-looking key in the Secret", lambda m: sec(m).__setitem__("CHAT_OPENAI_API_KEY", "sk-proj-abcdefghijklmnop")),
    ("secrets", "a real-looking password in the Secret",
     lambda m: sec(m).__setitem__("CHAT_REDIS_URL", "redis://:hunter2hunter2@redis:6379/0")),
    ("secrets", "a password given as data, base64",
     lambda m: obj(m, "Secret").__setitem__("data", {"CHAT_GEMINI_API_KEY": base64.b64encode(b"AIzaSyA1234567890abcdefghij").decode()})),
    ("selectors", "the Service selecting other pods", lambda m: obj(m, "Service")["spec"]["selector"].__setitem__("app.kubernetes.io/name", "chat")),
    ("selectors", "the Deployment's selector not its pods'",
     lambda m: obj(m, "Deployment")["spec"]["selector"]["matchLabels"].__setitem__("tier", "web")),
    ("selectors", "the disruption budget counting other pods",
     lambda m: obj(m, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].__setitem__("app.kubernetes.io/name", "chat")),
    ("security", "root", lambda m: pod(m)["securityContext"].__setitem__("runAsUser", 0)),
    ("security", "a writable root filesystem", lambda m: ctr(m)["securityContext"].__setitem__("readOnlyRootFilesystem", False)),
    ("security", "privilege escalation", lambda m: ctr(m)["securityContext"].pop("allowPrivilegeEscalation")),
    ("security", "capabilities kept", lambda m: ctr(m)["securityContext"].pop("capabilities")),
    ("loops", "one loop per core of the node", lambda m: cm(m).pop("CHAT_LOOPS")),
]

# Edits of the code: a check that reads it must notice when it changes.
SOURCE_MUTATIONS = [
    ("env-allowed-values", "CHAT_LOG_FORMAT accepts only logfmt", "config",
     lambda t: t.replace('one_of(n, v, {"json", "text"})', 'one_of(n, v, {"logfmt", "text"})')),
    ("env-allowed-values", "CHAT_DRAIN_DELAY at most 5", "config",
     lambda t: re.sub(r"(drain_delay = std::chrono::seconds\{parse_int<long>\(n, v, 0, )3600", r"\g<1>5", t)),
    ("env-known-variables", "CHAT_LOOPS renamed CHAT_EVENT_LOOPS", "config",
     lambda t: t.replace('{"CHAT_LOOPS",', '{"CHAT_EVENT_LOOPS",')),
    ("secrets", "CHAT_METRICS_PORT becomes a secret", "config",
     lambda t: t.replace("[](const config& c) { return c.metrics_port < 0 ? std::string{} : std::to_string(c.metrics_port); }",
                         "[](const config&) { return std::string{}; }")),
    ("probes", "/ready moves to /readyz", "service",
     lambda t: t.replace('req.path == "/ready"', 'req.path == "/readyz"')),
    ("probes", "/health moves to /livez", "service",
     lambda t: t.replace('req.path == "/health"', 'req.path == "/livez"')),
    ("grace-period", "requests in flight may take 60 s", "beast",
     lambda t: t.replace("std::chrono::seconds drain_timeout{30};", "std::chrono::seconds drain_timeout{60};")),
    ("host", "0.0.0.0 counted as loopback", "main",
     lambda t: t.replace('host == "localhost"', 'host == "0.0.0.0" || host == "localhost"')),
]


def self_test(m, texts):
    facts = facts_of(texts)
    failures = run_checks(m, facts)
    if failures:
        print("the manifests themselves fail, so mutations prove nothing:")
        for check_id, why in failures:
            print(f"  [{check_id}] {why}")
        return 1
    covered, bad = set(), 0
    for check_id, what, mutate in MUTATIONS:
        mutated = copy.deepcopy(m)
        mutate(mutated)
        caught = [why for cid, why in run_checks(mutated, facts) if cid == check_id]
        covered.add(check_id)
        if caught:
            print(f"ok   [{check_id}] {what}: {caught[0]}")
        else:
            bad += 1
            print(f"MISS [{check_id}] {what}: the check still passes")
    for check_id, what, which, edit in SOURCE_MUTATIONS:
        edited = dict(texts)
        edited[which] = edit(texts[which])
        if edited[which] == texts[which]:
            bad += 1
            print(f"MISS [{check_id}] {what}: the edit changed nothing in {SOURCE_FILES[which]} (has the code moved?)")
            continue
        try:
            caught = [why for cid, why in run_checks(m, facts_of(edited)) if cid == check_id]
        except Failure as e:
            caught = [f"the code cannot be read: {e}"]
        if caught:
            print(f"ok   [{check_id}] {what} ({SOURCE_FILES[which]}): {caught[0]}")
        else:
            bad += 1
            print(f"MISS [{check_id}] {what} ({SOURCE_FILES[which]}): the check still passes")
    for check_id, _ in CHECKS:
        if check_id not in covered:
            bad += 1
            print(f"MISS [{check_id}] has no mutation that makes it fail")
    print(f"{len(MUTATIONS) + len(SOURCE_MUTATIONS)} mutations, {len(CHECKS)} checks, {bad} missed")
    return 1 if bad else 0


def main(argv):
    args = [a for a in argv[1:] if a != "--self-test"]
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    m = load_manifests(args[0])
    texts = read_sources(args[1])
    if "--self-test" in argv:
        return self_test(m, texts)
    try:
        facts = facts_of(texts)
    except Failure as e:
        print(f"FAIL [code] {e}")
        return 1
    failures = run_checks(m, facts)
    for check_id, why in failures:
        print(f"FAIL [{check_id}] {why}")
    if not failures:
        print(f"{len(CHECKS)} checks passed: {', '.join(c for c, _ in CHECKS)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
