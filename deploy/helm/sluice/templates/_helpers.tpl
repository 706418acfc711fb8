{{/* Names and labels. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "sluice.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "sluice.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sluice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "sluice.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret holding the admin key hash and the Redis password: the chart's own, or an existing one. */}}
{{- define "sluice.secretName" -}}
{{- default (printf "%s-secrets" (include "sluice.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "sluice.chartSecret" -}}
{{- if and (not .Values.secrets.existingSecret) (or .Values.secrets.adminKeyHash .Values.secrets.redisPassword) -}}true{{- end -}}
{{- end -}}

{{- define "sluice.adminKeyHashSet" -}}
{{- if or .Values.secrets.adminKeyHash (and .Values.secrets.existingSecret .Values.secrets.existingSecretHasAdminKeyHash) -}}true{{- end -}}
{{- end -}}

{{- define "sluice.redisPasswordSet" -}}
{{- if or .Values.secrets.redisPassword (and .Values.secrets.existingSecret .Values.secrets.existingSecretHasRedisPassword) -}}true{{- end -}}
{{- end -}}

{{- define "sluice.redisHost" -}}
{{- printf "%s-redis" (include "sluice.fullname" .) -}}
{{- end -}}

{{/* The state URL the gateway reads: the bundled Redis, an external one, or memory:// when neither. */}}
{{- define "sluice.stateURL" -}}
{{- if .Values.redis.bundled.enabled -}}
{{- $auth := ternary ":${SLUICE_REDIS_PASSWORD}@" "" (eq (include "sluice.redisPasswordSet" .) "true") -}}
{{- printf "redis://%s%s:6379/0" $auth (include "sluice.redisHost" .) -}}
{{- else if .Values.redis.external.url -}}
{{- .Values.redis.external.url -}}
{{- else -}}
memory://
{{- end -}}
{{- end -}}

{{- define "sluice.autoscaled" -}}
{{- if or .Values.autoscaling.hpa.enabled .Values.autoscaling.keda.enabled -}}true{{- end -}}
{{- end -}}

{{/* Gateway processes sharing the store, at most: the fail-open share of each limit is divided by it. */}}
{{- define "sluice.gatewayProcesses" -}}
{{- $replicas := int .Values.replicaCount -}}
{{- if .Values.autoscaling.hpa.enabled -}}{{- $replicas = int .Values.autoscaling.hpa.maxReplicas -}}{{- end -}}
{{- if .Values.autoscaling.keda.enabled -}}{{- $replicas = int .Values.autoscaling.keda.maxReplicas -}}{{- end -}}
{{- mul $replicas (int .Values.server.workers) -}}
{{- end -}}

{{/* The headless Service of one engine pool, and the name its DNS records live under. */}}
{{- define "sluice.engineServiceName" -}}
{{- printf "%s-engines-%s" (include "sluice.fullname" .root) (include "sluice.modelSlug" .pool.model) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A model's name as a DNS label and label value: Qwen/Qwen3-8B.instruct -> qwen-qwen3-8b-instruct. */}}
{{- define "sluice.modelSlug" -}}
{{- regexReplaceAll "[^a-z0-9-]+" (lower .) "-" | trimAll "-" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.engineDNS" -}}
{{- $host := printf "%s.%s.svc.%s" (include "sluice.engineServiceName" .) .root.Release.Namespace .root.Values.clusterDomain -}}
{{- if eq (default "A" .pool.record) "SRV" -}}
{{- printf "_http._tcp.%s" $host -}}
{{- else -}}
{{- $host -}}
{{- end -}}
{{- end -}}

{{/*
sluice.yaml: .Values.config (docs/configuration.md), with what the chart owns filled in: server.host/port/workers,
state, auth.admin_key_hash (from the Secret, as ${SLUICE_ADMIN_KEY_HASH}), quota.gateway_replicas (unless set),
and models[].engine.discovery for each pool in .Values.engines.
*/}}
{{- define "sluice.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $server := merge (dict "host" "0.0.0.0" "port" (int .Values.server.port) "workers" (int .Values.server.workers)) (default (dict) $cfg.server) -}}
{{- $_ := set $cfg "server" $server -}}
{{- $_ = set $cfg "state" (include "sluice.stateURL" .) -}}
{{- if eq (include "sluice.adminKeyHashSet" .) "true" -}}
{{- $_ = set $cfg "auth" (merge (dict "admin_key_hash" "${SLUICE_ADMIN_KEY_HASH}") (default (dict) $cfg.auth)) -}}
{{- end -}}
{{- $quota := default (dict) $cfg.quota -}}
{{- if not (hasKey $quota "gateway_replicas") -}}
{{- $_ = set $quota "gateway_replicas" (int (include "sluice.gatewayProcesses" .)) -}}
{{- end -}}
{{- $_ = set $cfg "quota" $quota -}}
{{- $models := list -}}
{{- $named := dict -}}
{{- range $cfg.models -}}{{- $_ := set $named .name true -}}{{- end -}}
{{- range $pool := .Values.engines -}}
{{- if not (hasKey $named $pool.model) -}}
{{- $models = append $models (dict "name" $pool.model "engine" (dict "dialect" (default "vllm" $pool.dialect))) -}}
{{- end -}}
{{- end -}}
{{- $root := . -}}
{{- $out := list -}}
{{- range $model := concat (default (list) $cfg.models) $models -}}
{{- range $pool := $root.Values.engines -}}
{{- if eq $pool.model $model.name -}}
{{- $discovery := dict "dns" (include "sluice.engineDNS" (dict "root" $root "pool" $pool)) "record" (default "A" $pool.record) "interval_s" (default 5 $pool.interval_s) -}}
{{- if ne (default "A" $pool.record) "SRV" -}}{{- $_ := set $discovery "port" (int (default 8000 $pool.port)) -}}{{- end -}}
{{- $engine := merge (dict "discovery" $discovery) (default (dict "dialect" (default "vllm" $pool.dialect)) $model.engine) -}}
{{- $_ := set $model "engine" $engine -}}
{{- end -}}
{{- end -}}
{{- $out = append $out $model -}}
{{- end -}}
{{- $_ = set $cfg "models" $out -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Guards: settings that would run but silently misbehave. */}}
{{- define "sluice.validate" -}}
{{- if and .Values.autoscaling.hpa.enabled .Values.autoscaling.keda.enabled -}}
{{- fail "autoscaling.hpa and autoscaling.keda are both enabled: KEDA makes an HPA of its own, and the two would fight over the Deployment's replicas. Enable one." -}}
{{- end -}}
{{- if and .Values.redis.bundled.enabled .Values.redis.external.url -}}
{{- fail "redis.bundled.enabled and redis.external.url are both set: choose one state store." -}}
{{- end -}}
{{- if and (eq (include "sluice.stateURL" .) "memory://") (or (gt (int .Values.replicaCount) 1) (eq (include "sluice.autoscaled" .) "true")) -}}
{{- fail "more than one gateway replica on memory:// state would multiply every limit: enable redis.bundled or set redis.external.url." -}}
{{- end -}}
{{- end -}}
