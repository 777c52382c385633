{{/* Names, labels and the pieces several templates share. */}}

{{- define "ganserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ganserve.fullname" -}}
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

{{- define "ganserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ganserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ganserve.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end }}

{{- define "ganserve.labels" -}}
helm.sh/chart: {{ include "ganserve.chart" . | quote }}
{{ include "ganserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
{{- end }}

{{- define "ganserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ganserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image: the CPU target's tag, or the GPU target's (tag + gpu.tagSuffix). */}}
{{- define "ganserve.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- /* A tag of digits arrives as a number (--set: int64; a values file: float64). */}}
{{- if kindIs "float64" $tag }}{{ $tag = int64 $tag }}{{ end }}
{{- $tag = toString $tag }}
{{- if .Values.gpu.enabled }}{{ $tag = printf "%s%s" $tag .Values.gpu.tagSuffix }}{{ end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Where the pieces are mounted in the container. */}}
{{- define "ganserve.configDir" -}}/etc/ganserve/config{{- end }}
{{- define "ganserve.configFile" -}}{{ include "ganserve.configDir" . }}/ganserve.toml{{- end }}
{{- define "ganserve.tlsDir" -}}/etc/ganserve/tls{{- end }}
{{- define "ganserve.authDir" -}}/etc/ganserve/auth{{- end }}
{{- define "ganserve.engineCacheDir" -}}/var/cache/ganserve{{- end }}

{{- define "ganserve.authSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "ganserve.fullname" .)) }}
{{- end }}

{{/*
Seconds Kubernetes waits between the start of termination and SIGKILL: the preStop sleep, then
the server's shutdown_delay and drain_grace after SIGTERM (server defaults 0 and 10 when
unset), plus 5 s to exit: after the drain the server still gives its connections at least 1 s
to close (serve/server.py) and then exits, up to about 3 s in all. An explicit
terminationGracePeriodSeconds must be at least the same sum, or SIGKILL can cut that short.
*/}}
{{- define "ganserve.terminationGracePeriodSeconds" -}}
{{- $delay := .Values.config.shutdown_delay }}
{{- if kindIs "invalid" $delay }}{{ $delay = 0 }}{{ end }}
{{- $drain := .Values.config.drain_grace }}
{{- if kindIs "invalid" $drain }}{{ $drain = 10 }}{{ end }}
{{- $needed := addf (.Values.preStopSleepSeconds | default 0) $delay $drain 5 }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- ceil $needed | int }}
{{- else if lt (float64 .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least preStopSleepSeconds + config.shutdown_delay + config.drain_grace + 5 (%v): after the drain the server needs up to about 3 s more to close its connections and exit, which SIGKILL would cut short; raise it to %d, or leave it null to have it computed" .Values.terminationGracePeriodSeconds $needed (ceil $needed | int)) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds | int }}
{{- end }}
{{- end }}


{{/* "true" when the pods carry prometheus.io annotations: metrics.podAnnotations when set, else
only without a ServiceMonitor (Prometheus setups that read both would scrape each pod twice). */}}
{{- define "ganserve.prometheusAnnotations" -}}
{{- $m := .Values.metrics }}
{{- if $m.enabled }}
{{- if kindIs "invalid" $m.podAnnotations }}
{{- if not $m.serviceMonitor.enabled }}true{{ end }}
{{- else if $m.podAnnotations }}true
{{- end }}
{{- end }}
{{- end }}

{{/* The startup probe's timing: probes.startup, with failureThreshold (null: 90, i.e. 3 min at
periodSeconds 2, or 300, 10 min, with gpu.enabled, where TensorRT engine builds take minutes). */}}
{{- define "ganserve.startupProbe" -}}
{{- $probe := deepCopy (.Values.probes.startup | default dict) }}
{{- if kindIs "invalid" $probe.failureThreshold }}
{{- $_ := set $probe "failureThreshold" (ternary 300 90 (eq .Values.gpu.enabled true)) }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/* One probe's action: kubelet's native gRPC probe, or the health check command under TLS. */}}
{{- define "ganserve.probeAction" -}}
{{- if .Values.tls.enabled }}
exec:
  command:  # the image's HEALTHCHECK (serve/healthcheck.py; a test compares them)
    - python
    - -m
    - ganserve.serve.healthcheck
{{- else }}
grpc:
  port: {{ .Values.ports.grpc | int }}
{{- end }}
{{- end }}

{{/* A Kubernetes quantity from a string ("256Mi") or a number of bytes (printed whole: a
large float64 would print as 2.68435456e+08). */}}
{{- define "ganserve.quantity" -}}
{{- if kindIs "string" . }}{{ . | quote }}{{ else }}{{ . | int64 }}{{ end }}
{{- end }}

{{/* The headless Service's name: the full name cut to leave room for "-headless" (63 in all). */}}
{{- define "ganserve.headlessName" -}}
{{- printf "%s-headless" (include "ganserve.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/* A count or a percentage ("25%"), as Kubernetes' IntOrString. */}}
{{- define "ganserve.intOrPercent" -}}
{{- if kindIs "string" . }}{{ . | quote }}{{ else }}{{ . | int }}{{ end }}
{{- end }}

{{/* A value as TOML: strings, numbers, booleans and lists of them are JSON-compatible. */}}
{{- define "ganserve.toml" -}}
{{- toJson . }}
{{- end }}
