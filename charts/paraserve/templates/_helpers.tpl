{{/* Names and labels shared by every template. */}}

{{- define "paraserve.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "paraserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "paraserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paraserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "paraserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "paraserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: paraserve
{{- end -}}

{{- define "paraserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "paraserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "paraserve.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The rank image the operator is told to use; empty leaves it to the operator's default. */}}
{{- define "paraserve.workerImage" -}}
{{- if .Values.workerImage.repository -}}
{{- printf "%s:%s" .Values.workerImage.repository (default .Chart.AppVersion .Values.workerImage.tag) -}}
{{- else if .Values.workerImage.tag -}}
{{- fail "workerImage.tag needs workerImage.repository (empty both for the operator's default)" -}}
{{- end -}}
{{- end -}}

{{- define "paraserve.webhookServiceName" -}}
{{- printf "%s-webhook" (include "paraserve.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "paraserve.webhookCertSecret" -}}
{{- printf "%s-webhook-tls" (include "paraserve.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The webhook: where its certificate lives and how the operator is told about it. */}}

{{- define "paraserve.webhookCertDir" -}}
/var/run/paraserve/webhook-certs
{{- end -}}

{{- define "paraserve.webhookPath" -}}
/validate-spec
{{- end -}}

{{/* The name the operator gives the configuration it manages (controller/admission/server.py). */}}
{{- define "paraserve.webhookConfigurationName" -}}
paraserve.dev
{{- end -}}

{{- define "paraserve.webhookArgs" -}}
{{- if .Values.webhook.enabled -}}
{{- if .Values.webhook.certManager.enabled -}}
- --webhook=external
- --webhook-cert-dir={{ include "paraserve.webhookCertDir" . }}
{{- else -}}
- --webhook=self-managed
- --webhook-service={{ .Release.Namespace }}/{{ include "paraserve.webhookServiceName" . }}
{{- end }}
- --webhook-port={{ .Values.webhook.port }}
- --webhook-service-port=443
{{- end -}}
{{- end -}}

{{- define "paraserve.webhookVolumeMounts" -}}
{{- if and .Values.webhook.enabled .Values.webhook.certManager.enabled -}}
- name: webhook-certs
  mountPath: {{ include "paraserve.webhookCertDir" . }}
  readOnly: true
{{- end -}}
{{- end -}}

{{- define "paraserve.webhookVolumes" -}}
{{- if and .Values.webhook.enabled .Values.webhook.certManager.enabled -}}
- name: webhook-certs
  secret:
    secretName: {{ include "paraserve.webhookCertSecret" . }}
{{- end -}}
{{- end -}}
