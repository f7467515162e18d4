// Package devsim simulates a fleet of MQTT devices that follow moongate's
// device contract (firmware-examples/README.md): each device connects with
// its own client id and persistent session, announces itself on
// PREFIX/DEVICE/status (retained, QoS 1: "online" after connecting,
// "offline" before a clean disconnect and as the last will), subscribes to
// PREFIX/DEVICE/cmd and publishes JSON telemetry on PREFIX/DEVICE/telemetry
// at a jittered rate, at QoS 0 or 1.
//
// Every telemetry payload carries the device's sequence number (1, 2, ...
// per device and run) and its send time in milliseconds, so a consumer can
// check completeness (every acknowledged device+seq stored exactly once) and
// measure latency. See [Payload].
//
// Run drives the fleet and returns a [Report]; [Config.OnAck] and
// [Config.OnCommand] let a benchmark or a test observe every acknowledged
// message and every command as it happens.
//
// The MQTT client is a small MQTT 3.1.1 implementation on the packet codec
// of mochi-mqtt (a dependency of moongate already), not paho: paho's publish
// tokens complete without error when the connection drops before the PUBACK
// (eclipse/paho.mqtt.golang#563), so they cannot tell which messages the
// broker acknowledged, and a paho client costs several goroutines. Here a
// message counts as acknowledged only when its PUBACK arrived, a device
// costs two goroutines (its publisher and its reader) and a few kilobytes,
// and unacknowledged messages are resent with the DUP flag after a
// reconnect, as a device with a persistent session does.
package devsim
