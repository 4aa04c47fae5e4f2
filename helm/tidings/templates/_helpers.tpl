{{/* Names and labels. */}}
{{- define "tidings.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tidings.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tidings.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tidings.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tidings.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tidings.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tidings.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The port of telemetry.metrics_addr, e.g. 9464 of 0.0.0.0:9464. */}}
{{- define "tidings.metricsPort" -}}
{{- splitList ":" .Values.config.telemetry.metrics_addr | last -}}
{{- end -}}

{{/*
A TOML value from a values entry: maps become inline tables, lists arrays,
strings toJson (a JSON string is a valid TOML basic string). Helm reads every
number in a values file as a float, so whole numbers are written as integers
(tidings wants integers for counts and milliseconds). Null entries of a map
are left out (TOML has no null).
*/}}
{{- define "tidings.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "map" $v -}}
{ {{- $first := true -}}
{{- range $k, $x := $v -}}
{{- if not (kindIs "invalid" $x) -}}
{{- if not $first }}, {{ end -}}
{{- $first = false -}}
{{ $k | toJson }} = {{ include "tidings.tomlValue" $x }}
{{- end -}}
{{- end -}} }
{{- else if kindIs "slice" $v -}}
[ {{- range $i, $x := $v -}}{{- if $i }}, {{ end -}}{{ include "tidings.tomlValue" $x }}{{- end -}} ]
{{- else if kindIs "string" $v -}}
{{ $v | toJson }}
{{- else if kindIs "bool" $v -}}
{{ $v }}
{{- else if and (kindIs "float64" $v) (eq $v (floor $v)) -}}
{{ int64 $v }}
{{- else if kindIs "invalid" $v -}}
{{ fail "a null value has no TOML form; leave the key out" }}
{{- else -}}
{{ $v }}
{{- end -}}
{{- end -}}

{{/* The key = value lines of a table from a values map. */}}
{{- define "tidings.tomlTable" -}}
{{- range $k, $v := . }}
{{- if not (kindIs "invalid" $v) }}
{{ $k | toJson }} = {{ include "tidings.tomlValue" $v }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
tidings.toml. Strings are written with toJson: a JSON string is a valid TOML
basic string. Secrets are not here: they come from Secrets as environment
variables (tidings.env, processors.yaml).
*/}}
{{- define "tidings.config" -}}
{{- $c := .Values.config -}}
{{- $servers := required "config.kafka.bootstrap_servers is required (host:port,...)" $c.kafka.bootstrap_servers -}}
{{- if eq (trim $servers) "embedded" -}}
{{- fail "config.kafka.bootstrap_servers: `embedded` exists only inside one process; give the brokers (host:port,...)" -}}
{{- end -}}
{{- $url := required "config.store.url is required (scylla://host1:9042,host2:9042/keyspace)" $c.store.url -}}
{{- if not (hasPrefix "scylla://" $url) -}}
{{- fail "config.store.url must be scylla://...: with sqlite:// every pod would have a store of its own" -}}
{{- end -}}
[kafka]
bootstrap_servers = {{ $servers | toJson }}
topic_prefix = {{ $c.kafka.topic_prefix | toJson }}
partitions = {{ $c.kafka.partitions | int }}
replication_factor = {{ $c.kafka.replication_factor | int }}
group_prefix = {{ $c.kafka.group_prefix | toJson }}
produce_timeout_ms = {{ $c.kafka.produce_timeout_ms | int64 }}
{{- with $c.kafka.schema_registry_url }}
schema_registry_url = {{ . | toJson }}
{{- end }}

[kafka.client]
{{- range $key, $value := $c.kafka.client }}
{{ $key | toJson }} = {{ $value | toString | toJson }}
{{- end }}

[store]
url = {{ $url | toJson }}
replication_factor = {{ $c.store.replication_factor | int }}
connect_timeout_ms = {{ $c.store.connect_timeout_ms | int64 }}

[store.datacenters]
{{- range $dc, $factor := $c.store.datacenters }}
{{ $dc | toJson }} = {{ $factor | int }}
{{- end }}

[gateway]
grpc_addr = {{ printf "0.0.0.0:%v" .Values.gateway.ports.grpc | toJson }}
http_addr = {{ printf "0.0.0.0:%v" .Values.gateway.ports.http | toJson }}
max_batch = {{ $c.gateway.max_batch | int }}
max_expanded_notifications = {{ $c.gateway.max_expanded_notifications | default 10000 | int }}
auth_stale_serve_secs = {{ $c.gateway.auth_stale_serve_secs | default 600 | int64 }}

[enricher]
{{- include "tidings.tomlTable" $c.enricher }}

[senders]
{{- include "tidings.tomlTable" $c.senders }}

[tracking]
{{- if hasKey $c.tracking "link_secret" }}
{{- fail "config.tracking.link_secret would land in a ConfigMap; give a Secret in linkSecret instead" }}
{{- end }}
{{- include "tidings.tomlTable" (omit $c.tracking "public_url") }}
public_url = {{ include "tidings.publicUrl" . | toJson }}

[feed]
{{- if hasKey $c.feed "user_token_secret" }}
{{- fail "config.feed.user_token_secret would land in a ConfigMap; give a Secret in userTokenSecret instead" }}
{{- end }}
{{- include "tidings.tomlTable" $c.feed }}

[providers]
{{- include "tidings.tomlTable" $c.providers }}

[telemetry]
log = {{ $c.telemetry.log | toJson }}
log_format = {{ $c.telemetry.log_format | toJson }}
metrics_addr = {{ $c.telemetry.metrics_addr | toJson }}
{{- end -}}

{{/* Pod settings every tidings container shares. */}}
{{- define "tidings.podCommon" -}}
automountServiceAccountToken: false
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Environment every tidings container gets, as list items: the link secret and
the user-token secret (every role validates the configuration, which refuses
the development defaults on a shared Kafka), then extraEnv. Each secret comes
from the existing Secret named in the values, or else from the Secret the
chart generates (secrets.yaml).
*/}}
{{- define "tidings.env" -}}
- name: TIDINGS_TRACKING__LINK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.linkSecret.secretName | default (include "tidings.generatedSecret" .) }}
      key: {{ if .Values.linkSecret.secretName }}{{ .Values.linkSecret.key }}{{ else }}link_secret{{ end }}
