{{/* Names and labels. The selector labels never change between releases: a Deployment's
selector is immutable, so they hold only the chart's name and the release. */}}
{{- define "terminus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "terminus.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "terminus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "terminus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "terminus.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "terminus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: terminus
{{- end -}}

{{- define "terminus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "terminus.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "terminus.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "terminus.configMapName" -}}
{{- if .Values.reload -}}
{{- include "terminus.fullname" . -}}
{{- else -}}
{{- printf "%s-%s" (include "terminus.fullname" . | trunc 52 | trimSuffix "-") (include "terminus.configFile" . | sha256sum | trunc 10) -}}
{{- end -}}
{{- end -}}

{{/* Where each Secret is mounted in the pod. */}}
{{- define "terminus.paths" -}}
config: /etc/terminus/config
deviceTLS: /etc/terminus/device-tls
deviceCA: /etc/terminus/device-ca
deviceTicketKey: /etc/terminus/device-ticket-key
deviceSecrets: /etc/terminus/device-secrets
apiTokens: /etc/terminus/api-tokens
apiTLS: /etc/terminus/api-tls
adminTokens: /etc/terminus/admin-tokens
fleetToken: /etc/terminus/fleet-token
fleetTLS: /etc/terminus/fleet-tls
redisPassword: /etc/terminus/redis-password
redisCA: /etc/terminus/redis-ca
{{- end -}}

{{/* Checks that values which the schema cannot relate to each other agree. */}}
{{- define "terminus.validate" -}}
{{- $v := .Values -}}
{{- if and (eq $v.device.transport "tls") (not $v.device.tls.secretName) -}}
{{- fail "device.tls.secretName is required with device.transport tls" -}}
{{- end -}}
{{- if and (ne $v.device.tls.clientAuth "none") (not $v.device.tls.clientCA.secretName) -}}
{{- fail "device.tls.clientCA.secretName is required with device.tls.clientAuth optional or required" -}}
{{- end -}}
{{- if and (ne $v.device.tls.engine "lean") (or $v.device.tls.ticketKey.secretName (ne (int $v.device.tls.sessionTickets) 1) (ne $v.device.tls.ticketKeyRotation "12h")) -}}
{{- fail "device.tls.sessionTickets, ticketKeyRotation and ticketKey are settings of device.tls.engine lean (BoringSSL in nio-ssl keeps its own ticket keys)" -}}
{{- end -}}
{{- if and (ne $v.device.tls.clientAuth "required") (not $v.device.secrets.secretName) -}}
{{- fail "device.secrets.secretName is required unless device.tls.clientAuth is required" -}}
{{- end -}}
{{- if and $v.api.enabled (not $v.api.tokens.secretName) (not $v.api.tls.requireClientCertificates) -}}
{{- fail "api.tokens.secretName is required unless api.tls.requireClientCertificates is true" -}}
{{- end -}}
{{- if and $v.api.tls.requireClientCertificates (not $v.api.tls.secretName) -}}
{{- fail "api.tls.requireClientCertificates needs api.tls.secretName (its ca.crt is the client CA)" -}}
{{- end -}}
{{- if $v.fleet.enabled -}}
{{- if not $v.fleet.redis.address -}}
{{- fail "fleet.redis.address is required with fleet.enabled" -}}
{{- end -}}
{{- if not $v.fleet.token.secretName -}}
{{- fail "fleet.token.secretName is required with fleet.enabled" -}}
{{- end -}}
{{- else if gt (int $v.replicaCount) 1 -}}
{{- fail "replicaCount above 1 needs fleet.enabled: without the fleet registry a backend's Send reaches only the devices of the pod it called" -}}
{{- end -}}
{{- if and $v.autoscaling.enabled (not $v.fleet.enabled) -}}
{{- fail "autoscaling.enabled needs fleet.enabled (several pods are one gateway only through the fleet registry)" -}}
{{- end -}}
{{- if and $v.deviceService.clb.gracefulShutdown (not $v.deviceService.clb.directAccess) -}}
{{- fail "deviceService.clb.gracefulShutdown needs deviceService.clb.directAccess (TKE sets CLB weights per pod only with direct access)" -}}
{{- end -}}
{{- if and (not $v.deviceService.clb.directAccess) (not $v.device.proxyProtocol) (eq $v.deviceService.externalTrafficPolicy "Cluster") (ne $v.deviceService.type "ClusterIP") -}}
{{- fail "deviceService.clb.directAccess false with externalTrafficPolicy Cluster and no PROXY protocol: kube-proxy would hide every device behind a node address (limits per address and the authentication throttle would then hit whole nodes); set device.proxyProtocol true or externalTrafficPolicy Local" -}}
{{- end -}}
{{- if eq $v.device.transport "plaintext" -}}
{{- if and (eq $v.deviceService.type "LoadBalancer") (not (hasKey $v.deviceService.annotations "service.cloud.tencent.com/specify-protocol")) -}}
{{- fail "device.transport plaintext needs TLS ended before the pods: a TCP_SSL CLB listener through deviceService.annotations service.cloud.tencent.com/specify-protocol (docs/deploy.md)" -}}
{{- end -}}
{{- if $v.deviceService.clb.serviceConfig.create -}}
{{- fail "deviceService.clb.serviceConfig.create describes a TCP listener; with device.transport plaintext (a TCP_SSL listener) configure the CLB listener through the annotations instead" -}}
{{- end -}}
{{- end -}}
{{- if and (eq (toString $v.updateStrategy.maxSurge) "0") (eq (toString $v.updateStrategy.maxUnavailable) "0") -}}
{{- fail "updateStrategy.maxSurge and maxUnavailable cannot both be 0: a rollout could never start" -}}
{{- end -}}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas is above autoscaling.maxReplicas" -}}
{{- end -}}
{{- if ge (int $v.drain.unreadyDelaySeconds) (int $v.drain.graceSeconds) -}}
{{- fail "drain.unreadyDelaySeconds must be shorter than drain.graceSeconds" -}}
{{- end -}}
{{- end -}}

{{/* The gateway container and its init container run alike. */}}
{{- define "terminus.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
{{- end -}}
{{- define "terminus.volumeMounts" -}}
{{- $v := .Values -}}
{{- $p := include "terminus.paths" . | fromYaml -}}
- name: config
  mountPath: {{ $p.config }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if and (eq $v.device.transport "tls") $v.device.tls.secretName }}
- name: device-tls
  mountPath: {{ $p.deviceTLS }}
  readOnly: true
{{- end }}
{{- if $v.device.tls.clientCA.secretName }}
- name: device-ca
  mountPath: {{ $p.deviceCA }}
  readOnly: true
{{- end }}
{{- if and (eq $v.device.transport "tls") $v.device.tls.ticketKey.secretName }}
- name: device-ticket-key
  mountPath: {{ $p.deviceTicketKey }}
  readOnly: true
{{- end }}
{{- if $v.device.secrets.secretName }}
- name: device-secrets
  mountPath: {{ $p.deviceSecrets }}
  readOnly: true
{{- end }}
{{- if and $v.api.enabled $v.api.tokens.secretName }}
- name: api-tokens
  mountPath: {{ $p.apiTokens }}
  readOnly: true
{{- end }}
{{- if and $v.api.enabled $v.api.tls.secretName }}
- name: api-tls
  mountPath: {{ $p.apiTLS }}
  readOnly: true
{{- end }}
{{- if $v.admin.tokens.secretName }}
- name: admin-tokens
  mountPath: {{ $p.adminTokens }}
  readOnly: true
{{- end }}
{{- if $v.fleet.enabled }}
- name: fleet-token
  mountPath: {{ $p.fleetToken }}
  readOnly: true
{{- if $v.fleet.tls.secretName }}
- name: fleet-tls
  mountPath: {{ $p.fleetTLS }}
  readOnly: true
{{- end }}
{{- if $v.fleet.redis.password.secretName }}
- name: redis-password
  mountPath: {{ $p.redisPassword }}
  readOnly: true
{{- end }}
{{- if and $v.fleet.redis.tls.enabled $v.fleet.redis.tls.caSecretName }}
- name: redis-ca
  mountPath: {{ $p.redisCA }}
  readOnly: true
{{- end }}
{{- end }}
{{- with $v.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* terminus.yaml (docs/configuration.md), rendered from the values. */}}
{{- define "terminus.configFile" -}}
{{- $v := .Values -}}
{{- $p := include "terminus.paths" . | fromYaml -}}
{{- $c := dict -}}
{{- $_ := set $c "log" (dict "level" $v.gateway.logLevel "format" $v.gateway.logFormat) -}}
{{- $_ := set $c "event_loop_threads" $v.gateway.eventLoopThreads -}}
{{- $device := dict "listen" (printf "0.0.0.0:%d" (int $v.gateway.ports.device)) "transport" $v.device.transport "proxy_protocol" (ternary "v2" "off" $v.device.proxyProtocol) -}}
{{- if eq $v.device.transport "tls" -}}
{{- $tls := dict "certificate_chain" (printf "%s/tls.crt" $p.deviceTLS) "private_key" (printf "%s/tls.key" $p.deviceTLS) "min_version" $v.device.tls.minVersion "client_auth" $v.device.tls.clientAuth -}}
{{- if $v.device.tls.clientCA.secretName -}}
{{- $_ := set $tls "client_ca" (printf "%s/%s" $p.deviceCA $v.device.tls.clientCA.key) -}}
{{- end -}}
{{- $_ := set $tls "engine" $v.device.tls.engine -}}
{{- if eq $v.device.tls.engine "lean" -}}
{{- $_ := set $tls "session_tickets" (int $v.device.tls.sessionTickets) -}}
{{- $_ := set $tls "ticket_key_rotation" $v.device.tls.ticketKeyRotation -}}
{{- if $v.device.tls.ticketKey.secretName -}}
{{- $_ := set $tls "ticket_key_file" (printf "%s/%s" $p.deviceTicketKey $v.device.tls.ticketKey.key) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $device "tls" $tls -}}
{{- end -}}
{{- $_ := set $c "device" $device -}}
{{- $auth := deepCopy $v.config.auth -}}
{{- if $v.device.secrets.secretName -}}
{{- $_ := set $auth "secrets_file" (printf "%s/%s" $p.deviceSecrets $v.device.secrets.key) -}}
{{- end -}}
{{- if $auth -}}
{{- $_ := set $c "auth" $auth -}}
{{- end -}}
{{- range $section := list "limits" "timeouts" "keepalive" "events" "compression" -}}
{{- with (get $v.config $section) -}}
{{- $_ := set $c $section . -}}
{{- end -}}
{{- end -}}
{{- with $v.config.services -}}
{{- $_ := set $c "services" . -}}
{{- end -}}
{{- if $v.api.enabled -}}
{{- $api := deepCopy $v.config.api -}}
{{- $_ := set $api "listen" (printf "0.0.0.0:%d" (int $v.gateway.ports.api)) -}}
{{- if $v.api.tokens.secretName -}}
{{- $_ := set $api "tokens_file" (printf "%s/%s" $p.apiTokens $v.api.tokens.key) -}}
{{- end -}}
{{- if $v.api.tls.secretName -}}
{{- $apiTLS := dict "certificate_chain" (printf "%s/tls.crt" $p.apiTLS) "private_key" (printf "%s/tls.key" $p.apiTLS) -}}
{{- if $v.api.tls.requireClientCertificates -}}
{{- $_ := set $apiTLS "client_ca" (printf "%s/ca.crt" $p.apiTLS) -}}
{{- end -}}
{{- $_ := set $api "tls" $apiTLS -}}
{{- end -}}
{{- $_ := set $c "api" $api -}}
{{- end -}}
{{- $admin := deepCopy $v.config.admin -}}
{{- $_ := set $admin "listen" (printf "0.0.0.0:%d" (int $v.gateway.ports.admin)) -}}
{{- if $v.admin.tokens.secretName -}}
{{- $_ := set $admin "tokens_file" (printf "%s/%s" $p.adminTokens $v.admin.tokens.key) -}}
{{- end -}}
{{- $_ := set $c "admin" $admin -}}
{{- $_ := set $c "drain" (dict "grace" (printf "%ds" (int $v.drain.graceSeconds)) "unready_delay" (printf "%ds" (int $v.drain.unreadyDelaySeconds)) "reconnect_window" (printf "%ds" (int $v.drain.reconnectWindowSeconds))) -}}
{{- $_ := set $c "reload" (dict "watch_interval" (printf "%ds" (int $v.reloadWatchIntervalSeconds))) -}}
{{- if $v.fleet.enabled -}}
{{- $fleet := deepCopy $v.config.fleet -}}
{{- $redis := dict "address" $v.fleet.redis.address "username" $v.fleet.redis.username "database" $v.fleet.redis.database "key_prefix" $v.fleet.redis.keyPrefix "protocol" $v.fleet.redis.protocol "command_timeout" (printf "%dms" (int $v.fleet.redis.commandTimeoutMilliseconds)) -}}
{{- if $v.fleet.redis.password.secretName -}}
{{- $_ := set $redis "password_file" (printf "%s/%s" $p.redisPassword $v.fleet.redis.password.key) -}}
{{- end -}}
{{- if $v.fleet.redis.tls.enabled -}}
{{- $redisTLS := dict -}}
{{- if $v.fleet.redis.tls.caSecretName -}}
{{- $_ := set $redisTLS "ca" (printf "%s/%s" $p.redisCA $v.fleet.redis.tls.caKey) -}}
{{- end -}}
{{- if $v.fleet.redis.tls.serverName -}}
{{- $_ := set $redisTLS "server_name" $v.fleet.redis.tls.serverName -}}
{{- end -}}
{{- $_ := set $redis "tls" $redisTLS -}}
{{- end -}}
{{- $_ := set $fleet "redis" $redis -}}
{{- $_ := set $fleet "listen" (printf "0.0.0.0:%d" (int $v.gateway.ports.fleet)) -}}
{{- $_ := set $fleet "token_file" (printf "%s/%s" $p.fleetToken $v.fleet.token.key) -}}
{{- $_ := set $fleet "lease" (printf "%ds" (int $v.fleet.leaseSeconds)) -}}
{{- if $v.fleet.tls.secretName -}}
{{- $_ := set $fleet "tls" (dict "certificate_chain" (printf "%s/tls.crt" $p.fleetTLS) "private_key" (printf "%s/tls.key" $p.fleetTLS) "ca" (printf "%s/ca.crt" $p.fleetTLS)) -}}
{{- end -}}
{{- $_ := set $c "fleet" $fleet -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}
