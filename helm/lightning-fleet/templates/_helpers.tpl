{{/* Names and labels. */}}
{{- define "fleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "fleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "fleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fleet.secretName" -}}
{{- default (printf "%s-secrets" (include "fleet.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "fleet.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* The port of an address like 0.0.0.0:8080. */}}
{{- define "fleet.port" -}}
{{- regexReplaceAll "^.*:" . "" }}
{{- end }}

{{- define "fleet.dispatcherPort" -}}
{{- include "fleet.port" .Values.config.http.listen }}
{{- end }}

{{/* The worker's Prometheus endpoint: worker.metrics_listen (default 0.0.0.0:9464). */}}
{{- define "fleet.workerMetricsPort" -}}
{{- include "fleet.port" (dig "metrics_listen" "0.0.0.0:9464" .Values.config.worker) }}
{{- end }}

{{/*
A TOML value. Helm reads numbers from values files as floats, so whole numbers are printed as
integers; strings and string arrays use JSON escaping, which TOML accepts.
*/}}
{{- define "fleet.tomlValue" -}}
{{- if kindIs "bool" . }}{{ ternary "true" "false" . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) }}{{ if eq (floor .) (float64 .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "int32" .) (kindIs "uint64" .) }}{{ . }}
{{- else if kindIs "slice" . }}{{ toJson . }}
{{- else }}{{ toString . | toJson }}
{{- end }}
{{- end }}

{{/* `key = value` lines of a table, sorted; null values (unset optional keys) and sub-tables
(written as their own `[section.key]` tables) are left out. */}}
{{- define "fleet.tomlPairs" -}}
{{- range $key, $value := . }}
{{- if not (or (kindIs "invalid" $value) (kindIs "map" $value)) }}
{{ $key }} = {{ include "fleet.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end }}

{{/* Keys that hold credentials: they come from the Secret, never from config. */}}
{{- define "fleet.checkNoSecretsInConfig" -}}
{{- $secretKeys := dict "rabbitmq" (list "url") "redis" (list "url") "s3" (list "access_key_id" "secret_access_key") "http" (list "api_keys") "client" (list "api_key") }}
{{- range $section, $keys := $secretKeys }}
{{- range $key := $keys }}
{{- if hasKey (index $.Values.config $section | default dict) $key }}
{{- fail (printf "config.%s.%s is a credential: set it under secrets (or secrets.existingSecret), not config" $section $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $tenant, $settings := (.Values.config.tenants | default dict) }}
{{- if hasKey (($settings | default dict).webhooks | default dict) "secret" }}
{{- fail (printf "config.tenants.%s.webhooks.secret is a credential: set it in secrets.webhookSecrets, not config" $tenant) }}
{{- end }}
{{- end }}
{{- end }}

{{/* One pool with the defaults filled in. Call with (dict "root" $ "pool" $pool). */}}
{{- define "fleet.pool" -}}
{{- $pool := mustMergeOverwrite (deepCopy .root.Values.workers.defaults) (deepCopy .pool) }}
{{- toYaml $pool }}
{{- end }}

{{/* The queue-name regex of a model: <queue_prefix>.<model>.(interactive|bulk), and every tenant's lane of them (@<tenant>). */}}
{{- define "fleet.queueRegex" -}}
{{- printf "^%s\\.%s\\.(interactive|bulk)(@[A-Za-z0-9._-]+)?$" (regexQuoteMeta .root.Values.config.rabbitmq.queue_prefix) (regexQuoteMeta .model) }}
{{- end }}

{{/* A pool's effective worker.drain_timeout_secs. */}}
{{- define "fleet.drainSeconds" -}}
{{- $cfg := .root.Values.config.worker.drain_timeout_secs }}
{{- int64 (dig "drain_timeout_secs" $cfg .pool.workerConfig) }}
{{- end }}

{{/* Environment shared by every fleet container: the config file and the credentials. */}}
{{- define "fleet.env" -}}
- name: FLEET_CONFIG
  value: /etc/fleet/fleet.toml
- name: FLEET__RABBITMQ__URL
  valueFrom:
    secretKeyRef: {name: {{ include "fleet.secretName" . }}, key: rabbitmq-url}
- name: FLEET__RABBITMQ__URLS
  valueFrom:
    secretKeyRef: {name: {{ include "fleet.secretName" . }}, key: rabbitmq-urls, optional: true}
- name: FLEET__REDIS__URL
  valueFrom:
    secretKeyRef: {name: {{ include "fleet.secretName" . }}, key: redis-url}
- name: FLEET__S3__ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ include "fleet.secretName" . }}, key: s3-access-key-id, optional: true}
- name: FLEET__S3__SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "fleet.secretName" . }}, key: s3-secret-access-key, optional: true}
{{- end }}
