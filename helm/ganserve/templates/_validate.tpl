{{/*
Checks across values that values.schema.json cannot express. Each refuses, at install or
template time, a combination Kubernetes would reject, the server would crash-loop on, or the chart
would silently ignore, naming the values and what to change. deployment.yaml includes it.
*/}}
{{- define "ganserve.validate" -}}
{{- $v := .Values }}

{{- /* Ports: the server listens on two, the Service exposes two. */}}
{{- if $v.metrics.enabled }}
{{- if eq (int $v.ports.grpc) (int $v.ports.metrics) }}
{{- fail (printf "ports.grpc and ports.metrics are both %d: the server cannot listen for gRPC and /metrics on one port; change one of them (or set metrics.enabled false)" (int $v.ports.grpc)) }}
{{- end }}
{{- if eq (int $v.service.port) (int $v.service.metricsPort) }}
{{- fail (printf "service.port and service.metricsPort are both %d: a Service cannot expose two ports as one; change one of them" (int $v.service.port)) }}
{{- end }}
{{- end }}

{{- /* Server settings the server would refuse at start (serve/config.py). */}}
{{- /* null leaves max_batch_size out of the file: the server's default, 64, applies */}}
{{- $maxBatch := $v.config.max_batch_size | default 64 }}
{{- range $v.config.preferred_batch_sizes }}
{{- if gt (int .) (int $maxBatch) }}
{{- fail (printf "config.preferred_batch_sizes holds %d, above config.max_batch_size (%d): no batch grows past max_batch_size; raise config.max_batch_size or remove %d" (int .) (int $maxBatch) (int .)) }}
{{- end }}
{{- end }}
{{- if not $v.gpu.enabled }}
{{- $gpuBackends := list "onnxruntime-cuda" "onnxruntime-tensorrt" "tensorrt" }}
{{- if has $v.config.backend $gpuBackends }}
{{- fail (printf "config.backend %s needs a GPU, but gpu.enabled is false (the CPU image has no CUDA): set gpu.enabled true, or config.backend auto or onnxruntime-cpu" $v.config.backend) }}
{{- end }}
{{- range $name, $model := $v.models }}
{{- if and $model (has $model.backend $gpuBackends) }}
{{- fail (printf "models.%s.backend %s needs a GPU, but gpu.enabled is false (the CPU image has no CUDA): set gpu.enabled true, or models.%s.backend auto or onnxruntime-cpu" $name $model.backend $name) }}
{{- end }}
{{- end }}
{{- if $v.gpu.engineCache.existingClaim }}
{{- fail "gpu.engineCache.existingClaim is set but gpu.enabled is false, so nothing would mount it: set gpu.enabled true, or remove gpu.engineCache.existingClaim" }}
{{- end }}
{{- end }}
{{- /* GANSERVE_* variables of `ganserve serve` beat the config file: the chart's values would be
ignored. Others (gan-client's GANSERVE_TARGET) pass. The config keys are
the schema's config properties (a test keeps the two lists and the server's flags in step). */}}
{{- $chartOwned := dict "GANSERVE_CONFIG" "config" "GANSERVE_PORT" "ports.grpc" "GANSERVE_METRICS_PORT" "ports.metrics" "GANSERVE_MODEL_REPOSITORY" "modelRepository" "GANSERVE_ENGINE_CACHE_DIR" "gpu.engineCache" "GANSERVE_AUTH_TOKEN_FILE" "auth" "GANSERVE_AUTH_TOKEN" "auth.existingSecret (or auth.token)" }}
{{- $configKeys := list "access_log" "admin" "backend" "cache_bytes" "concurrent_accepts" "default_model" "drain_grace" "engine_timeout" "event_loop" "host" "instances" "intra_op_threads" "log_format" "log_level" "max_batch_size" "max_connection_age" "max_items_per_call" "max_queue_delay_us" "max_queue_size" "max_request_bytes" "metrics_host" "parallel_batch_us" "preferred_batch_sizes" "shutdown_delay" "warmup" }}
{{- range $env := $v.extraEnv }}
{{- $name := $env.name | default "" }}
{{- $key := trimPrefix "GANSERVE_" $name | lower }}
{{- $instead := "" }}
{{- if hasKey $chartOwned $name }}{{ $instead = get $chartOwned $name }}
{{- else if or (hasPrefix "GANSERVE_TLS_" $name) (hasPrefix "GANSERVE_HEALTH_" $name) }}{{ $instead = "tls" }}
{{- else if and (hasPrefix "GANSERVE_" $name) (has $key $configKeys) }}{{ $instead = printf "config.%s" $key }}
{{- end }}
{{- if $instead }}
{{- fail (printf "extraEnv sets %s, which would override the chart's setting of it: set %s instead" $name $instead) }}
{{- end }}
{{- end }}

