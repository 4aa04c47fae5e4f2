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
tidings.toml. Strings are written with toJson: a JSON string is a valid TOML
basic string.
*/}}
{{- define "tidings.config" -}}
{{- $c := .Values.config -}}
{{- $servers := required "config.kafka.bootstrap_servers is required" $c.kafka.bootstrap_servers -}}
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

{{/* Container settings every tidings container shares. */}}
{{- define "tidings.containerCommon" -}}
image: {{ include "tidings.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- with .Values.extraEnv }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.securityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
