#!/usr/bin/env bash
# Installs what moongate's tests need when it is missing: Debian packages
# for the real peers the tests start (mosquitto, nats-server), qemu-user
# for the 32-bit ARM store tests, protoc with the well-known protos for
# `make generate-check`, and the C toolchain, Paho MQTT C and python3 for
# firmware-examples. As root it uses apt-get; otherwise it stops with the
# exact command to run.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
command -v qemu-arm >/dev/null 2>&1 || need+=(qemu-user)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v curl >/dev/null 2>&1 || need+=(curl) # docs/api.md examples (gateway/apiserver)
# firmware-examples: the linux-c device is built with make, cc and the Paho
# MQTT C library; the MicroPython sources are checked with python3 and
# pyflakes3.
command -v make >/dev/null 2>&1 || need+=(make)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
[ -f /usr/include/MQTTClient.h ] || need+=(libpaho-mqtt-dev)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v pyflakes3 >/dev/null 2>&1 || need+=(pyflakes3)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "moongate tests need: ${need[*]}" >&2
  echo "run: sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "installing test dependencies: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
