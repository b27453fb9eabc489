{{/*
Labels shared by every object. Call with the root context.
*/}}
{{- define "metaflow-airflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: metaflow
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The proxy's selector labels (Deployment, Service, NetworkPolicy).
*/}}
{{- define "metaflow-airflow.proxySelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: db-proxy
{{- end }}

{{/*
Airflow's own component pods (scheduler, webserver, migration Job, triggerer, statsd) as the
Apache Airflow chart labels them. Metaflow's step pods run in the same namespace and carry
whatever labels a flow asks for, but the KubernetesPodOperator that launches them always adds
kubernetes_pod_operator=True after those, so requiring that label's absence keeps step pods
out even when a flow copies Airflow's labels.
*/}}
{{- define "metaflow-airflow.airflowComponents" -}}
podSelector:
  matchLabels:
    tier: airflow
    release: {{ .Values.airflowRelease }}
  matchExpressions:
    - key: kubernetes_pod_operator
      operator: DoesNotExist
{{- end }}

{{/*
"repository:tag" of an image; refuses empty or floating tags.
*/}}
{{- define "metaflow-airflow.image" -}}
{{- $repo := required (printf "%s.repository is required" .name) .image.repository -}}
{{- $tag := toString (required (printf "%s.tag is required" .name) .image.tag) -}}
{{- if eq $tag "latest" -}}
{{- fail (printf "%s.tag must be a pinned version, not \"latest\"" .name) -}}
{{- end -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end }}

{{/*
A ServiceAccount with an optional Workload Identity annotation and no API token.
Call with (dict "root" $ "account" .Values.serviceAccounts.steps "component" "steps").
*/}}
{{- define "metaflow-airflow.serviceAccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .account.name }}
  labels:
    {{- include "metaflow-airflow.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  {{- with .account.gcpServiceAccount }}
  annotations:
    iam.gke.io/gcp-service-account: {{ . }}
  {{- end }}
# Neither the proxy nor Metaflow's steps call the Kubernetes API; Workload Identity works
# through the metadata server.
automountServiceAccountToken: false
{{- end }}
