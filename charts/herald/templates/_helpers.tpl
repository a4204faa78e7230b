{{/*
Names, labels and the few decisions shared by several templates.
*/}}

{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
`<release>-<chart>`, or the release name alone when it already contains the chart name.
*/}}
{{- define "herald.fullname" -}}
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

{{- define "herald.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.labels" -}}
helm.sh/chart: {{ include "herald.chart" . }}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herald
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of the operator pods. They never match the gateway pods, which the operator
labels `app.kubernetes.io/name: herald-gateway`.
*/}}
{{- define "herald.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "herald.operator.fullname" -}}
{{- printf "%s-operator" (include "herald.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "herald.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "herald.operator.leaseName" -}}
{{- default (include "herald.operator.fullname" .) .Values.operator.leaseName }}
{{- end }}

{{/*
The image, `repository:tag`; the tag defaults to the chart's appVersion.
*/}}
{{- define "herald.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "herald.gateway.image" -}}
{{- $repo := default .Values.image.repository .Values.gateway.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.gateway.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/*
The RealtimeGateway's name: also the name of the gateway Deployment and Service.
*/}}
{{- define "herald.gateway.name" -}}
{{- default (include "herald.fullname" .) .Values.gateway.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Where the RealtimeGateway, its Secret and the test pod live: the watched namespace when the
operator watches only one, else the release namespace.
*/}}
{{- define "herald.gateway.namespace" -}}
{{- default .Release.Namespace .Values.operator.watchNamespace }}
{{- end }}

{{/*
Labels selecting the gateway pods and Service, as the operator sets them (operator/src/resources.rs).
*/}}
{{- define "herald.gateway.selectorLabels" -}}
app.kubernetes.io/name: herald-gateway
app.kubernetes.io/instance: {{ include "herald.gateway.name" . }}
{{- end }}

{{/*
The Secret holding the keys: the user's, or the one this chart creates.
*/}}
{{- define "herald.auth.secretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else }}
{{- printf "%s-auth" (include "herald.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The key names used in the Secret: the user's (existingSecret) or the chart's, "" for none.
Returned as YAML: jwtSecret, jwks, publishKeys, dashboardKeys, testPublishKey.
*/}}
{{- define "herald.auth.keys" -}}
{{- if .Values.auth.existingSecret }}
{{- $k := .Values.auth.existingSecretKeys }}
jwtSecret: {{ default "" $k.jwtSecret | quote }}
jwks: {{ default "" $k.jwks | quote }}
publishKeys: {{ default "" $k.publishKeys | quote }}
dashboardKeys: {{ default "" $k.dashboardKeys | quote }}
testPublishKey: {{ default "" $k.testPublishKey | quote }}
{{- else }}
jwtSecret: {{ ternary "jwt-secret" "" (ne .Values.auth.jwtSecret "") | quote }}
jwks: {{ ternary "jwks" "" (ne .Values.auth.jwks "") | quote }}
publishKeys: {{ ternary "publish-keys" "" (gt (len .Values.auth.publishKeys) 0) | quote }}
dashboardKeys: {{ ternary "dashboard-keys" "" (gt (len .Values.auth.dashboardKeys) 0) | quote }}
testPublishKey: {{ ternary "test-publish-key" "" (gt (len .Values.auth.publishKeys) 0) | quote }}
{{- end }}
{{- end }}

{{/*
The publisher key `helm test` uses (chart-created Secret): `tests.publishKey`, or the first.
*/}}
{{- define "herald.tests.publishKey" -}}
{{- $want := .Values.tests.publishKey }}
{{- $found := dict }}
{{- range .Values.auth.publishKeys }}
{{- if and (not $found.secret) (or (eq $want "") (eq $want .name)) }}
{{- $_ := set $found "secret" .secret }}
{{- end }}
{{- end }}
{{- if not $found.secret }}
{{- fail (printf "herald: tests.publishKey %q names no entry of auth.publishKeys" $want) }}
{{- end }}
{{- $found.secret }}
{{- end }}

{{/*
Checks that values depend on each other correctly, failing the render with a message that
says what to set. Included by the templates that need them.
*/}}
{{- define "herald.validate" -}}
{{- if .Values.gateway.enabled }}
{{- if not .Values.auth.jwksAllowHttp }}
{{- range .Values.auth.jwksUrls }}
{{- $url := urlParse . }}
{{- $host := regexReplaceAll ":[0-9]+$" $url.host "" | trimPrefix "[" | trimSuffix "]" }}
{{- if and (eq $url.scheme "http") (not (has $host (list "localhost" "127.0.0.1" "::1"))) }}
{{- fail (printf "herald: auth.jwksUrls %q is plain http, which the gateways refuse (anyone on the path could swap the keys): use https, or set auth.jwksAllowHttp" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- if not .Values.nats.url }}
{{- fail "herald: nats.url is required: the URL of your NATS server with JetStream, e.g. --set nats.url=nats://nats.nats.svc.cluster.local:4222 (see docs/helm.md for installing the official NATS chart alongside)" }}
{{- end }}
{{- $gw := include "herald.gateway.name" . }}
{{- $op := include "herald.operator.fullname" . }}
{{- if and (eq (include "herald.gateway.namespace" .) .Release.Namespace) (has $gw (list $op (printf "%s-metrics" $op))) }}
{{- fail (printf "herald: gateway.name %q is taken by the operator's own Deployment or Service; the operator would apply the gateways over it. Choose another name" $gw) }}
{{- end }}
{{- $r := .Values.gateway.replicas }}
{{- if lt (int $r.max) (int $r.min) }}
{{- fail (printf "herald: gateway.replicas.max (%v) must be at least gateway.replicas.min (%v)" $r.max $r.min) }}
{{- end }}
{{- if lt (int .Values.gateway.maxConnectionsPerPod) (int .Values.gateway.targetConnectionsPerPod) }}
{{- fail (printf "herald: gateway.maxConnectionsPerPod (%v) must be at least gateway.targetConnectionsPerPod (%v)" .Values.gateway.maxConnectionsPerPod .Values.gateway.targetConnectionsPerPod) }}
{{- end }}
{{- $creds := .Values.nats.credentialsSecret }}
{{- if and (or $creds.name $creds.key) (not (and $creds.name $creds.key)) }}
{{- fail "herald: nats.credentialsSecret needs both name and key" }}
{{- end }}
{{- $keys := include "herald.auth.keys" . | fromYaml }}
{{- if .Values.auth.existingSecret }}
{{- if and (not $keys.jwtSecret) (not $keys.jwks) (not .Values.auth.jwksUrls) }}
{{- fail "herald: auth.existingSecretKeys.jwtSecret or auth.existingSecretKeys.jwks must name a key of auth.existingSecret (or set auth.jwksUrls): the gateways need a key for client tokens" }}
{{- end }}
{{- if and .Values.tests.enabled (or (not $keys.jwtSecret) (not $keys.testPublishKey)) }}
{{- fail "herald: helm test needs auth.existingSecretKeys.jwtSecret and auth.existingSecretKeys.testPublishKey (a key holding one publisher key's raw secret); set them, or set tests.enabled=false" }}
{{- end }}
{{- else }}
{{- if and (not .Values.auth.jwtSecret) (not .Values.auth.jwks) (not .Values.auth.jwksUrls) }}
{{- fail "herald: set auth.existingSecret to the name of a Secret you manage, or auth.jwtSecret (e.g. --set auth.jwtSecret=$(openssl rand -hex 32)) so that the chart creates one, or auth.jwksUrls (your identity provider's JWKS URL): the gateways need a key for client tokens" }}
{{- end }}
{{- if and .Values.auth.jwtSecret (lt (len .Values.auth.jwtSecret) 16) }}
{{- fail "herald: auth.jwtSecret must be at least 16 characters (32 recommended)" }}
{{- end }}
{{- if .Values.tests.enabled }}
{{- if or (not .Values.auth.jwtSecret) (eq (len .Values.auth.publishKeys) 0) }}
{{- fail "herald: helm test needs auth.jwtSecret and at least one auth.publishKeys entry; set them, or set tests.enabled=false" }}
{{- end }}
{{- $_ := include "herald.tests.publishKey" . }}
{{- end }}
{{- $seen := dict }}
{{- range .Values.auth.publishKeys }}
{{- if hasKey $seen .name }}
{{- fail (printf "herald: auth.publishKeys names %q twice" .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- end }}
{{- $dashboard := dict }}
{{- range .Values.auth.dashboardKeys }}
{{- if hasKey $dashboard .name }}
{{- fail (printf "herald: auth.dashboardKeys names %q twice" .name) }}
{{- end }}
{{- $_ := set $dashboard .name true }}
{{- $secret := .secret }}
{{- $name := .name }}
{{- range $.Values.auth.publishKeys }}
{{- if eq .secret $secret }}
{{- fail (printf "herald: auth.dashboardKeys %q has the secret of publisher key %q; a key typed into a browser must not be one that publishes to every user" $name .name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
