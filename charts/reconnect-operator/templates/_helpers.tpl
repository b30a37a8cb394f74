{{/*
Names and labels shared by every template. The names follow the usual Helm conventions so
that `helm upgrade` keeps selecting the same pods.
*/}}

{{- define "reconnect-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release-scoped name: <release>-<chart>, or the release name when it already holds the chart name. */}}
{{- define "reconnect-operator.fullname" -}}
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

{{- define "reconnect-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object the chart renders. */}}
{{- define "reconnect-operator.labels" -}}
helm.sh/chart: {{ include "reconnect-operator.chart" . }}
{{ include "reconnect-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: reconnect-operator
{{- end }}

{{/* The immutable subset used in selectors; never add to it (a Deployment selector cannot change). */}}
{{- define "reconnect-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "reconnect-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "reconnect-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "reconnect-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is pinned. The tag defaults to appVersion. */}}
{{- define "reconnect-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs on the objects it reconciles and writes, in whatever namespaces
it watches. Rendered into one ClusterRole (cluster-wide mode) or into one Role per watched
namespace. The chart README explains each rule.
*/}}
{{- define "reconnect-operator.workloadRules" -}}
- apiGroups: ["reconnect.dev"]
  resources: ["connectorcredentials", "integrations"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["reconnect.dev"]
  resources: ["connectorcredentials/status", "integrations/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["reconnect.dev"]
  resources: ["connectorcredentials/finalizers", "integrations/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "patch"]
{{- end }}
