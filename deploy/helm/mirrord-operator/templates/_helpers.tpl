{{- define "mirrord-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mirrord-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mirrord-operator.labels" -}}
{{ include "mirrord-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "mirrord-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mirrord-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mirrord-operator.caSecret" -}}
{{- default (printf "%s-ca" (include "mirrord-operator.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{- define "mirrord-operator.apiServerSecret" -}}
{{- printf "%s-apiserver-tls" (include "mirrord-operator.fullname" .) -}}
{{- end -}}

{{- define "mirrord-operator.licenseSecret" -}}
{{- if .Values.license.existingSecret -}}
{{- .Values.license.existingSecret -}}
{{- else if .Values.license.contents -}}
{{- printf "%s-license" (include "mirrord-operator.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The operator's configuration file: the chart's fixed parts, then the user's. */}}
{{/* The Secret that keeps the registry of issued credentials across restarts. */}}
{{- define "mirrord-operator.registrySecret" -}}
{{ include "mirrord-operator.fullname" . }}-registry
{{- end }}

{{- define "mirrord-operator.config" -}}
[api]
listen = "0.0.0.0:{{ .Values.service.apiPort }}"
{{- if .Values.license.publicKey }}

[license]
public_key = {{ .Values.license.publicKey | quote }}
{{- end }}


[kubernetes]
agent_image = {{ printf "%s:%s" .Values.agent.image.repository (.Values.agent.image.tag | default .Chart.AppVersion) | quote }}
agent_image_pull_policy = {{ .Values.agent.image.pullPolicy | quote }}
gateway_listen = "0.0.0.0:{{ .Values.agent.gatewayPort }}"
agent_linger = {{ .Values.agent.linger | quote }}
agent_lease = {{ .Values.agent.lease | quote }}
agent_privileged = {{ .Values.agent.privileged }}
agent_ephemeral = {{ .Values.agent.ephemeral }}
{{- if gt (int .Values.replicas) 1 }}
leader_lease = {{ include "mirrord-operator.fullname" . | quote }}
leader_lease_duration = {{ .Values.leaderElection.leaseDuration | quote }}
{{- end }}
registry_secret = {{ include "mirrord-operator.registrySecret" . | quote }}
owner_cluster_role = {{ include "mirrord-operator.fullname" . | quote }}
{{- if .Values.apiService.enabled }}
aggregated_api_listen = "0.0.0.0:{{ .Values.apiService.port }}"
aggregated_api_tls = "/etc/mirrord/apiserver-tls"
{{- end }}
{{- with .Values.operator.config }}

{{ . }}
{{- end }}
{{- end -}}
