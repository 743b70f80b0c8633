{{- define "paygate.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "paygate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "paygate.labels" -}}
app.kubernetes.io/name: {{ include "paygate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "paygate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paygate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* No image is published for paygate: the operator builds it (see README.md) and names it. */}}
{{- define "paygate.image" -}}
{{ required "image.repository is required: build and push paygate's image (docker build -t REGISTRY/paygate:TAG . at the repository root, see helm/paygate/README.md) and set image.repository=REGISTRY/paygate" .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "paygate.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- include "paygate.fullname" . -}}
{{- end -}}
{{- end -}}

{{- define "paygate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "paygate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The container's security: non-root, read-only root filesystem, nothing extra. */}}
{{- define "paygate.containerSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "paygate.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "paygate.fullname" . }}
  - secretRef:
      name: {{ include "paygate.secretName" . }}
{{- end -}}

{{/* The pod's whole stop must fit in terminationGracePeriodSeconds, which counts from the start of
     preStop: the preStop sleep, then paygate's drain (config.shutdownGraceMs, after which paygate
     exits by itself), then 5 s to close the database pool, let the closed connections linger (up to
     2 s, so no client sees a reset) and write out the last log lines. Past it the kubelet kills the
     process, and requests still in flight fail. */}}
{{- define "paygate.checkShutdownTiming" -}}
{{- $drain := div (add (int64 .Values.config.shutdownGraceMs) 999) 1000 -}}
{{- $needed := add (int64 .Values.preStopSleepSeconds) $drain 5 -}}
{{- if lt (int64 .Values.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least preStopSleepSeconds (%d) + config.shutdownGraceMs in seconds (%d) + 5 = %d, or the kubelet kills paygate before it has drained" (int64 .Values.terminationGracePeriodSeconds) (int64 .Values.preStopSleepSeconds) $drain $needed) -}}
{{- end -}}
{{- end -}}