- name: TIDINGS_FEED__USER_TOKEN_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.userTokenSecret.secretName | default (include "tidings.generatedSecret" .) }}
      key: {{ if .Values.userTokenSecret.secretName }}{{ .Values.userTokenSecret.key }}{{ else }}user_token_secret{{ end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Container settings every tidings container shares (env aside). */}}
{{- define "tidings.containerCommon" -}}
image: {{ include "tidings.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- with .Values.securityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
tracking.public_url: the configured one, or else the gateway's in-cluster
Service, so a default install renders and works inside the cluster (tracked
links and pixels then resolve only there; NOTES.txt says so).
*/}}
{{- define "tidings.publicUrl" -}}
{{- .Values.config.tracking.public_url | default (printf "http://%s-gateway.%s.svc:%v" (include "tidings.fullname" .) .Release.Namespace .Values.gateway.ports.http) -}}
{{- end -}}

{{/* The Secret the chart generates when linkSecret or userTokenSecret names none. */}}
{{- define "tidings.generatedSecret" -}}
{{- printf "%s-secrets" (include "tidings.fullname" .) -}}
{{- end -}}

{{/*
Each stage's Kafka input: the consumer group suffix (group.id is
<kafka.group_prefix>.<group>, crates/kafka/src/stage.rs) and the topic suffix
(<kafka.topic_prefix>.<topic>, crates/kafka/src/topics.rs). The scheduler
reads the store, not Kafka, and has none.
*/}}
{{- define "tidings.stageInputs" -}}
enricher: {group: enricher, topic: notify.requests}
sender-ios: {group: sender.ios, topic: deliver.ios}
sender-android: {group: sender.android, topic: deliver.android}
sender-sms: {group: sender.sms, topic: deliver.sms}
sender-email: {group: sender.email, topic: deliver.email}
sender-web: {group: sender.web, topic: deliver.web}
sender-in-app: {group: sender.in_app, topic: deliver.in_app}
retry-1: {group: retry.1, topic: retry.1}
retry-2: {group: retry.2, topic: retry.2}
retry-3: {group: retry.3, topic: retry.3}
template-stats: {group: template-stats, topic: tracking}
feed-planner: {group: feed-planner, topic: feed.posts}
feed-writer: {group: feed-writer, topic: feed.fanout}
feed-tally: {group: feed-tally, topic: feed.reactions}
feed-pruner: {group: feed-pruner, topic: feed.revisions}
feed-follows: {group: feed-follows, topic: feed.follows}
{{- end -}}

{{/*
The probes of a container serving /healthz and /readyz on the named port.
Liveness and startup use probes.livenessPath; readiness uses
probes.readinessPath.<gateway|stages> (/readyz by default). The startup probe gives a process time to reach Kafka and the
store before it listens.
Call with (dict "port" <port name> "component" "gateway"|"stages" "root" $).
*/}}
{{- define "tidings.probes" -}}
{{- $p := .root.Values.probes -}}
{{- with $p.startup -}}
startupProbe:
  httpGet: {path: {{ $p.livenessPath }}, port: {{ $.port }}}
  {{- toYaml . | nindent 2 }}
{{- end }}
livenessProbe:
  httpGet: {path: {{ $p.livenessPath }}, port: {{ .port }}}
  {{- toYaml $p.liveness | nindent 2 }}
readinessProbe:
  httpGet: {path: {{ get $p.readinessPath .component }}, port: {{ .port }}}
  {{- toYaml $p.readiness | nindent 2 }}
{{- end -}}

{{/* Volumes every tidings pod has: the config and a small writable /tmp
(the root filesystem is read-only). Call with (dict "config" <ConfigMap name> "root" $). */}}
{{- define "tidings.volumes" -}}
- name: config
  configMap:
    name: {{ .config }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .root.Values.tmpSizeLimit }}
{{- end -}}

{{- define "tidings.volumeMounts" -}}
- name: config
  mountPath: /etc/tidings/config
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/*
"true" when a KEDA ScaledObject scales this stage: keda.enabled, or the
stage's own keda.enabled, and the stage reads Kafka (not the scheduler).
Call with (dict "stage" <name> "spec" <stage values> "root" $).
*/}}
{{- define "tidings.kedaEnabled" -}}
{{- $inputs := include "tidings.stageInputs" .root | fromYaml -}}
{{- $own := (.spec.keda | default dict) -}}
{{- $on := hasKey $own "enabled" | ternary $own.enabled .root.Values.keda.enabled -}}
{{- if and $on (hasKey $inputs .stage) -}}true{{- end -}}
{{- end -}}
