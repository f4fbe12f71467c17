{{/* Names: every object is prefixed with the release's full name. */}}
{{- define "wa8s.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wa8s.operator.name" -}}
{{- printf "%s-operator" (include "wa8s.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The operator's ServiceAccount: the chart's, or one the user manages. */}}
{{- define "wa8s.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "wa8s.operator.name" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create=false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "wa8s.installer.name" -}}
{{- printf "%s-node-installer" (include "wa8s.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Kubernetes recommended labels; "component" is the part (operator, node-installer). */}}
{{- define "wa8s.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: wa8s
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: wa8s
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{- define "wa8s.selectorLabels" -}}
app.kubernetes.io/name: wa8s
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* repository@digest when a digest is given (a released chart pins its images), else
repository:tag (the appVersion by default). */}}
{{- define "wa8s.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* KUBERNETES_SERVICE_HOST/PORT when the API is not reached through the kubernetes Service. */}}
{{- define "wa8s.apiEnv" -}}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.kubernetesApi.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ default "443" .Values.kubernetesApi.port | quote }}
{{- end -}}

{{- define "wa8s.runtimeClassName" -}}
{{- default .Values.runtimeClass.name .Values.operator.runtimeClassName -}}
{{- end -}}

{{/*
The operator's --pod-env flags: the runtime settings it writes into every wasm pod.
*/}}
{{- define "wa8s.podEnvArgs" -}}
{{- $w := .Values.workloads -}}
{{- with $w.logLevel }}
- {{ printf "--pod-env=WA8S_LOG=%s" . | quote }}
{{- end }}
{{- $format := $w.logFormat | default .Values.logging.format }}
{{- if ne $format "text" }}
- --pod-env=WA8S_LOG_FORMAT={{ $format }}
{{- end }}
{{- if $w.accessLog }}
- --pod-env=WA8S_ACCESS_LOG=json
{{- end }}
{{- with .Values.traces.otlpEndpoint }}
- {{ printf "--pod-env=OTEL_EXPORTER_OTLP_ENDPOINT=%s" . | quote }}
{{- end }}
{{- range $name, $value := .Values.traces.env }}
- {{ printf "--pod-env=%s=%s" $name $value | quote }}
{{- end }}
{{- end }}

{{/* The Secrets holding registry CAs, each once (a JSON list). */}}
{{- define "wa8s.registryCASecrets" -}}
{{- $secrets := list -}}
{{- range .Values.operator.registryCAs -}}
{{- $secrets = append $secrets .secretName -}}
{{- end -}}
{{- $secrets | uniq | toJson -}}
{{- end -}}
