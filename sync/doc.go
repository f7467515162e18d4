// Package sync drains the store's per-target outboxes to upstream systems
// (MQTT, HTTP, NATS JetStream) whenever connectivity allows.
package sync
