{{- define "codeinterp.name" -}}{{ .Release.Name }}{{- end }}
{{- define "codeinterp.labels" -}}
app.kubernetes.io/name: codeinterp
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}
{{- define "codeinterp.sandbox" -}}{{ .Values.sandbox.namespace }}{{- end }}
{{- define "codeinterp.apiKeysSecret" -}}{{ .Values.apiserver.existingApiKeysSecret | default (printf "%s-api-keys" .Release.Name) }}{{- end }}
{{- define "codeinterp.signingSecret" -}}{{ .Values.signing.existingSecret | default (printf "%s-signing" .Release.Name) }}{{- end }}
{{- define "codeinterp.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile: {type: RuntimeDefault}
{{- end }}
{{- define "codeinterp.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end }}
{{- define "codeinterp.storageEnv" -}}
{{- if .Values.storage.s3.url }}
- name: STORAGE_URL
  value: {{ .Values.storage.s3.url | quote }}
{{- else }}
- name: STORAGE_URL
  value: /storage
{{- end }}
{{- end }}
{{- define "codeinterp.storageEnvFrom" -}}
{{- if .Values.storage.s3.existingSecret }}
envFrom:
- secretRef: {name: {{ .Values.storage.s3.existingSecret }}}
{{- end }}
{{- end }}
{{- define "codeinterp.storageVolume" -}}
{{- if not .Values.storage.s3.url }}
- name: storage
  hostPath: {path: {{ .Values.storage.local.hostPath }}, type: DirectoryOrCreate}
{{- end }}
{{- end }}
{{- define "codeinterp.storageMount" -}}
{{- if not .Values.storage.s3.url }}
- {name: storage, mountPath: /storage}
{{- end }}
{{- end }}
{{- define "codeinterp.runnerEnv" -}}
- {name: SECCOMP_PROFILE, value: {{ .Values.seccomp.profile | quote }}}
- {name: APPARMOR_PROFILE, value: {{ .Values.operator.apparmorProfile | quote }}}
- {name: RUNNER_IMAGE_PYTHON, value: {{ .Values.images.runners.python | quote }}}
- {name: RUNNER_IMAGE_NODE, value: {{ .Values.images.runners.node | quote }}}
- {name: RUNNER_IMAGE_RUBY, value: {{ .Values.images.runners.ruby | quote }}}
- {name: RUNNER_IMAGE_PHP, value: {{ .Values.images.runners.php | quote }}}
- {name: RUNNER_IMAGE_CONTAINER, value: {{ .Values.images.runners.container | quote }}}
{{- end }}
{{- /* What both the operator and the REST API must agree on, from one set of values. */ -}}
{{- define "codeinterp.sharedEnv" -}}
- {name: SANDBOX_NAMESPACE, value: {{ include "codeinterp.sandbox" . | quote }}}
- {name: MAX_TIMEOUT_MS, value: {{ .Values.limits.maxTimeoutMs | int64 | quote }}}
- {name: MAX_MEMORY_MB, value: {{ .Values.limits.maxMemoryMb | int64 | quote }}}
- {name: MAX_INPUT_MB, value: {{ .Values.limits.maxInputMb | int64 | quote }}}
- {name: MAX_QUEUED_PER_TENANT, value: {{ .Values.admission.maxQueuedPerTenant | int64 | quote }}}
- {name: MAX_CONTAINERS_PER_TENANT, value: {{ .Values.containers.maxPerTenant | int64 | quote }}}
- {name: CONTAINER_MAX_MEMORY, value: {{ .Values.containers.maxMemory | quote }}}
- {name: CONTAINER_DISK_MB, value: {{ .Values.containers.diskMb | int64 | quote }}}
- {name: STORAGE_QUOTA_MB, value: {{ .Values.storage.quotaPerTenantMb | int64 | quote }}}
{{- with .Values.operator.shard }}
- {name: SHARD, value: {{ . | quote }}}
{{- end }}
{{- end }}

