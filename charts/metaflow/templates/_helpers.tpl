{{/*
Labels shared by every object. Call with the root context.
*/}}
{{- define "metaflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: metaflow
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that tell one component's pods apart. These are the Deployment and Service selectors.
Call with (dict "root" $ "component" "metadata-service").
*/}}
{{- define "metaflow.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Full label set for a component's objects.
*/}}
{{- define "metaflow.componentLabels" -}}
{{ include "metaflow.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Pod template labels: the selector plus part-of, but no chart version, so that a chart-only
version bump does not restart the pods.
*/}}
{{- define "metaflow.podLabels" -}}
{{ include "metaflow.selectorLabels" . }}
app.kubernetes.io/part-of: metaflow
{{- end }}

{{/*
"repository:tag" for one entry of .Values.images; refuses empty or floating tags.
Call with (dict "image" .Values.images.ui "name" "images.ui").
*/}}
{{- define "metaflow.image" -}}
{{- $repo := required (printf "%s.repository is required" .name) .image.repository -}}
{{- $tag := toString (required (printf "%s.tag is required" .name) .image.tag) -}}
{{- if eq $tag "latest" -}}
{{- fail (printf "%s.tag must be a pinned version, not \"latest\"" .name) -}}
{{- end -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end }}

{{/*
Container securityContext. Call with (dict "uid" <int> "readOnly" <bool>).
uid 0 is only used for the stock metadata-service image (see values.yaml).
*/}}
{{- define "metaflow.containerSecurityContext" -}}
runAsUser: {{ int .uid }}
runAsGroup: {{ int .uid }}
runAsNonRoot: {{ ne (int .uid) 0 }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ .readOnly }}
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Pod-level settings shared by the three Deployments: they all run as the services' account.
*/}}
{{- define "metaflow.podSpecCommon" -}}
serviceAccountName: {{ include "metaflow.servicesAccount" . }}
# GKE Workload Identity works through the metadata server; the pods never call the
# Kubernetes API, so no API token is mounted.
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{/*
The two namespaces and the two accounts, each checked once.
*/}}
{{- define "metaflow.stepsNamespace" -}}
{{- required "namespaces.steps is required" .Values.namespaces.steps -}}
{{- end }}

{{- define "metaflow.servicesNamespace" -}}
{{- $ns := required "namespaces.services is required" .Values.namespaces.services -}}
{{- if eq $ns (include "metaflow.stepsNamespace" .) -}}
{{- fail "namespaces.services must differ from namespaces.steps: user code must not share a namespace with the database password" -}}
{{- end -}}
{{- $ns -}}
{{- end }}

{{- define "metaflow.stepsAccount" -}}
{{- required "serviceAccounts.steps.name is required" .Values.serviceAccounts.steps.name -}}
{{- end }}

{{- define "metaflow.servicesAccount" -}}
{{- required "serviceAccounts.services.name is required" .Values.serviceAccounts.services.name -}}
{{- end }}

{{/*
In-cluster URL of the metadata service (what pods, not browsers, use).
*/}}
{{- define "metaflow.metadataServiceUrl" -}}
{{- printf "http://metadata-service.%s.svc:8080/" (include "metaflow.servicesNamespace" .) -}}
{{- end }}

{{/*
Cloud SQL Auth Proxy v2 as a native sidecar: an init container with restartPolicy Always.
Its startup probe gates every later init container and the app containers, so the database
is reachable on 127.0.0.1:5432 before they start.
*/}}
{{- define "metaflow.cloudSqlProxy" -}}
{{- $conn := required "database.instanceConnectionName is required" .Values.database.instanceConnectionName -}}
{{- if not (regexMatch "^[a-z0-9.:-]+:[a-z0-9-]+:[a-z][a-z0-9-]*$" $conn) -}}
{{- fail (printf "database.instanceConnectionName %q is not PROJECT:REGION:INSTANCE" $conn) -}}
{{- end -}}
- name: cloud-sql-proxy
  image: {{ include "metaflow.image" (dict "image" .Values.images.cloudSqlProxy "name" "images.cloudSqlProxy") }}
  imagePullPolicy: {{ .Values.images.pullPolicy }}
  restartPolicy: Always
  args:
    - --private-ip
    - --port=5432
    - --structured-logs
    - --exit-zero-on-sigterm
    - --health-check
    - --http-address=0.0.0.0
    - --http-port=9801
    - {{ $conn | quote }}
  ports:
    - name: proxy-health
      containerPort: 9801
  startupProbe:
    httpGet: {path: /startup, port: proxy-health}
    periodSeconds: 1
    timeoutSeconds: 5
    failureThreshold: 60
  livenessProbe:
    httpGet: {path: /liveness, port: proxy-health}
    periodSeconds: 30
    timeoutSeconds: 10
    failureThreshold: 4
  resources:
    {{- toYaml .Values.resources.cloudSqlProxy | nindent 4 }}
  securityContext:
    {{- include "metaflow.containerSecurityContext" (dict "uid" .Values.images.cloudSqlProxy.runAsUser "readOnly" true) | nindent 4 }}
{{- end }}

{{/*
Database settings for containers that reach Postgres through the local proxy.
*/}}
{{- define "metaflow.dbEnv" -}}
- name: MF_METADATA_DB_HOST
  value: "127.0.0.1"
- name: MF_METADATA_DB_PORT
  value: "5432"
- name: MF_METADATA_DB_USER
  value: {{ required "database.user is required" .Values.database.user | quote }}
- name: MF_METADATA_DB_NAME
  value: {{ required "database.name is required" .Values.database.name | quote }}
- name: MF_METADATA_DB_PSWD
  valueFrom:
    secretKeyRef:
      name: {{ required "database.passwordSecret.name is required" .Values.database.passwordSecret.name }}
      key: {{ required "database.passwordSecret.key is required" .Values.database.passwordSecret.key }}
{{- end }}

{{/*
Egress every pod that reaches Google needs, as far as a NetworkPolicy can say it:
- DNS: kube-dns, NodeLocal DNSCache (169.254.20.10) and Cloud DNS for GKE (169.254.169.254).
- The GKE metadata server, which hands out the Workload Identity tokens: 169.254.169.254:80,
  and 169.254.169.252:988 where GKE serves it there (the addresses GKE's network policy
  documentation lists).
- Google APIs (Cloud SQL Admin, GCS) on 443 outside the private ranges: a NetworkPolicy cannot
  name hosts, so this is "HTTPS to the internet", not to anything inside the VPC.
- Cloud SQL's private IP on 3307, the port the Auth Proxy dials (networkPolicy.cloudSqlCidrs).
*/}}
{{- define "metaflow.googleEgress" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
      podSelector:
        matchLabels:
          k8s-app: kube-dns
    - ipBlock: {cidr: 169.254.20.10/32}
    - ipBlock: {cidr: 169.254.169.254/32}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
- to:
    - ipBlock: {cidr: 169.254.169.254/32}
  ports:
    - {protocol: TCP, port: 80}
- to:
    - ipBlock: {cidr: 169.254.169.252/32}
  ports:
    - {protocol: TCP, port: 988}
- to:
    - ipBlock:
        cidr: 0.0.0.0/0
        except: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"]
  ports:
    - {protocol: TCP, port: 443}
- to:
    {{- range .Values.networkPolicy.cloudSqlCidrs }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
  ports:
    - {protocol: TCP, port: 3307}
{{- end }}
