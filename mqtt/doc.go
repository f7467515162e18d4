// Package mqtt brings MQTT events into moongate, either from an embedded
// broker (mochi-mqtt) or from an external broker (paho), behind one ingest
// interface, and publishes messages back out.
package mqtt
