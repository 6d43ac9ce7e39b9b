{{/*
Object names are fixed, as in deploy/base: the webhook configuration is cluster-wide and one
injector per cluster is the only sensible install (two would both mutate every opted-in pod), and
the init-certs flags, the TLS Secret and the cert-manager objects refer to each other by them.
*/}}
{{- define "flyte-auth-agent.name" -}}flyte-auth-injector{{- end }}
{{- define "flyte-auth-agent.tlsSecret" -}}flyte-auth-injector-tls{{- end }}
{{- define "flyte-auth-agent.configMap" -}}flyte-auth-injector-config{{- end }}
{{- define "flyte-auth-agent.initCerts" -}}flyte-auth-injector-init-certs{{- end }}
{{- define "flyte-auth-agent.initCertsSecret" -}}flyte-auth-injector-init-certs-secret{{- end }}
{{- define "flyte-auth-agent.servingCertificate" -}}flyte-auth-injector-serving{{- end }}

{{/* Labels of every object; `component` is webhook, init-certs or certificates. */}}
{{- define "flyte-auth-agent.labels" -}}
app.kubernetes.io/name: flyte-auth-injector
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: flyte-auth-agent
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The injector pods' selector: deploy/base's, so that both installs select alike. */}}
{{- define "flyte-auth-agent.selectorLabels" -}}
app.kubernetes.io/name: flyte-auth-injector
app.kubernetes.io/component: webhook
{{- end }}

{{/* repository:tag[@digest]; the tag defaults to the chart's appVersion. */}}
{{- define "flyte-auth-agent.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- $image := printf "%s:%s" .Values.image.repository $tag -}}
{{- if .Values.image.digest -}}{{- $image = printf "%s@%s" $image .Values.image.digest -}}{{- end -}}
{{- $image -}}
{{- end }}

{{/* config.yaml as the injector reads it: the `config` value, the sidecar's image defaulting to
the chart's. */}}
{{- define "flyte-auth-agent.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $agent := get $config "agent" | default dict -}}
{{- if not (get $agent "image") -}}
{{- $_ := set $agent "image" (include "flyte-auth-agent.image" .) -}}
{{- end -}}
{{- $_ := set $config "agent" $agent -}}
{{- toYaml $config -}}
{{- end }}

{{/* The port of config.server.listen (host:port or [v6]:port): the container's, the Service's
target and the NetworkPolicy's, so they cannot disagree with what the injector binds. */}}
{{- define "flyte-auth-agent.port" -}}
{{- $listen := .Values.config.server.listen -}}
{{- $port := regexFind "[0-9]+$" $listen -}}
{{- if not (regexMatch ":[0-9]+$" $listen) -}}
{{- fail (printf "config.server.listen %q: expected host:port" $listen) -}}
{{- end -}}
{{- $port -}}
{{- end }}

{{/* The directory the TLS Secret is mounted in: that of config.server.cert_file and key_file,
which must be the Secret's keys tls.crt and tls.key. */}}
{{- define "flyte-auth-agent.certsDir" -}}
{{- $server := .Values.config.server -}}
{{- $cert := $server.cert_file -}}
{{- $key := $server.key_file -}}
{{- if or (ne (base $cert) "tls.crt") (ne (base $key) "tls.key") (ne (dir $cert) (dir $key)) -}}
{{- fail (printf "config.server.cert_file %q and key_file %q: must be tls.crt and tls.key in one directory (where the Secret %s is mounted)" $cert $key (include "flyte-auth-agent.tlsSecret" .)) -}}
{{- end -}}
{{- dir $cert -}}
{{- end }}

{{/* The hook annotations of the init-certs objects; the argument is (dict "events" "weight"). */}}
{{- define "flyte-auth-agent.initCertsHook" -}}
helm.sh/hook: {{ .events }}
helm.sh/hook-weight: {{ .weight | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end }}