{{- /* Models: each source has its own settings; the others' would be ignored. */}}
{{- $repo := $v.modelRepository }}
{{- if and (eq $repo.source "persistentVolumeClaim") (not $repo.claimName) }}
{{- fail "modelRepository.source persistentVolumeClaim needs modelRepository.claimName" }}
{{- end }}
{{- if and (eq $repo.source "volume") (not $repo.volume) }}
{{- fail "modelRepository.source volume needs modelRepository.volume (a volume source, e.g. nfs: {server: ..., path: ...})" }}
{{- end }}
{{- if and $repo.claimName (ne $repo.source "persistentVolumeClaim") }}
{{- fail (printf "modelRepository.claimName is set but modelRepository.source is %s, so it would be ignored: set modelRepository.source persistentVolumeClaim, or remove modelRepository.claimName" $repo.source) }}
{{- end }}
{{- if and $repo.volume (ne $repo.source "volume") }}
{{- fail (printf "modelRepository.volume is set but modelRepository.source is %s, so it would be ignored: set modelRepository.source volume, or remove modelRepository.volume" $repo.source) }}
{{- end }}
{{- if $repo.subPath }}
{{- if eq $repo.source "bundled" }}
{{- fail "modelRepository.subPath is set but modelRepository.source is bundled (the image's own /models), so it would be ignored: set modelRepository.source persistentVolumeClaim or volume, or remove modelRepository.subPath" }}
{{- end }}
{{- if or (hasPrefix "/" $repo.subPath) (regexMatch "(^|/)\\.\\.(/|$)" $repo.subPath) }}
{{- fail (printf "modelRepository.subPath %q must be a relative path inside the volume, without '..' (e.g. ganserve/models)" $repo.subPath) }}
{{- end }}
{{- end }}

