{{/* Names, labels and the pod template every service shares. */}}

{{- define "loopwise.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "loopwise.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "loopwise.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "loopwise.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* (dict "root" $ "component" "collector") */}}
{{- define "loopwise.componentName" -}}
{{- printf "%s-%s" (include "loopwise.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "loopwise.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loopwise.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{- define "loopwise.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "loopwise.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: loopwise
{{- end -}}

{{- define "loopwise.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "loopwise.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "loopwise.secretName" -}}
{{- default (printf "%s-credentials" (include "loopwise.fullname" .)) .Values.secret.existingSecret -}}
{{- end -}}

{{- define "loopwise.usesPvc" -}}
{{- if not .Values.modelStore.url }}true{{ end -}}
{{- end -}}

{{- define "loopwise.pvcName" -}}
{{- default (printf "%s-models" (include "loopwise.fullname" .)) .Values.modelStore.persistence.existingClaim -}}
{{- end -}}

{{/* The image of a component: [<registry>/]<repository>@<digest> or :<tag>[-<variant>]. */}}
{{- define "loopwise.image" -}}
{{- $v := index .root.Values .component -}}
{{- $repo := $v.image.repository -}}
{{- with .root.Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end -}}
{{- if $v.image.digest -}}
{{- printf "%s@%s" $repo $v.image.digest -}}
{{- else -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag -}}
{{- with .variant }}{{ $tag = printf "%s-%s" $tag . }}{{ end -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* Kubernetes expands $(LOOPWISE_REDIS_PASSWORD) from the Secret (envFrom) into the URL. */}}
{{- define "loopwise.redisUrl" -}}
{{- $r := .Values.redis -}}
{{- $auth := "" -}}
{{- if $r.auth.enabled -}}
{{- $auth = printf "%s:$(LOOPWISE_REDIS_PASSWORD)@" $r.auth.username -}}
{{- end -}}
{{- $query := "" -}}
{{- if and $r.tls.enabled $r.tls.caSecret -}}
{{- $query = "?ssl_ca_certs=/etc/loopwise/redis-ca/ca.crt" -}}
{{- end -}}
{{- printf "%s://%s%s:%v/%v%s" (ternary "rediss" "redis" $r.tls.enabled) $auth $r.host $r.port $r.db $query -}}
{{- end -}}

{{/* Metadata of every rendered object: (dict "root" $ "component" "..." "name" "...") */}}
{{- define "loopwise.metadata" -}}
name: {{ .name | default (include "loopwise.componentName" .) }}
namespace: {{ .root.Release.Namespace }}
labels:
  {{- include "loopwise.labels" . | nindent 2 }}
{{- end -}}

{{/* envFrom and env of a component's containers (the same ctx as loopwise.deployment). */}}
{{- define "loopwise.containerEnv" -}}
{{- $root := .root -}}
{{- $v := index $root.Values .component -}}
envFrom:
  - configMapRef:
      name: {{ include "loopwise.fullname" $root }}
  - secretRef:
      name: {{ include "loopwise.secretName" $root }}
env:
  - name: LOOPWISE_METRICS_HOST
    value: 0.0.0.0
  - name: LOOPWISE_METRICS_PORT
    value: {{ $v.metricsPort | quote }}
  {{- if .grpc }}
  - name: LOOPWISE_GRPC_HOST
    value: 0.0.0.0
  - name: LOOPWISE_GRPC_PORT
    value: {{ $v.grpcPort | quote }}
  - name: LOOPWISE_DRAIN_S
    value: {{ $v.drainSeconds | quote }}
  - name: LOOPWISE_GRACE_S
    value: {{ $v.graceSeconds | quote }}
  {{- include "loopwise.grpcSecurityEnv" $root | nindent 2 }}
  {{- end }}
  - name: LOOPWISE_REDIS_URL
    value: {{ include "loopwise.redisUrl" $root | quote }}
  - name: TMPDIR
    value: /tmp
  - name: HOME
    value: /tmp
  {{- with .env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- range $name, $value := $v.env }}
  - name: {{ $name }}
    value: {{ $value | toString | quote }}
  {{- end }}
{{- end -}}

{{/* volumeMounts of a component's containers. */}}
{{- define "loopwise.volumeMounts" -}}
{{- $root := .root -}}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  {{- if $root.Values.kafka.tls.caSecret }}
  - name: kafka-ca
    mountPath: /etc/loopwise/kafka-ca
    readOnly: true
  {{- end }}
  {{- if and $root.Values.redis.tls.enabled $root.Values.redis.tls.caSecret }}
  - name: redis-ca
    mountPath: /etc/loopwise/redis-ca
    readOnly: true
  {{- end }}
  {{- if .grpc }}
  {{- if $root.Values.grpcSecurity.apiKeys.enabled }}
  - name: api-keys
    mountPath: /etc/loopwise/keys
    readOnly: true
  {{- end }}
  {{- if $root.Values.grpcSecurity.tls.enabled }}
  - name: grpc-tls
    mountPath: /etc/loopwise/tls
    readOnly: true
  {{- end }}
  {{- end }}
  {{- with .mounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* The gRPC services' keys file, TLS files and limits (loopwise.settings.GrpcSettings). */}}
{{- define "loopwise.grpcSecurityEnv" -}}
{{- $s := .Values.grpcSecurity }}
{{- if $s.apiKeys.enabled }}
- name: LOOPWISE_API_KEYS_FILE
  value: /etc/loopwise/keys/keys.json
{{- end }}
{{- if $s.tls.enabled }}
- name: LOOPWISE_TLS_CERT_FILE
  value: /etc/loopwise/tls/tls.crt
- name: LOOPWISE_TLS_KEY_FILE
  value: /etc/loopwise/tls/tls.key
{{- if $s.tls.mutual }}
- name: LOOPWISE_TLS_CLIENT_CA_FILE
  value: /etc/loopwise/tls/ca.crt
{{- end }}
{{- end }}
- name: LOOPWISE_MAX_CONCURRENT_RPCS
  value: {{ $s.limits.maxConcurrentRpcs | quote }}
- name: LOOPWISE_MAX_CONNECTIONS
  value: {{ $s.limits.maxConnections | quote }}
- name: LOOPWISE_INFLIGHT_BYTES
  value: {{ $s.limits.inflightBytes | int64 | quote }}
- name: LOOPWISE_STREAM_DEADLINE_S
  value: {{ $s.limits.streamDeadlineSeconds | quote }}
- name: LOOPWISE_MAX_CONNECTION_IDLE_S
  value: {{ $s.limits.maxConnectionIdleSeconds | quote }}
{{- end -}}

{{/*
A service's Deployment. (dict "root" $ "component" NAME "grpc" BOOL "variant" TAG-SUFFIX
"replicas" N-or-nil "env" LIST "volumes" LIST "mounts" LIST "extraResources" MAP "strategy" TYPE
"initCommand" LIST: an init container running it with the same image, variables and volumes)
*/}}
{{- define "loopwise.deployment" -}}
{{- $root := .root -}}
{{- $v := index $root.Values .component -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  {{- include "loopwise.metadata" . | nindent 2 }}
  annotations:
    checkov.io/skip1: CKV_K8S_43=Images are pinned by tag by default; set <service>.image.digest to pin them by digest.
    checkov.io/skip2: CKV_K8S_35=The services read credentials from LOOPWISE_* variables (the Redis password goes into the Redis URL).
spec:
  {{- if not (kindIs "invalid" .replicas) }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: {{ .strategy | default "RollingUpdate" }}
  selector:
    matchLabels:
      {{- include "loopwise.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "loopwise.selectorLabels" . | nindent 8 }}
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- if not $root.Values.secret.existingSecret }}
        checksum/secret: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
        {{- end }}
        {{- if $root.Values.metrics.podAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $v.metricsPort | quote }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "loopwise.serviceAccountName" $root }}
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .initCommand }}
      initContainers:
        - name: seed-model
          image: {{ include "loopwise.image" $ }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            {{- toYaml . | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          {{- include "loopwise.containerEnv" $ | nindent 10 }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          {{- include "loopwise.volumeMounts" $ | nindent 10 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "loopwise.image" . }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          ports:
            {{- if .grpc }}
            - name: grpc
              containerPort: {{ $v.grpcPort }}
              protocol: TCP
            {{- end }}
            - name: metrics
              containerPort: {{ $v.metricsPort }}
              protocol: TCP
          {{- include "loopwise.containerEnv" . | nindent 10 }}
          {{- /* Started once the process is up: inference stays unready until a model loads, which may take long. */}}
          startupProbe:
            httpGet:
              path: /healthz
              port: metrics
            periodSeconds: 2
            failureThreshold: 60
          {{- if and .grpc (not $root.Values.grpcSecurity.tls.enabled) }}
          readinessProbe:
            grpc:
              port: {{ $v.grpcPort }}
            periodSeconds: 5
            failureThreshold: 2
          {{- else }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            periodSeconds: 5
            failureThreshold: 2
          {{- end }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 3
          resources:
            {{- $res := deepCopy $v.resources }}
            {{- with .extraResources }}
            {{- $res = mergeOverwrite $res . }}
            {{- end }}
            {{- toYaml $res | nindent 12 }}
          {{- include "loopwise.volumeMounts" . | nindent 10 }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 256Mi
        {{- with $root.Values.kafka.tls.caSecret }}
        - name: kafka-ca
          secret:
            secretName: {{ . }}
        {{- end }}
        {{- if and $root.Values.redis.tls.enabled $root.Values.redis.tls.caSecret }}
        - name: redis-ca
          secret:
            secretName: {{ $root.Values.redis.tls.caSecret }}
        {{- end }}
        {{- if and .grpc $root.Values.grpcSecurity.apiKeys.enabled }}
        - name: api-keys
          secret:
            secretName: {{ $root.Values.grpcSecurity.apiKeys.existingSecret | default (printf "%s-api-keys" (include "loopwise.fullname" $root)) }}
        {{- end }}
        {{- if and .grpc $root.Values.grpcSecurity.tls.enabled }}
        - name: grpc-tls
          secret:
            secretName: {{ required "grpcSecurity.tls.enabled needs grpcSecurity.tls.secretName" $root.Values.grpcSecurity.tls.secretName }}
        {{- end }}
        {{- with .volumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/* A PodDisruptionBudget when <component>.podDisruptionBudget.enabled. */}}
{{- define "loopwise.pdb" -}}
{{- $v := index .root.Values .component -}}
{{- if $v.podDisruptionBudget.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  {{- include "loopwise.metadata" . | nindent 2 }}
spec:
  maxUnavailable: {{ $v.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "loopwise.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/* A CPU HorizontalPodAutoscaler when <component>.autoscaling.enabled. */}}
{{- define "loopwise.hpa" -}}
{{- $v := index .root.Values .component -}}
{{- if $v.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  {{- include "loopwise.metadata" . | nindent 2 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "loopwise.componentName" . }}
  minReplicas: {{ $v.autoscaling.minReplicas }}
  maxReplicas: {{ $v.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $v.autoscaling.targetCPUUtilizationPercentage }}
{{- end }}
{{- end -}}

{{/* The Service of a component: the gRPC port (gRPC services) and the metrics port. */}}
{{- define "loopwise.service" -}}
{{- $v := index .root.Values .component -}}
---
apiVersion: v1
kind: Service
metadata:
  {{- include "loopwise.metadata" . | nindent 2 }}
spec:
  {{- if .grpc }}
  type: {{ $v.service.type }}
  {{- else }}
  clusterIP: None
  {{- end }}
  selector:
    {{- include "loopwise.selectorLabels" . | nindent 4 }}
  ports:
    {{- if .grpc }}
    - name: grpc
      port: {{ $v.service.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    {{- end }}
    - name: metrics
      port: {{ $v.metricsPort }}
      targetPort: metrics
      protocol: TCP
{{- end -}}

{{/* Refuse a drain that outlasts the termination grace period. */}}
{{- define "loopwise.checkGrace" -}}
{{- $v := index .root.Values .component -}}
{{- $drain := addf $v.drainSeconds $v.graceSeconds -}}
{{- if le (float64 $v.terminationGracePeriodSeconds) $drain -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%v) must exceed drainSeconds + graceSeconds (%v): Kubernetes would kill in-flight calls" .component $v.terminationGracePeriodSeconds $drain) -}}
{{- end -}}
{{- end -}}
