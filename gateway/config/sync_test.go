package config

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestSyncTargets(t *testing.T) {
	c, err := Parse("m.yaml", []byte(`
gateway_id: gw1
sync:
  targets:
    - name: cloud
      type: http
      http: {url: "https://x.example/in", headers: {Authorization: "Bearer t"}}
      priority_streams: [alerts]
    - name: broker
      type: mqtt
      mqtt: {broker: "ssl://b.example:8883", tls: {cert: c.pem, key: k.pem}}
      batch: {max_records: 50, max_delay: 0}
    - name: js
      type: nats
      nats: {url: "nats://a:4222,nats://b:4222"}
`))
	if err != nil {
		t.Fatal(err)
	}
	ts := c.Sync.Targets
	if len(ts) != 3 {
		t.Fatalf("%+v", ts)
	}
	h, m, n := ts[0], ts[1], ts[2]
	if h.Batch.MaxRecords != 500 || h.Batch.MaxBytes != 1<<20 || h.Batch.MaxDelay != Duration(100*time.Millisecond) || h.Inflight != 256 ||
		h.HTTP.Compression != "gzip" || h.Backoff.Initial != Duration(500*time.Millisecond) || h.Backoff.Max != Duration(time.Minute) || h.AckTimeout != Duration(30*time.Second) {
		t.Errorf("http defaults %+v", h)
	}
	if m.MQTT.Topic != "gateways/{gateway}/{stream}" || m.MQTT.ClientID != "moongate-sync-gw1-broker" || m.Batch.MaxRecords != 50 || m.Batch.MaxDelay != 0 || // explicit 0: send at once

		m.MQTT.MaxPayload != SyncMQTTMaxPayload || SyncMQTTMaxPayload != 268369916 {
		t.Errorf("mqtt defaults %+v", m)
	}
	if n.NATS.Subject != "gateways.{gateway}.{stream}" {
		t.Errorf("nats defaults %+v", n)
	}
}

func TestSyncTargetErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"sync: {targets: [{name: Cloud, type: http, http: {url: 'http://x'}}]}", `m.yaml:1: sync.targets[0].name: invalid target name "Cloud"`},
		{"sync:\n  targets:\n    - {name: a, type: http, http: {url: 'http://x'}}\n    - {name: a, type: http, http: {url: 'http://y'}}", `m.yaml:4: sync.targets[1].name: target "a" is already defined by sync.targets[0]`},
		{"sync: {targets: [{name: a, type: kafka}]}", `sync.targets[0].type: unknown value "kafka" (valid: mqtt, http, nats)`},
		{"sync: {targets: [{name: a, type: http}]}", `sync.targets[0].http.url: required for an http target`},
		{"sync: {targets: [{name: a, type: http, http: {url: 'ftp://x'}}]}", `sync.targets[0].http.url: invalid "ftp://x"`},
		{"sync: {targets: [{name: a, type: mqtt, mqtt: {broker: 'tcp://x:1', topic: 'a/#'}}]}", `sync.targets[0].mqtt.topic: "a/#": a publish topic cannot contain wildcards`},
		{"sync: {targets: [{name: a, type: mqtt, mqtt: {broker: 'tcp://x:1'}, nats: {url: 'nats://x'}}]}", `sync.targets[0].nats: set, but the target's type is mqtt`},
		{"sync: {targets: [{name: a, type: nats, nats: {url: 'http://x'}}]}", `sync.targets[0].nats.url: invalid "http://x"`},
		{"sync: {targets: [{name: a, type: nats, nats: {url: 'nats://x', subject: \"up.\\r\\n{stream}\"}}]}", `sync.targets[0].nats.subject: "up.\r\n{stream}": a publish subject cannot contain wildcards or white space`},
		{"sync: {targets: [{name: a, type: nats, nats: {url: 'nats://x', tls: {cert: c}}}]}", `sync.targets[0].nats.tls: cert and key must be set together`},
		{"sync: {targets: [{name: a, type: http, http: {url: 'http://x'}, batch: {max_records: 0, max_bytes: 10}}]}", `sync.targets[0].batch.max_bytes: 10 out of range`},
		{"sync: {targets: [{name: a, type: http, http: {url: 'http://x'}, backoff: {initial: 2s, max: 1s}}]}", `sync.targets[0].backoff.max: 1s is less than backoff.initial 2s`},
		{"sync: {targets: [{name: a, type: http, http: {url: 'http://x'}, backoff: {max: 2562047h}}]}", `sync.targets[0].backoff.max: 2562047h0m0s is more than 24h0m0s`},
		{"sync: {targets: [{name: a, type: http, http: {url: 'http://x'}, priority_streams: ['A B']}]}", `sync.targets[0].priority_streams[0]: invalid stream name "A B"`},
		{"sync: {targets: [{name: a, type: http, http: {url: 'http://x'}, bandwidth_limit: 10}]}", `sync.targets[0].bandwidth_limit: 10B is below 1KiB per second`},
		{"sync: {targets: [{name: a, type: http, http: {url: 'http://x'}, colour: red}]}", `sync.targets[0].colour: unknown key`},
		// TLS settings with a plaintext URL would be ignored: credentials in clear.
		{"sync: {targets: [{name: a, type: http, http: {url: 'http://x/in', tls: {ca: ca.pem}}}]}", `m.yaml:1: sync.targets[0].http.tls: set, but url "http://x/in" is plain http`},
		{"sync: {targets: [{name: a, type: mqtt, mqtt: {broker: 'tcp://x:1883', tls: {cert: c.pem, key: k.pem}}}]}", `m.yaml:1: sync.targets[0].mqtt.tls: set, but broker "tcp://x:1883" is not a TLS URL`},
		{"sync: {targets: [{name: a, type: mqtt, mqtt: {broker: 'mqtt://x:1883', tls: {insecure_skip_verify: true}}}]}", `sync.targets[0].mqtt.tls: set, but broker "mqtt://x:1883" is not a TLS URL`},
		{"sync: {targets: [{name: a, type: mqtt, mqtt: {broker: 'ws://x/mqtt', tls: {ca: ca.pem}}}]}", `sync.targets[0].mqtt.tls: set, but broker "ws://x/mqtt" is not a TLS URL`},
		{"sync: {targets: [{name: a, type: mqtt, mqtt: {broker: 'tcp://x:1', max_payload: 100}}]}", `sync.targets[0].mqtt.max_payload: 100B out of range [1KiB, 268369916 bytes]`},
		{"sync: {targets: [{name: a, type: mqtt, mqtt: {broker: 'tcp://x:1', max_payload: 1GiB}}]}", `sync.targets[0].mqtt.max_payload: 1GiB out of range`},
		{"sync: {targets: [{name: a, type: mqtt, mqtt: {broker: 'tcp://x:1', max_payload: -1}}]}", `sync.targets[0].mqtt.max_payload`},
		{"sync: {targets: [{name: a, type: http, http: {url: 'http://x'}, mqtt: {max_payload: 1MiB}}]}", `sync.targets[0].mqtt: set, but the target's type is http`},
	} {
		_, err := Parse("m.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s\n got %v\nwant %s", tc.yaml, err, tc.want)
		}
	}
}

