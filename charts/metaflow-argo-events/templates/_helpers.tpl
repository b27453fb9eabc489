{{/*
Labels shared by every object.
*/}}
{{- define "mfae.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: metaflow
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Hardened container securityContext for pods the Argo Events controller creates from our specs.
*/}}
{{- define "mfae.containerSecurityContext" -}}
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Name of the Service the controller creates for the webhook EventSource.
*/}}
{{- define "mfae.webhookServiceName" -}}
{{- printf "%s-eventsource-svc" .Values.webhook.eventSourceName -}}
{{- end }}
