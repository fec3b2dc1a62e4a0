{{/* Name of the chart, truncated to 63 characters. */}}
{{- define "cachelink.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified name: release-chart, truncated to 63 characters. */}}
{{- define "cachelink.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Name of the operator's objects. */}}
{{- define "cachelink.operator.name" -}}
{{- printf "%s-operator" (include "cachelink.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Common labels. */}}
{{- define "cachelink.labels" -}}
app.kubernetes.io/name: {{ include "cachelink.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of the operator. */}}
{{- define "cachelink.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cachelink.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Name of the agent's objects. */}}
{{- define "cachelink.agent.name" -}}
{{- printf "%s-agent" (include "cachelink.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The agent's memory limit: its own memory plus the pool budget (pool pages are charged to it). */}}
{{- define "cachelink.agent.memoryLimit" -}}
{{- $units := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- $total := 0 -}}
{{- range $q := list .Values.agentDaemonSet.maxPoolBytes .Values.agentDaemonSet.agentMemory -}}
{{- $q = toString $q -}}
{{- $unit := regexFind "(Ki|Mi|Gi|Ti)$" $q -}}
{{- $number := trimSuffix $unit $q | int64 -}}
{{- $total = add $total (mul $number (get $units $unit | default 1)) -}}
{{- end -}}
{{- $total -}}
{{- end -}}
