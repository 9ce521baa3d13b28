#!/usr/bin/env bash
# The bashio functions the add-ons call, as bashio defines them, over /data/options.json (the Supervisor's file).
# Discovery goes to /run/discovery.json, a JSON line per call, instead of the Supervisor's API, for the test to
# read. tests/test_addon.py runs the add-ons' scripts with this library too, with its own two files.
OPTIONS="${BASHIO_OPTIONS:-/data/options.json}"
DISCOVERY="${BASHIO_DISCOVERY:-/run/discovery.json}"
bashio::log() { printf '[%s] %s: %s\n' "$(date +%T)" "$1" "${*:2}" >&2; }
bashio::log.trace() { :; }
bashio::log.debug() { :; }
bashio::log.info() { bashio::log INFO "$@"; }
bashio::log.notice() { bashio::log NOTICE "$@"; }
bashio::log.warning() { bashio::log WARNING "$@"; }
bashio::log.error() { bashio::log ERROR "$@"; }
bashio::log.fatal() { bashio::log FATAL "$@"; }
bashio::exit.nok() { [[ $# -gt 0 ]] && bashio::log.fatal "$@"; exit 1; }
bashio::exit.ok() { exit 0; }
bashio::config() { jq -r --arg key "$1" '.[$key] | if . == null then "null" else . end' "${OPTIONS}"; }
bashio::config.exists() { [[ "$(bashio::config "$1")" != "null" ]]; }
bashio::config.has_value() { local v; v="$(bashio::config "$1")"; [[ "${v}" != "null" && -n "${v}" ]]; }
bashio::config.is_empty() { ! bashio::config.has_value "$1"; }
bashio::config.equals() { [[ "$(bashio::config "$1")" == "$2" ]]; }
bashio::config.true() { [[ "$(bashio::config "$1")" == "true" ]]; }
bashio::config.false() { [[ "$(bashio::config "$1")" == "false" ]]; }
# key value pairs to a JSON object; a value that starts with ^ is JSON already
bashio::var.json() {
    local json='{}'
    while [[ $# -ge 2 ]]; do
        if [[ "$2" == ^* ]]; then
            json=$(jq -c --arg k "$1" --argjson v "${2:1}" '.[$k] = $v' <<<"${json}")
        else
            json=$(jq -c --arg k "$1" --arg v "$2" '.[$k] = $v' <<<"${json}")
        fi
        shift 2
    done
    printf '%s' "${json}"
}
bashio::discovery() {
    jq -n -c --arg service "$1" --argjson config "$2" '{service: $service, config: $config}' >>"${DISCOVERY}"
    printf '%s' "stand-in-discovery-uuid"
}