// TestSyncTLSAndMaxPayload: TLS settings go with TLS URLs, and an mqtt
// target's max_payload is read as a size.
func TestSyncTLSAndMaxPayload(t *testing.T) {
	c, err := Parse("m.yaml", []byte(`
sync:
  targets:
    - {name: a, type: http, http: {url: "https://x/in", tls: {ca: ca.pem}}}
    - {name: b, type: mqtt, mqtt: {broker: "mqtts://x:8883", tls: {ca: ca.pem}, max_payload: 256KiB}}
    - {name: c, type: mqtt, mqtt: {broker: "wss://x/mqtt", tls: {insecure_skip_verify: true}}}
    - {name: d, type: mqtt, mqtt: {broker: "tcp://x:1883"}}
`))
	if err != nil {
		t.Fatal(err)
	}
	if ts := c.Sync.Targets; ts[1].MQTT.MaxPayload != 256<<10 || ts[2].MQTT.MaxPayload != SyncMQTTMaxPayload || ts[3].MQTT.MaxPayload != SyncMQTTMaxPayload {
		t.Fatalf("%+v", ts)
	}
}

func TestSyncRedacted(t *testing.T) {
	c, err := Parse("m.yaml", []byte(`
sync:
  targets:
    - {name: a, type: http, http: {url: "https://x", headers: {Authorization: "Bearer s3cret"}}}
    - {name: b, type: mqtt, mqtt: {broker: "tcp://x:1", password: s3cret}}
    - {name: c, type: nats, nats: {url: "nats://x:1", token: s3cret, password: s3cret}}
`))
	if err != nil {
		t.Fatal(err)
	}
	r := c.Redacted()
	if s := fmt.Sprintf("%+v", r); strings.Contains(s, "s3cret") {
		t.Fatalf("secret in %s", s)
	}
	if c.Sync.Targets[0].HTTP.Headers["Authorization"] != "Bearer s3cret" || c.Sync.Targets[1].MQTT.Password != "s3cret" {
		t.Fatal("Redacted modified the original")
	}
}

func TestSyncEnvSecrets(t *testing.T) {
	c, err := Parse("m.yaml", []byte(`
sync:
  targets:
    - {name: up-1, type: http, http: {url: "https://x", headers: {X-A: b}}}
    - {name: b, type: mqtt, mqtt: {broker: "tcp://x:1", password: file}}
    - {name: c, type: nats, nats: {url: "nats://x:1"}}
`))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"MOONGATE_SYNC_UP_1_AUTHORIZATION": "Bearer e", "MOONGATE_SYNC_B_PASSWORD": "env", "MOONGATE_SYNC_C_TOKEN": "tok"}
	c.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	ts := c.Sync.Targets
	if ts[0].HTTP.Headers["Authorization"] != "Bearer e" || ts[0].HTTP.Headers["X-A"] != "b" || ts[1].MQTT.Password != "env" || ts[2].NATS.Token != "tok" {
		t.Fatalf("%+v", ts)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}
