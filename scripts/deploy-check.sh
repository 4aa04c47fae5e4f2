#!/usr/bin/env bash
# Checks what an operator deploys, offline, with the real tools:
#   - the Helm chart: `helm lint` and `helm template` on the default values,
#     on helm/tidings/values-production.yaml and with every optional object
#     on; each rendered manifest validated against the Kubernetes schemas
#     (kubernetes-validate --strict, Kubernetes 1.33 and 1.29); the chart's
#     promises checked on the renders (probes on served paths, resources,
#     non-root read-only pods, a PodDisruptionBudget per Deployment, ...);
#     values the chart must refuse are refused;
#   - the chart's KEDA ScaledObjects and Prometheus Operator monitors, and
#     the alert rules as a PrometheusRule, against those projects' CRDs;
#   - docker-compose.kafka.yml with compose-go's validator (the Compose
#     Specification's loader), plus references between its services;
#   - deploy/prometheus/alerts.yml and deploy/grafana/tidings.json: their
#     structure (tests/observability.rs checks their metric names against a
#     live /metrics);
#   - the Dockerfile and deploy/image/Containerfile with hadolint (every
#     finding fails), via scripts/image.sh lint;
#   - with TIDINGS_BIN set to a built tidings, that tidings accepts the
#     tidings.toml the chart renders. (The image itself is built and run by
#     scripts/image.sh test, which scripts/test.sh runs once the binary is
#     built.)
# The tools are installed by scripts/tools.sh (hadolint by scripts/image.sh),
# cached outside the repository (the first run builds helm from source:
# minutes; later runs take seconds).
# Exits non-zero at the first failing check, saying which and why.
#
#   scripts/deploy-check.sh
#   TIDINGS_BIN=target/debug/tidings scripts/deploy-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "deploy-check: FAILED: $*" >&2
    exit 1
}

helm=$(scripts/tools.sh helm) || fail "could not install helm (scripts/tools.sh helm)"
kubernetes_validate=$(scripts/tools.sh kubernetes-validate) || fail "could not install kubernetes-validate"
compose=$(scripts/tools.sh compose) || fail "could not install compose-go's validator"
crd_dirs=$(scripts/tools.sh crds) || fail "could not fetch the KEDA and Prometheus Operator CRDs"
# The venv kubernetes-validate lives in has PyYAML and jsonschema: the checks
# below use its interpreter.
python="$(dirname "$kubernetes_validate")/python"

chart=helm/tidings
kube_versions=(1.33.0 1.29.0)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# name | helm arguments
renders=(
    "default|"
    "production|-f $chart/values-production.yaml"
    "everything-on|--set monitoring.serviceMonitor.enabled=true,networkPolicy.enabled=true,keda.enabled=true,gateway.autoscaling.enabled=false"
)

echo "--> hadolint: Dockerfile, deploy/image/Containerfile"
scripts/image.sh lint >/dev/null || fail "hadolint (above)"