{{- /* TLS and the token: settings of a feature that is off would be ignored. */}}
{{- if $v.tls.enabled }}
{{- if not $v.tls.secretName }}
{{- fail "tls.enabled needs tls.secretName: a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt" }}
{{- end }}
{{- else }}
{{- range $key := list "secretName" "clientAuth" "probeServerName" }}
{{- if index $v.tls $key }}
{{- fail (printf "tls.%s is set but tls.enabled is false, so the server would serve plaintext and ignore it: set tls.enabled true (with tls.secretName), or remove tls.%s" $key $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- if $v.auth.enabled }}
{{- if and (not $v.auth.existingSecret) (not $v.auth.token) }}
{{- fail "auth.enabled needs auth.existingSecret (a Secret holding the token) or auth.token" }}
{{- end }}
{{- if and $v.auth.existingSecret $v.auth.token }}
{{- fail "auth.existingSecret and auth.token are both set, and auth.token would be ignored: keep the token in the Secret and remove auth.token, or remove auth.existingSecret to have the chart create the Secret from auth.token" }}
{{- end }}
{{- else }}
{{- range $key := list "token" "existingSecret" }}
{{- if index $v.auth $key }}
{{- fail (printf "auth.%s is set but auth.enabled is false, so the server would accept calls without a token: set auth.enabled true, or remove auth.%s" $key $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* ModelAdmin lists and reloads models; without a token anyone who reaches the port could. */}}
{{- if and $v.config.admin (not $v.auth.enabled) }}
{{- fail "config.admin is true but auth.enabled is false, so anyone who reaches the gRPC port could list and reload models: set auth.enabled true (with auth.existingSecret or auth.token), or config.admin false" }}
{{- end }}
{{- /* The server strips the token file and needs printable ASCII (gRPC metadata); the
schema checks the length. The token is not repeated here, so it stays out of logs. */}}
{{- if and $v.auth.token (not (regexMatch "^[!-~]([ -~]*[!-~])?$" $v.auth.token)) }}
{{- fail "auth.token must be printable ASCII (letters, digits, punctuation, inner spaces) with no leading or trailing whitespace: gRPC metadata cannot carry other characters and the server strips the token file; generate one with e.g. `openssl rand -hex 32`" }}
{{- end }}

{{- /* Pod metadata the chart owns. */}}
{{- range $key := list "app.kubernetes.io/name" "app.kubernetes.io/instance" }}
{{- if hasKey ($v.podLabels | default dict) $key }}
{{- fail (printf "podLabels sets %s, a label of the Deployment's selector (the chart sets it; a pod without it would not belong to the Deployment): remove it from podLabels (nameOverride changes the name)" $key) }}
{{- end }}
{{- end }}
{{- $ownAnnotations := list "checksum/config" }}
{{- if include "ganserve.prometheusAnnotations" . }}
{{- $ownAnnotations = concat $ownAnnotations (list "prometheus.io/scrape" "prometheus.io/port" "prometheus.io/path") }}
{{- end }}
{{- range $key := $ownAnnotations }}
{{- if hasKey ($v.podAnnotations | default dict) $key }}
{{- fail (printf "podAnnotations sets %s, which the chart sets itself: remove it from podAnnotations (the prometheus.io ones go with metrics.podAnnotations false)" $key) }}
{{- end }}
{{- end }}

{{- /* The security contexts: the container's settings win over the pod's. The kubelet refuses to
     start a container that must run as non-root but is told to run as UID 0 (with no
     runAsUser at all it checks the image's USER, 65532 in ganserve's images). */}}
{{- $podSc := $v.podSecurityContext | default dict }}
{{- $sc := $v.securityContext | default dict }}
{{- $nonRootFrom := "" }}
{{- if not (kindIs "invalid" $sc.runAsNonRoot) }}
{{- if $sc.runAsNonRoot }}{{ $nonRootFrom = "securityContext.runAsNonRoot" }}{{ end }}
{{- else if $podSc.runAsNonRoot }}{{ $nonRootFrom = "podSecurityContext.runAsNonRoot" }}
{{- end }}
{{- $userFrom := "" }}
{{- if not (kindIs "invalid" $sc.runAsUser) }}
{{- if eq (int64 $sc.runAsUser) 0 }}{{ $userFrom = "securityContext.runAsUser" }}{{ end }}
{{- else if and (not (kindIs "invalid" $podSc.runAsUser)) (eq (int64 $podSc.runAsUser) 0) }}
{{- $userFrom = "podSecurityContext.runAsUser" }}
{{- end }}
{{- if and $nonRootFrom $userFrom }}
{{- fail (printf "%s is 0 (root) but %s is true, so the kubelet would refuse to start the container (CreateContainerConfigError): set %s to a non-root UID (the image's user is 65532), or remove it" $userFrom $nonRootFrom $userFrom) }}
{{- end }}

{{- /* Metrics and the ServiceMonitor. */}}
{{- if $v.metrics.serviceMonitor.enabled }}
{{- if not $v.metrics.enabled }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled: with metrics off the pods serve no /metrics to scrape; set metrics.enabled true, or metrics.serviceMonitor.enabled false" }}
{{- end }}
{{- $sm := $v.metrics.serviceMonitor }}
{{- $interval := include "ganserve.durationMs" $sm.interval | atoi }}
{{- if eq $interval 0 }}
{{- fail (printf "metrics.serviceMonitor.interval %q must be longer than 0 (e.g. 15s)" $sm.interval) }}
{{- end }}
{{- if gt (include "ganserve.durationMs" $sm.scrapeTimeout | atoi) $interval }}
{{- fail (printf "metrics.serviceMonitor.scrapeTimeout (%s) is longer than metrics.serviceMonitor.interval (%s), which Prometheus refuses: shorten scrapeTimeout or lengthen interval" $sm.scrapeTimeout $sm.interval) }}
{{- end }}
{{- end }}

{{- /* The autoscaler. */}}
{{- $hpa := $v.autoscaling }}
{{- if $hpa.enabled }}
{{- if not (or $hpa.targetCPUUtilizationPercentage $hpa.customMetric.enabled) }}
{{- fail "autoscaling.enabled needs autoscaling.targetCPUUtilizationPercentage or autoscaling.customMetric.enabled" }}
{{- end }}
{{- if and $hpa.customMetric.enabled (not $v.metrics.enabled) }}
{{- fail "autoscaling.customMetric needs metrics.enabled: the metric comes from the pods' /metrics" }}
{{- end }}
{{- if gt (int $hpa.minReplicas) (int $hpa.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d): lower minReplicas or raise maxReplicas" (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- end }}
{{- $requests := (($v.resources | default dict).requests) | default dict }}
{{- if and $hpa.targetCPUUtilizationPercentage (not $requests.cpu) }}
{{- fail "autoscaling.targetCPUUtilizationPercentage is a percentage of the CPU request, but resources.requests.cpu is not set, so the HPA could not compute it: set resources.requests.cpu, or set autoscaling.targetCPUUtilizationPercentage null and use autoscaling.customMetric" }}
{{- end }}
{{- end }}

{{- /* Disruptions and rollouts. */}}
{{- $pdb := $v.podDisruptionBudget }}
{{- if and $pdb.enabled (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) }}
{{- fail "podDisruptionBudget.enabled needs podDisruptionBudget.maxUnavailable or podDisruptionBudget.minAvailable (a count, or a percentage such as \"25%\"); or set podDisruptionBudget.enabled false" }}
{{- end }}
{{- /* A budget that allows no eviction makes every node drain wait forever (Kubernetes rounds a
     minAvailable percentage up). */}}
{{- if $pdb.enabled }}
{{- $floor := ternary (int $v.autoscaling.minReplicas) (int $v.replicaCount) (eq $v.autoscaling.enabled true) }}
{{- $floorName := ternary "autoscaling.minReplicas" "replicaCount" (eq $v.autoscaling.enabled true) }}
{{- if not (kindIs "invalid" $pdb.minAvailable) }}
{{- $min := $pdb.minAvailable }}
{{- $need := 0 }}
{{- if and (kindIs "string" $min) (hasSuffix "%" $min) }}
{{- $need = div (add (mul (atoi (trimSuffix "%" $min)) $floor) 99) 100 | int }}
{{- else }}
{{- $need = int $min }}
{{- end }}
{{- if ge $need $floor }}
{{- fail (printf "podDisruptionBudget.minAvailable (%v) keeps all %d pods (%s) up, so no pod could be evicted and every node drain would wait forever: lower minAvailable, raise %s, or use maxUnavailable" $min $floor $floorName $floorName) }}
{{- end }}
{{- else if eq (toString $pdb.maxUnavailable | trimSuffix "%") "0" }}
{{- fail (printf "podDisruptionBudget.maxUnavailable (%v) allows no pod to be evicted, so every node drain would wait forever: set it to 1 or more (or a percentage above 0)" $pdb.maxUnavailable) }}
{{- end }}
{{- end }}
{{- $strategy := $v.strategy | default dict }}
{{- if ne ($strategy.type | default "RollingUpdate") "Recreate" }}
{{- $rolling := $strategy.rollingUpdate | default dict }}
{{- if and (hasKey $rolling "maxSurge") (hasKey $rolling "maxUnavailable") (eq (toString $rolling.maxSurge | trimSuffix "%") "0") (eq (toString $rolling.maxUnavailable | trimSuffix "%") "0") }}
{{- fail "strategy.rollingUpdate.maxSurge and maxUnavailable are both 0, so a rollout could never replace a pod: set maxSurge to 1 (or maxUnavailable above 0)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A Prometheus duration ("1m30s", units y w d h m s ms, largest first) in milliseconds. */}}
{{- define "ganserve.durationMs" -}}
{{- $text := . }}
{{- $ms := 0 }}
{{- $units := dict "y" 31536000000 "w" 604800000 "d" 86400000 "h" 3600000 "m([0-9]|$)" 60000 "s" 1000 "ms" 1 }}
{{- range $unit, $scale := $units }}
{{- $count := regexFind (printf "[0-9]+%s" $unit) $text | regexFind "^[0-9]+" | default "0" | atoi }}
{{- $ms = add $ms (mul $count $scale) }}
{{- end }}
{{- $ms }}
{{- end }}