echo "--> helm lint"
for r in "${renders[@]}"; do
    name=${r%%|*}
    # shellcheck disable=SC2086 # the arguments are words on purpose
    "$helm" lint --strict "$chart" ${r#*|} >"$work/lint-$name.txt" 2>&1 ||
        { cat "$work/lint-$name.txt" >&2; fail "helm lint on the $name values"; }
done

echo "--> helm template, kubernetes-validate --strict (${kube_versions[*]})"
for v in "${kube_versions[@]}"; do
    for r in "${renders[@]}"; do
        name=${r%%|*}
        # shellcheck disable=SC2086
        "$helm" template tidings "$chart" --namespace tidings --kube-version "$v" ${r#*|} \
            >"$work/$name-$v.yaml" 2>"$work/template-$name.txt" ||
            { cat "$work/template-$name.txt" >&2; fail "helm template on the $name values (Kubernetes $v)"; }
    done
    # One run per version for every render (the schemas load once).
    "$kubernetes_validate" --strict --quiet -k "$v" "$work"/*-"$v".yaml >"$work/validate.txt" 2>&1 ||
        { cat "$work/validate.txt" >&2; fail "a render does not validate against Kubernetes $v (the file name says which values)"; }
    # kubernetes-validate has no schema for custom resources (they are
    # validated against their CRDs below);
    # a warning about anything else is a failure.
    if grep -v -E "Couldn't find schema for kind (ScaledObject|PodMonitor|ServiceMonitor) " "$work/validate.txt" | grep -q .; then
        cat "$work/validate.txt" >&2
        fail "kubernetes-validate warned about a render (Kubernetes $v)"
    fi
done

echo "--> custom resources and alerts.yml against their CRDs (KEDA, Prometheus Operator)"
# shellcheck disable=SC2086 # one directory a line
"$python" - deploy/prometheus/alerts.yml "$work"/*-1.33.0.yaml -- $crd_dirs <<'EOF' || fail "a custom resource or the alert rules do not match their CRD (above)"
import glob, sys, yaml, jsonschema

args = sys.argv[1:]
files, crd_dirs = args[: args.index("--")], args[args.index("--") + 1 :]
schemas = {}
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
names = ("keda.sh_scaledobjects", "monitoring.coreos.com_podmonitors",
         "monitoring.coreos.com_servicemonitors", "monitoring.coreos.com_prometheusrules")
for d in crd_dirs:
    for path in [p for n in names for p in glob.glob(f"{d}/{n}.yaml")]:
        for crd in yaml.load_all(open(path), Loader=Loader):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            for v in crd["spec"]["versions"]:
                key = (f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])
                schemas[key] = v["schema"]["openAPIV3Schema"]

def strict(schema):
    # What kubernetes-validate --strict does for built-in kinds: a field the
    # schema does not name is an error (the API server would drop it).
    if isinstance(schema, dict):
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema = dict(schema, additionalProperties=False)
        return {k: strict(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema

kinds = {"ScaledObject", "PodMonitor", "ServiceMonitor", "PrometheusRule"}
found = {kind for _, kind in schemas}
if not kinds <= found:
    sys.exit(f"  no CRD for {sorted(kinds - found)} in {crd_dirs}")
problems, seen = [], set()
rules = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
         "metadata": {"name": "tidings"}, "spec": yaml.safe_load(open(files[0]))}
docs = [(files[0], rules)] + [(f, d) for f in files[1:] for d in yaml.safe_load_all(open(f)) if d]
for path, doc in docs:
    if doc["kind"] not in kinds:
        continue
    key = (doc["apiVersion"], doc["kind"])
    where = f"{path.rsplit('/', 1)[-1]} {doc['kind']} {doc['metadata']['name']}"
    if key not in schemas:
        problems.append(f"{where}: {doc['apiVersion']} is not a version the CRD serves")
        continue
    seen.add(doc["kind"])
    for e in jsonschema.Draft7Validator(strict(schemas[key])).iter_errors(doc):
        problems.append(f"{where}: {'/'.join(str(p) for p in e.absolute_path)}: {e.message}")
if seen != kinds:
    problems.append(f"the renders should hold every kind of {sorted(kinds)}; saw {sorted(seen)}")
for p in problems:
    print("  " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

echo "--> the chart's promises on each render"
"$python" - "$work"/default-1.33.0.yaml "$work"/production-1.33.0.yaml "$work"/everything-on-1.33.0.yaml <<'EOF' || fail "a render breaks a promise of the chart (above)"
import sys, yaml

problems = []
def check(ok, where, what):
    if not ok:
        problems.append(f"{where}: {what}")

STAGES = {"enricher", "scheduler", "sender-ios", "sender-android", "sender-sms", "sender-email",
          "sender-web", "sender-in-app", "retry-1", "retry-2", "retry-3", "template-stats", "feed-planner", "feed-writer", "feed-tally", "feed-pruner", "feed-follows"}
for path in sys.argv[1:]:
    render = path.rsplit("/", 1)[-1]
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    components = {d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for d in deployments.values()}
    check(components == STAGES | {"gateway"}, render, f"Deployments for {sorted(components)}, want the gateway and every stage")
    pdbs = {tuple(sorted(p["spec"]["selector"]["matchLabels"].items())) for p in by_kind.get("PodDisruptionBudget", [])}
    hpas = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind.get("HorizontalPodAutoscaler", [])}
    scaled = {s["spec"]["scaleTargetRef"]["name"] for s in by_kind.get("ScaledObject", [])}
    workloads = list(deployments.items()) + [(j["metadata"]["name"], j) for j in by_kind.get("Job", [])]
    for name, w in workloads:
        where = f"{render} {w['kind']} {name}"
        pod = w["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        check(psc.get("runAsNonRoot") is True and isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0,
              where, "pod securityContext needs runAsNonRoot and a numeric non-zero runAsUser")
        check(psc.get("runAsUser") == 10001 and psc.get("runAsGroup") == 10001, where,
              "pod securityContext runAsUser/runAsGroup 10001, the image's USER (deploy/image/Containerfile, Dockerfile)")
        check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where, "seccompProfile RuntimeDefault")
        mounts_tmp = False
        for c in pod["containers"]:
            cw = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            check(sc.get("readOnlyRootFilesystem") is True, cw, "readOnlyRootFilesystem")
            check(sc.get("allowPrivilegeEscalation") is False, cw, "allowPrivilegeEscalation false")
            check(sc.get("capabilities", {}).get("drop") == ["ALL"], cw, "capabilities drop ALL")
            res = c.get("resources", {})
            check(res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory")
                  and res.get("limits", {}).get("memory"), cw, "resources: cpu/memory requests and a memory limit")
            mounts_tmp |= any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", []))
            if w["kind"] != "Deployment":
                continue
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            # What the binary serves: the gateway /healthz and /metrics on
            # gateway.http_addr (gateway/src/http.rs), a stage on
            # telemetry.metrics_addr (src/runtime.rs spawn_metrics).
            port = "http" if name.endswith("-gateway") else "metrics"
            check(port in ports, cw, f"a container port named {port}")
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                get = c.get(probe, {}).get("httpGet", {})
                check(get.get("port") == port and get.get("path") in ("/healthz", "/readyz"), cw,
                      f"{probe} on {port} /healthz or /readyz, got {get}")
            ann = w["spec"]["template"]["metadata"].get("annotations", {})
            check(ann.get("prometheus.io/port") == str(ports.get(port)), cw, "prometheus.io/port names the port serving /metrics")
        check(mounts_tmp, where, "a writable /tmp (emptyDir): the root filesystem is read-only")
        if w["kind"] == "Deployment":
            labels = tuple(sorted(w["spec"]["selector"]["matchLabels"].items()))
            check(labels in pdbs, where, "a PodDisruptionBudget selecting its pods")
            managed = name in hpas or name in scaled
            check(("replicas" in w["spec"]) != managed, where,
                  "replicas set exactly when no HPA or ScaledObject owns the count")
    check(any(n.endswith("-gateway") for n in hpas) or render.startswith("everything-on"), render, "an HPA for the gateway")
    for s in by_kind.get("ScaledObject", []):
        where = f"{render} ScaledObject {s['metadata']['name']}"
        check(s["apiVersion"] == "keda.sh/v1alpha1", where, "apiVersion keda.sh/v1alpha1")
        check(s["spec"]["scaleTargetRef"]["name"] in deployments, where, "scales a Deployment of the release")
        check(not s["spec"]["scaleTargetRef"]["name"].endswith("-scheduler"), where, "the scheduler reads no topic")
        for t in s["spec"]["triggers"]:
            m = t["metadata"]
            check(t["type"] == "kafka" and all(isinstance(m.get(k), str) and m[k] for k in
                  ("bootstrapServers", "consumerGroup", "topic", "lagThreshold")), where,
                  "a kafka trigger with string bootstrapServers, consumerGroup, topic, lagThreshold")
            check(all(isinstance(v, str) for v in m.values()), where, "trigger metadata values are strings")
    for kind in ("PodMonitor", "ServiceMonitor"):
        for m in by_kind.get(kind, []):
            eps = m["spec"].get("podMetricsEndpoints") or m["spec"].get("endpoints") or []
            check(eps and all(e.get("path") == "/metrics" and e.get("port") in ("http", "metrics") for e in eps),
                  f"{render} {kind}", "endpoints scrape /metrics on the http or metrics port")
for p in problems:
    print("  " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

# With a built binary (TIDINGS_BIN=target/debug/tidings), the rendered
# tidings.toml must also be one tidings accepts: `tidings config` loads and
# validates it as every role does at start.
if [[ -n "${TIDINGS_BIN:-}" ]]; then
    echo "--> the rendered tidings.toml, loaded by $TIDINGS_BIN config"
    for name in default production; do
        "$python" -c 'import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ConfigMap" and "tidings.toml" in d.get("data", {}):
        print(d["data"]["tidings.toml"]); break' "$work/$name-1.33.0.yaml" >"$work/$name.toml"
        TIDINGS_TRACKING__LINK_SECRET=deploy-check TIDINGS_FEED__USER_TOKEN_SECRET=deploy-check \
            "$TIDINGS_BIN" --config "$work/$name.toml" config >/dev/null 2>"$work/config.txt" ||
            { cat "$work/config.txt" >&2; fail "tidings refuses the tidings.toml the $name values render"; }
    done
fi

echo "--> values the chart refuses"
refuse() {
    local why=$1 expect=$2
    shift 2
    if "$helm" template tidings "$chart" --kube-version 1.33.0 "$@" >/dev/null 2>"$work/refused.txt"; then
        fail "the chart accepted $why ($*)"
    fi
    grep -q -- "$expect" "$work/refused.txt" ||
        { cat "$work/refused.txt" >&2; fail "refusing $why, the chart did not say '$expect'"; }
}
refuse "an SQLite store" "does not match pattern '^scylla://'" --set config.store.url=sqlite:///tmp/t.db
refuse "embedded Kafka" "exists only inside one process" --set config.kafka.bootstrap_servers=embedded
refuse "a link secret in the ConfigMap" "give a Secret in linkSecret" --set config.tracking.link_secret=s3cret
refuse "a root pod" "runAsNonRoot" --set podSecurityContext.runAsNonRoot=false
refuse "a misspelt key" "additional properties 'replicass'" --set gateway.replicass=3
refuse "a readiness path nothing serves" "readinessPath/gateway" --set probes.readinessPath.gateway=/ready

echo "--> docker-compose.kafka.yml (compose-go validator)"
"$compose" --format json docker-compose.kafka.yml >"$work/compose.json" 2>"$work/compose.txt" ||
    { cat "$work/compose.txt" >&2; echo >&2; fail "docker-compose.kafka.yml does not validate"; }
"$python" - "$work/compose.json" <<'EOF' || fail "docker-compose.kafka.yml: broken references (above)"
import json, sys
project = json.load(open(sys.argv[1]))
services = project["services"]
problems = []
for name, s in services.items():
    for dep, how in (s.get("depends_on") or {}).items():
        if dep not in services:
            problems.append(f"{name} depends on {dep}, which is not a service")
        elif how.get("condition") == "service_healthy" and not services[dep].get("healthcheck"):
            problems.append(f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck")
    if name.startswith("tidings-"):
        if name != "tidings-init":
            if not s.get("healthcheck"):
                problems.append(f"{name} has no healthcheck")
            if s.get("depends_on", {}).get("tidings-init", {}).get("condition") != "service_completed_successfully":
                problems.append(f"{name} must start after tidings-init succeeded")
        if not s.get("read_only"):
            problems.append(f"{name} should run with a read-only root filesystem")
for want in ("tidings-init", "tidings-gateway", "tidings-enricher", "tidings-scheduler", "tidings-senders"):
    if want not in services:
        problems.append(f"no {want} service")
for p in problems:
    print("  " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

echo "--> deploy/prometheus/alerts.yml, deploy/grafana/tidings.json"
"$python" - deploy/prometheus/alerts.yml deploy/grafana/tidings.json <<'EOF' || fail "the alert rules or the dashboard are malformed (above)"
import json, re, sys, yaml
problems = []
rules = yaml.safe_load(open(sys.argv[1]))
groups = rules.get("groups") if isinstance(rules, dict) else None
if not groups:
    problems.append("alerts.yml: no `groups`")
for g in groups or []:
    if not g.get("name") or not g.get("rules"):
        problems.append(f"alerts.yml: group {g.get('name')!r} needs a name and rules")
    for r in g.get("rules", []):
        where = f"alerts.yml rule {r.get('alert')!r}"
        extra = set(r) - {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        if extra:
            problems.append(f"{where}: unknown keys {sorted(extra)}")
        if not re.fullmatch(r"Tidings[A-Za-z]+", r.get("alert", "")):
            problems.append(f"{where}: an alert name like TidingsSomething")
        if not isinstance(r.get("expr"), str) or "tidings_" not in r["expr"]:
            problems.append(f"{where}: an expr over tidings_ metrics")
        if "for" in r and not re.fullmatch(r"[0-9]+[smh]", str(r["for"])):
            problems.append(f"{where}: `for` must be a duration like 5m")
        if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            problems.append(f"{where}: labels.severity critical, warning or info")
        if not r.get("annotations", {}).get("summary") or not r.get("annotations", {}).get("description"):
            problems.append(f"{where}: annotations summary and description")
        if r.get("expr", "").count("(") != r.get("expr", "").count(")"):
            problems.append(f"{where}: unbalanced parentheses in expr")
dash = json.load(open(sys.argv[2]))
ids = [p["id"] for p in dash.get("panels", [])]
if len(ids) != len(set(ids)):
    problems.append("tidings.json: panel ids are not unique")
for p in dash.get("panels", []):
    if p["type"] == "row":
        continue
    targets = p.get("targets") or []
    if not targets or not all(t.get("expr") for t in targets):
        problems.append(f"tidings.json panel {p.get('title')!r}: every target needs an expr")
    if p.get("datasource", {}).get("uid") != "${datasource}":
        problems.append(f"tidings.json panel {p.get('title')!r}: use the ${{datasource}} variable")
    for t in targets:
        if t["expr"].count("(") != t["expr"].count(")"):
            problems.append(f"tidings.json panel {p.get('title')!r}: unbalanced parentheses")
for p in problems:
    print("  " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

echo "deploy-check: the Dockerfiles, the chart, the compose file, the alert rules and the dashboard are valid"
