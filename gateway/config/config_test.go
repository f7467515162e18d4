package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const goodHash = "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
	if c.DataDir != "./moongate-data" || c.MQTT.Embedded.Listen != "127.0.0.1:1883" || c.API.Listen != "127.0.0.1:8080" {
		t.Fatalf("unexpected defaults: %+v", c)
	}
	if c.GatewayID == "" {
		t.Fatal("default gateway id is empty")
	}
}

func TestEmptyFileIsDefault(t *testing.T) {
	for _, src := range []string{"", "\n# only a comment\n", "---\n", "mqtt:\n", "log: {}\nstore:\n  quotas:\n"} {
		c, err := Parse("m.yaml", []byte(src))
		if err != nil {
			t.Fatalf("Parse(%q) = %v", src, err)
		}
		want := Default()
		want.finish()
		c.file, c.lines, want.file, want.lines = "", nil, "", nil
		if !reflect.DeepEqual(c, want) {
			t.Errorf("Parse(%q) = %+v, want defaults %+v", src, c, want)
		}
	}
}

func TestParseFull(t *testing.T) {
	src := `
gateway_id: pi-7
data_dir: /var/lib/moongate
functions_dir: /etc/moongate/functions
log: {level: debug, format: json}
mqtt:
  mode: embedded
  max_payload: 1MiB
  embedded:
    listen: 0.0.0.0:1883
    websocket_listen: 127.0.0.1:8083
    tls: {cert: /c.pem, key: /k.pem}
    allow_anonymous: false
    users:
      - username: dev1
        password_hash: "` + goodHash + `"
        publish: ["devices/{username}/#"]
      - username: dev2
        password_hash: "` + goodHash + `"
        subscribe: []
    max_session_expiry: 10m
    max_inflight: 32
    max_queued_per_client: 500
    max_clients: 5000
    max_unauthenticated: 8
    max_unauthenticated_per_address: 8
    max_retained: 20
    max_sessions: 8000
    persist_sessions: false
api:
  listen: ":8080"
  tls: {cert: /c.pem, key: /k.pem}
  tokens:
    - {name: ci, scope: admin, hash: "sha256:0000000000000000000000000000000000000000000000000000000000000000"}
  max_body_bytes: 1MiB
  max_connections: 16
store:
  profile: large
  durability: interval
  sync_interval: 50ms
  disk_reserve: 1GB
  quotas:
    records: {max_bytes: 1073741824, max_age: 24h, policy: reject_new}
    logs: {max_bytes: "1.5 MiB"}
pipeline:
  workers: 3
  inbox_limit: 500
  retry: {max_attempts: 2, initial_backoff: 1s, max_backoff: 1m}
functions:
  timeout: 2s
  max_steps: 1_000_000
  max_memory: 32MiB
  max_concurrency: 8
  min_instances: 1
  idle_timeout: 0
`
	c, err := Parse("m.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		got, want any
	}{
		{c.GatewayID, "pi-7"},
		{c.Log.Format, "json"},
		{c.MQTT.MaxPayload, Size(1 << 20)},
		{c.MQTT.Embedded.AllowAnonymous, false},
		{c.MQTT.Embedded.Users[0].Subscribe, []string{DefaultACL}},
		{c.MQTT.Embedded.Users[1].Subscribe, []string{}},
		{c.MQTT.Embedded.Users[1].Publish, []string{DefaultACL}},
		{c.MQTT.Embedded.MaxSessionExpiry, Duration(10 * time.Minute)},
		{c.MQTT.Embedded.MaxClients, 5000},
		{c.MQTT.Embedded.MaxSessions, 8000},
		{c.MQTT.Embedded.MaxRetained, 20},
		{c.MQTT.Embedded.MaxUnauthenticated, 8},
		{c.MQTT.Embedded.MaxUnauthenticatedPerAddress, 8},
		{c.MQTT.Embedded.PersistSessions, false},
		{c.MQTT.External.ClientID, "moongate-pi-7"},
		{c.Store.DiskReserve, Size(1e9)},
		{c.Store.Quotas.Records.MaxBytes, Size(1 << 30)},
		{c.Store.Quotas.Records.Policy, PolicyRejectNew},
		{c.Store.Quotas.Logs.MaxBytes, Size(3 << 19)},
		{c.Store.Quotas.Logs.MaxAge, Duration(72 * time.Hour)}, // default kept
		{c.Store.Quotas.Outbox.MaxBytes, Size(128 << 20)},
		{c.Pipeline.EffectiveWorkers(2), 3},
		{c.Functions.MaxSteps, int64(1_000_000)},
		{c.Functions.IdleTimeout, Duration(0)},
		{c.MQTT.Embedded.AnonymousAllowed(), false},
		{c.API.Tokens, []APIToken{{Name: "ci", Scope: ScopeAdmin, Hash: "sha256:0000000000000000000000000000000000000000000000000000000000000000"}}},
		{c.API.MaxBodyBytes, Size(1 << 20)},
		{c.API.MaxConnections, 16},
	}
	for i, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("check %d: got %#v, want %#v", i, ck.got, ck.want)
		}
	}
	if !Default().MQTT.Embedded.AnonymousAllowed() {
		t.Error("anonymous access should be allowed on the default loopback listener")
	}
	e := Embedded{AllowAnonymous: true, Listen: "[::1]:1883", WebsocketListen: "0.0.0.0:8083"}
	if e.AnonymousAllowed() {
		t.Error("anonymous access allowed with a LAN websocket listener")
	}
	if e.WebsocketListen = "localhost:8083"; !e.AnonymousAllowed() {
		t.Error("anonymous access refused on loopback listeners")
	}
	if Default().Pipeline.EffectiveWorkers(4) != 8 {
		t.Error("workers 0 should be 2 x CPUs")
	}
}

// TestErrors checks the messages of bad files: every case must produce an
// error naming the file, the line and the key path.
func TestErrors(t *testing.T) {
	cases := []struct {
		name, src string
		want      []string // substrings of the error, each "file:line: path: ..." or similar
	}{
		{"unknown top-level key", "gateway_id: a\nlistn: 1\n", []string{"m.yaml:2: listn: unknown key"}},
		{"bad bucket name", "blobs:\n  buckets:\n    Photos: {}\n", []string{`blobs.buckets.Photos: invalid bucket name "Photos"`}},
		{"bucket unknown key", "blobs:\n  buckets:\n    p: {max_sise: 1MiB}\n", []string{"blobs.buckets.p.max_sise: unknown key"}},
		{"bucket max_size too big", "blobs:\n  buckets:\n    p: {max_size: 5GiB}\n", []string{"blobs.buckets.p.max_size:"}},
		{"bucket max_size over max_bytes", "blobs:\n  buckets:\n    p: {max_size: 2MiB, max_bytes: 1MiB}\n", []string{"blobs.buckets.p.max_size: 2097152 is more than max_bytes 1048576"}},
		{"bucket sync to an unknown target", "sync:\n  targets:\n    - {name: cloud, type: http, http: {url: 'https://x/in'}}\n    - {name: edge, type: mqtt, mqtt: {broker: 'tcp://h:1883'}}\nblobs:\n  buckets:\n    p:\n      sync: [cloud, clowd]\n",
			[]string{`m.yaml:8: blobs.buckets.p.sync[1]: "clowd" is not a sync target (sync.targets: configured: cloud, edge)`}},
		{"bucket sync without targets", "blobs:\n  buckets:\n    p: {sync: [cloud]}\n", []string{`m.yaml:3: blobs.buckets.p.sync[0]: "cloud" is not a sync target (sync.targets: none are configured)`}},
		{"bucket sync twice", "sync: {targets: [{name: cloud, type: http, http: {url: 'https://x/in'}}]}\nblobs: {buckets: {p: {sync: [cloud, cloud]}}}\n", []string{`blobs.buckets.p.sync[1]: "cloud" is already listed as sync[0]`}},
		{"bucket sync not a list", "blobs: {buckets: {p: {sync: cloud}}}\n", []string{"m.yaml:1: blobs.buckets.p.sync: expected a list"}},
		{"upload read timeout too short", "blobs: {upload_read_timeout: 10ms}\n", []string{"m.yaml:1: blobs.upload_read_timeout: 10ms out of range [100ms, 1h]"}},
		{"unknown nested key", "mqtt:\n  embedded:\n    listn: x\n", []string{"m.yaml:3: mqtt.embedded.listn: unknown key (valid keys here: allow_anonymous,"}},
		{"wrong type mapping", "mqtt: 5\n", []string{"m.yaml:1: mqtt: expected a mapping, got integer 5"}},
		{"wrong type int", "pipeline:\n  workers: many\n", []string{`m.yaml:2: pipeline.workers: expected an integer, got string "many"`}},
		{"wrong type bool", "mqtt:\n  embedded:\n    allow_anonymous: 1\n", []string{"m.yaml:3: mqtt.embedded.allow_anonymous: expected true or false, got integer 1"}},
		{"wrong type string", "log:\n  level: [a]\n", []string{"m.yaml:2: log.level: expected a string, got a list"}},
		{"wrong type list", "mqtt:\n  embedded:\n    users: dev1\n", []string{"m.yaml:3: mqtt.embedded.users: expected a list"}},
		{"float for int", "pipeline: {workers: 1.5}\n", []string{"m.yaml:1: pipeline.workers: expected an integer, got number 1.5"}},
		{"int overflow", "pipeline: {workers: 99999999999999999999}\n", []string{"m.yaml:1: pipeline.workers:"}},
		{"bad size unit", "mqtt:\n  max_payload: 16MB2\n", []string{`m.yaml:2: mqtt.max_payload: invalid size "16MB2": unknown unit`}},
		{"payload over one store value", "mqtt:\n  max_payload: 2MiB\n", []string{"m.yaml:2: mqtt.max_payload: 2MiB out of range [1B, 1048576 bytes]"}},
		{"bad size word", "store:\n  disk_reserve: lots\n", []string{`m.yaml:2: store.disk_reserve: invalid size "lots"`}},
		{"negative size", "store:\n  disk_reserve: -5\n", []string{"m.yaml:2: store.disk_reserve: invalid size -5: negative"}},
		{"negative size string", "store:\n  disk_reserve: -5MiB\n", []string{`m.yaml:2: store.disk_reserve: invalid size "-5MiB": negative`}},
		{"negative duration", "functions:\n  timeout: -1s\n", []string{`m.yaml:2: functions.timeout: invalid duration "-1s": negative`}},
		{"duration without unit", "functions:\n  timeout: 5\n", []string{`m.yaml:2: functions.timeout: invalid duration 5: needs a unit`}},
		{"bad duration", "functions:\n  timeout: 1 sec\n", []string{`m.yaml:2: functions.timeout: invalid duration "1 sec"`}},
		{"bad listen address", "mqtt:\n  embedded:\n    listen: x\n", []string{`m.yaml:3: mqtt.embedded.listen: invalid address "x": missing port in address`}},
		{"bad listen port", "api:\n  listen: 127.0.0.1:99999\n", []string{`m.yaml:2: api.listen: invalid address "127.0.0.1:99999": bad port`}},
		{"api on LAN without tls", "api:\n  listen: 0.0.0.0:8080\n", []string{"m.yaml:2: api.listen: a non-loopback address needs api.tls"}},
		{"api tls cert only", "api:\n  tls: {cert: /c.pem}\n", []string{"api.tls.key: tls.cert is set but tls.key is not"}},
		{"api connections zero", "api:\n  max_connections: 0\n", []string{"m.yaml:2: api.max_connections: 0 out of range [1, 65535]"}},
		{"api connections too many", "api:\n  max_connections: 65536\n", []string{"m.yaml:2: api.max_connections: 65536 out of range [1, 65535]"}},
		{"api body too small", "api:\n  max_body_bytes: 1KiB\n", []string{"m.yaml:2: api.max_body_bytes: 1KiB out of range"}},
		{"api token bad scope", "api:\n  tokens:\n    - {name: a, scope: root, hash: 'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'}\n", []string{`m.yaml:3: api.tokens[0].scope: invalid "root": admin or read`}},
		{"api token plain", "api:\n  tokens:\n    - {name: a, scope: read, hash: secret}\n", []string{`m.yaml:3: api.tokens[0].hash: invalid`}},
		{"api token upper-case hash", "api:\n  tokens:\n    - {name: a, scope: read, hash: 'sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'}\n", []string{`api.tokens[0].hash: invalid`}},
		{"api token no name", "api:\n  tokens:\n    - {scope: read, hash: 'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'}\n", []string{`api.tokens[0].name: invalid ""`}},
		{"api token duplicate", "api:\n  tokens:\n    - {name: a, scope: read, hash: 'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'}\n    - {name: a, scope: admin, hash: 'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'}\n", []string{`api.tokens[1].name: duplicate token name "a"`, "api.tokens[1].hash: same token as tokens[0]"}},
		{"api token unknown key", "api:\n  tokens:\n    - {name: a, scope: read, hash: 'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', token: x}\n", []string{"api.tokens[0].token: unknown key"}},
		{"bad websocket listen", "mqtt: {embedded: {websocket_listen: 'a b:1'}}\n", []string{`m.yaml:1: mqtt.embedded.websocket_listen: invalid address "a b:1": bad host`}},
		{"non-loopback without users", "mqtt:\n  embedded:\n    listen: 0.0.0.0:1883\n", []string{"m.yaml:2: mqtt.embedded.users: a non-loopback listen address requires at least one user"}},
		{"all interfaces without users", "mqtt:\n  embedded:\n    listen: :1883\n", []string{"mqtt.embedded.users: a non-loopback"}},
		{"non-loopback websocket without users", "mqtt:\n  embedded:\n    websocket_listen: 192.168.1.2:8083\n", []string{"m.yaml:2: mqtt.embedded.users: a non-loopback"}},
		{"explicit anonymous on LAN", "mqtt:\n  embedded:\n    listen: 0.0.0.0:1883\n    allow_anonymous: true\n    users: [{username: a, password_hash: '" + goodHash + "'}]\n", []string{"m.yaml:4: mqtt.embedded.allow_anonymous: anonymous access is only honoured on loopback"}},
		{"user without hash", "mqtt:\n  embedded:\n    users:\n      - username: dev1\n", []string{"m.yaml:4: mqtt.embedded.users[0].password_hash: must not be empty"}},
		{"user with plain password", "mqtt:\n  embedded:\n    users:\n      - username: dev1\n        password_hash: secret\n", []string{"m.yaml:5: mqtt.embedded.users[0].password_hash: not a bcrypt hash"}},
		{"user with md5 crypt", "mqtt:\n  embedded:\n    users:\n      - username: dev1\n        password_hash: '$1$abc$0123456789012345678901'\n", []string{"users[0].password_hash: not a bcrypt hash"}},
		{"bcrypt cost too low", "mqtt: {embedded: {users: [{username: a, password_hash: '$2a$03$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy'}]}}\n", []string{"bcrypt cost 3 out of range"}},
		{"user without name", "mqtt: {embedded: {users: [{password_hash: '" + goodHash + "'}]}}\n", []string{"m.yaml:1: mqtt.embedded.users[0].username: must not be empty"}},
		{"duplicate user", "mqtt:\n  embedded:\n    users:\n      - {username: a, password_hash: '" + goodHash + "'}\n      - {username: a, password_hash: '" + goodHash + "'}\n", []string{"m.yaml:5: mqtt.embedded.users[1].username: duplicate username"}},
		{"user name with slash", "mqtt: {embedded: {users: [{username: a/b, password_hash: '" + goodHash + "'}]}}\n", []string{`users[0].username: invalid "a/b"`}},
		{"bad acl", "mqtt:\n  embedded:\n    users:\n      - username: a\n        password_hash: '" + goodHash + "'\n        publish: ['a/#/b', 'x{y}']\n", []string{"m.yaml:6: mqtt.embedded.users[0].publish[0]: invalid topic filter \"a/#/b\": '#' must be the last level", "users[0].publish[1]: invalid topic filter \"x{y}\""}},
		{"external without broker", "mqtt:\n  mode: external\n", []string{"m.yaml:1: mqtt.external.broker: required in external mode"}},
		{"bad broker scheme", "mqtt:\n  mode: external\n  external:\n    broker: http://h:1883\n", []string{`m.yaml:4: mqtt.external.broker: invalid broker URL "http://h:1883": unsupported scheme "http"`}},
		{"broker without port", "mqtt: {mode: external, external: {broker: 'tcp://h'}}\n", []string{"missing port"}},
		{"broker with credentials", "mqtt: {mode: external, external: {broker: 'tcp://u:p@h:1883'}}\n", []string{"put credentials in the username and password settings"}},
		{"tls options on tcp broker", "mqtt:\n  mode: external\n  external:\n    broker: tcp://h:1883\n    tls: {ca: /ca.pem}\n", []string{"m.yaml:5: mqtt.external.tls: TLS settings need a TLS broker URL"}},
		{"client tls cert without key", "mqtt:\n  mode: external\n  external:\n    broker: ssl://h:8883\n    tls:\n      cert: /c.pem\n", []string{"m.yaml:5: mqtt.external.tls.key: tls.cert is set but tls.key is not"}},
		{"server tls cert without key", "mqtt:\n  embedded:\n    tls:\n      cert: /c.pem\n", []string{"m.yaml:3: mqtt.embedded.tls.key: tls.cert is set but tls.key is not"}},
		{"server tls key without cert", "mqtt:\n  embedded:\n    tls:\n      key: /k.pem\n", []string{"m.yaml:3: mqtt.embedded.tls.cert: tls.key is set but tls.cert is not"}},
		{"password without username", "mqtt: {mode: external, external: {broker: 'tcp://h:1', password: x}}\n", []string{"mqtt.external.username: a password is set but no username"}},
		{"keepalive too short", "mqtt: {mode: external, external: {broker: 'tcp://h:1', keepalive: 10ms}}\n", []string{"mqtt.external.keepalive: 10ms out of range"}},
		{"max_packet_size over the MQTT limit", "mqtt: {mode: external, external: {broker: 'tcp://h:1', max_packet_size: 1GiB}}\n", []string{"mqtt.external.max_packet_size: 1GiB out of range [0, 268435460 bytes]"}},
		{"negative max_packet_size", "mqtt: {mode: external, external: {broker: 'tcp://h:1', max_packet_size: -1}}\n", []string{"mqtt.external.max_packet_size"}},
		{"unknown mode", "mqtt:\n  mode: embeded\n", []string{`m.yaml:2: mqtt.mode: unknown value "embeded" (valid: embedded, external)`}},
		{"unknown log level", "log:\n  level: verbose\n", []string{`m.yaml:2: log.level: unknown value "verbose" (valid: debug, info, warn, error)`}},
		{"unknown log format", "log: {format: xml}\n", []string{`log.format: unknown value "xml"`}},
		{"unknown profile", "store:\n  profile: huge\n", []string{`m.yaml:2: store.profile: unknown value "huge"`}},
		{"unknown durability", "store:\n  durability: sometimes\n", []string{`m.yaml:2: store.durability: unknown value "sometimes"`}},
		{"unknown policy", "store:\n  quotas:\n    logs:\n      policy: keep\n", []string{`m.yaml:4: store.quotas.logs.policy: unknown value "keep"`}},
		{"inbox may not drop", "store:\n  quotas:\n    inbox:\n      policy: drop_oldest\n", []string{"m.yaml:4: store.quotas.inbox.policy: must be reject_new"}},
		{"zero sync interval", "store:\n  durability: interval\n  sync_interval: 0\n", []string{"m.yaml:3: store.sync_interval: 0s out of range"}},
		{"workers negative", "pipeline:\n  workers: -1\n", []string{"m.yaml:2: pipeline.workers: -1 out of range [0, 1024]"}},
		{"inbox limit zero", "pipeline:\n  inbox_limit: 0\n", []string{"m.yaml:2: pipeline.inbox_limit: 0 out of range"}},
		{"max clients zero", "mqtt:\n  embedded:\n    max_clients: 0\n", []string{"m.yaml:3: mqtt.embedded.max_clients: 0 out of range"}},
		{"max unauthenticated zero", "mqtt:\n  embedded:\n    max_unauthenticated: 0\n", []string{"m.yaml:3: mqtt.embedded.max_unauthenticated: 0 out of range"}},
		{"per address over max unauthenticated", "mqtt:\n  embedded:\n    max_unauthenticated: 8\n    max_unauthenticated_per_address: 9\n", []string{"m.yaml:4: mqtt.embedded.max_unauthenticated_per_address: 9 out of range [1, max_unauthenticated = 8]"}},
		{"per address negative", "mqtt:\n  embedded:\n    max_unauthenticated_per_address: -1\n", []string{"m.yaml:3: mqtt.embedded.max_unauthenticated_per_address: -1 out of range [1, max_unauthenticated = 64]"}},
		{"max sessions below max clients", "mqtt:\n  embedded:\n    max_sessions: 999\n", []string{"m.yaml:3: mqtt.embedded.max_sessions: 999 out of range [max_clients = 1000, 2000000]"}},
		{"max sessions too many", "mqtt:\n  embedded:\n    max_sessions: 2000001\n", []string{"mqtt.embedded.max_sessions: 2000001 out of range"}},
		{"max retained zero", "mqtt:\n  embedded:\n    max_retained: 0\n", []string{"m.yaml:3: mqtt.embedded.max_retained: 0 out of range"}},
		{"persist sessions not a bool", "mqtt:\n  embedded:\n    persist_sessions: maybe\n", []string{"m.yaml:3"}},
		{"function backlog over inbox limit", "pipeline:\n  inbox_limit: 100\n  function_backlog: 101\n", []string{"m.yaml:3: pipeline.function_backlog: 101 out of range [0, inbox_limit = 100] (0: inbox_limit / 4)"}},
		{"function backlog negative", "pipeline:\n  function_backlog: -1\n", []string{"m.yaml:2: pipeline.function_backlog: -1 out of range [0, inbox_limit = 10000]"}},
		{"inbox bytes too small", "pipeline:\n  inbox_bytes: 1KiB\n", []string{"m.yaml:2: pipeline.inbox_bytes: 1024 out of range"}},
		{"max queued per client too big", "mqtt:\n  embedded:\n    max_queued_per_client: 65536\n", []string{"m.yaml:3: mqtt.embedded.max_queued_per_client: 65536 out of range [1, 65535]"}},
		{"max queued bytes below a message", "mqtt:\n  max_payload: 1MiB\n  embedded:\n    max_queued_bytes_per_client: 1MiB\n", []string{"m.yaml:4: mqtt.embedded.max_queued_bytes_per_client: 1MiB out of range [max_payload + 64KiB = 1114112 bytes, 1GiB] (0: 4 x max_payload)"}},
		{"max queued bytes too big", "mqtt:\n  embedded:\n    max_queued_bytes_per_client: 2GiB\n", []string{"m.yaml:3: mqtt.embedded.max_queued_bytes_per_client: 2GiB out of range [max_payload + 64KiB = 327680 bytes, 1GiB] (0: 4 x max_payload)"}},
		{"max chain events zero", "pipeline:\n  max_chain_events: 0\n", []string{"m.yaml:2: pipeline.max_chain_events: 0 out of range [1, 1000000]"}},
		{"max hops too big", "pipeline:\n  max_hops: 1001\n", []string{"m.yaml:2: pipeline.max_hops: 1001 out of range"}},
		{"backoff order", "pipeline:\n  retry:\n    initial_backoff: 1m\n    max_backoff: 1s\n", []string{"m.yaml:4: pipeline.retry.max_backoff: 1s is less than initial_backoff 1m0s"}},
		{"backoff too long", "pipeline:\n  retry:\n    max_backoff: 2562047h\n", []string{"m.yaml:3: pipeline.retry.max_backoff: 2562047h0m0s is more than 24h0m0s"}},
		{"timeout over cap", "functions:\n  timeout: 1h\n", []string{"m.yaml:2: functions.timeout: 1h0m0s out of range"}},
		{"min instances over concurrency", "functions:\n  max_concurrency: 2\n  min_instances: 3\n", []string{"m.yaml:3: functions.min_instances: 3 out of range [0, 2]"}},
		{"bad gateway id", "gateway_id: 'a b'\n", []string{`m.yaml:1: gateway_id: invalid "a b"`}},
		{"gateway id like a blob send's", "gateway_id: gw-blob\n", []string{`m.yaml:1: gateway_id: invalid "gw-blob": must not end in "-blob"`}},
		{"sync mqtt max_topic", "sync:\n  targets:\n    - name: up\n      type: mqtt\n      mqtt: {broker: \"tcp://127.0.0.1:1883\", max_topic: 70000}\n", []string{"sync.targets[0].mqtt.max_topic: 70000 out of range [1, 65535]"}},
		{"dead-letter quota too small", "store:\n  quotas:\n    deadletters:\n      max_bytes: 16KiB\n", []string{"m.yaml:4: store.quotas.deadletters.max_bytes: 16KiB is below 64KiB"}},
		{"usage max age negative", "store:\n  quotas:\n    usage:\n      max_age: -1h\n", []string{"m.yaml:4: store.quotas.usage.max_age"}},
		{"compaction share above one", "store:\n  compaction_share: 1.5\n", []string{"m.yaml:2: store.compaction_share: 1.5 out of range [0.1, 1] (0 turns pacing off)"}},
		{"compaction share negative", "store:\n  compaction_share: -0.5\n", []string{"m.yaml:2: store.compaction_share: -0.5 out of range [0.1, 1]"}},
		{"compaction share tiny", "store:\n  compaction_share: 0.01\n", []string{"m.yaml:2: store.compaction_share: 0.01 out of range [0.1, 1]"}},
		{"compaction share not a number", "store:\n  compaction_share: .nan\n", []string{"m.yaml:2: store.compaction_share"}},
		{"compaction share a string", "store:\n  compaction_share: half\n", []string{"m.yaml:2"}},
		{"usage max age below an hour", "store:\n  quotas:\n    usage:\n      max_age: 30m\n", []string{"m.yaml:4: store.quotas.usage.max_age: 30m0s is below 1h (the meters are per minute; 0 keeps them forever)"}},
		{"usage max bytes", "store:\n  quotas:\n    usage:\n      max_bytes: 1MiB\n", []string{"m.yaml:4", "max_bytes"}},
		{"memory limit below minimum", "memory_limit: 8MiB\n", []string{"m.yaml:1: memory_limit: 8MiB is below the minimum of 16MiB (the collector would run almost continuously); use off for no limit"}},
		{"memory limit one byte below minimum", "memory_limit: 16777215\n", []string{"m.yaml:1: memory_limit: 16777215B is below the minimum of 16MiB"}},
		{"memory limit word", "memory_limit: lots\n", []string{`m.yaml:1: memory_limit: invalid size "lots": want a number of bytes or a number with a unit (B, KB, MB, GB, KiB, MiB, GiB, ...) (or auto, or off for no limit)`}},
		{"memory limit capitalised", "memory_limit: Auto\n", []string{`m.yaml:1: memory_limit: invalid size "Auto"`, "(or auto, or off for no limit)"}},
		{"memory limit negative", "memory_limit: -1\n", []string{"m.yaml:1: memory_limit: invalid size -1: negative"}},
		{"memory limit negative string", "memory_limit: -24MiB\n", []string{`m.yaml:1: memory_limit: invalid size "-24MiB": negative`}},
		{"memory limit bool", "memory_limit: false\n", []string{"m.yaml:1: memory_limit: expected a size (e.g. 16MiB), got boolean false"}},
		{"memory limit list", "memory_limit: [24MiB]\n", []string{"m.yaml:1: memory_limit: expected a size (e.g. 16MiB), got a list"}},
		{"memory limit bad unit", "memory_limit: 24MB2\n", []string{`m.yaml:1: memory_limit: invalid size "24MB2": unknown unit`}},
		{"duplicate key", "log:\n  level: info\n  level: debug\n", []string{"m.yaml:3: log.level: duplicate key"}},
		{"alias", "log: &l {level: info}\napi: *l\n", []string{"m.yaml:2: api: YAML aliases (*l) are not supported"}},
		{"merge key", "base: &b {listen: ':1'}\napi:\n  <<: *b\n", []string{"m.yaml:1: base: unknown key", "m.yaml:3: api: keys must be plain strings"}},
		{"syntax error", "log:\n  level: info\n bad\n", []string{"m.yaml:2: YAML syntax:"}},
		{"two documents", "log: {}\n---\napi: {}\n", []string{"m.yaml:2: more than one YAML document"}},
		{"empty list item", "mqtt:\n  embedded:\n    users:\n      -\n", []string{"m.yaml:4: mqtt.embedded.users[0]: empty list item"}},
		{"top level list", "- a\n", []string{"m.yaml:1: expected a mapping, got a list"}},
		{"decoding and validation problems together", "log:\n  level: loud\nmqtt:\n  embedded:\n    listn: x\n    max_inflight: nope\n", []string{"m.yaml:2: log.level: unknown value", "m.yaml:5: mqtt.embedded.listn: unknown key", "m.yaml:6: mqtt.embedded.max_inflight: expected an integer"}},
		{"several problems reported together", "pipeline:\n  workers: -2\nlog:\n  level: loud\n", []string{"m.yaml:2: pipeline.workers:", "m.yaml:4: log.level:"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("m.yaml", []byte(tc.src))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", c)
			}
			if c != nil {
				t.Error("Parse returned a config with an error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\ndoes not contain\n%s", err, w)
				}
			}
			es := Errors(err)
			if len(es) == 0 {
				t.Fatalf("no *Error in %v", err)
			}
			for _, e := range es {
				if e.File != "m.yaml" || e.Line <= 0 {
					t.Errorf("error without file/line: %#v", e)
				}
			}
		})
	}
}

func TestMemoryLimit(t *testing.T) {
	cases := []struct {
		src     string
		want    MemoryLimit
		bytes   int64 // MemoryLimitBytes
		printed string
	}{
		{"", MemoryLimitAuto, 24 << 20, "auto"},
		{"memory_limit: auto\n", MemoryLimitAuto, 24 << 20, "auto"},
		{"memory_limit: 'auto'\n", MemoryLimitAuto, 24 << 20, "auto"},
		{"memory_limit: auto\nstore: {profile: large}\n", MemoryLimitAuto, 0, "auto"},
		{"store: {profile: large}\n", MemoryLimitAuto, 0, "auto"},
		{"memory_limit: off\n", MemoryLimitOff, 0, "off"},
		{"memory_limit: \"off\"\n", MemoryLimitOff, 0, "off"},
		{"memory_limit: 0\n", MemoryLimitOff, 0, "off"},
		{"memory_limit: 0MiB\n", MemoryLimitOff, 0, "off"},
		{"memory_limit: 16MiB\n", MemoryLimit(16 << 20), 16 << 20, "16MiB"},
		{"memory_limit: 16777216\n", MemoryLimit(16 << 20), 16 << 20, "16MiB"},
		{"memory_limit: 48 MiB\n", MemoryLimit(48 << 20), 48 << 20, "48MiB"},
		{"memory_limit: 100MB\n", MemoryLimit(100e6), 100e6, "100000000B"},
		{"memory_limit: 32MiB\nstore: {profile: large}\n", MemoryLimit(32 << 20), 32 << 20, "32MiB"},
	}
	for _, tc := range cases {
		c, err := Parse("m.yaml", []byte(tc.src))
		if err != nil {
			t.Errorf("Parse(%q) = %v", tc.src, err)
			continue
		}
		if c.MemoryLimit != tc.want || c.MemoryLimitBytes() != tc.bytes || c.MemoryLimit.String() != tc.printed {
			t.Errorf("Parse(%q): memory_limit %d (%s), %d bytes; want %d (%s), %d", tc.src,
				int64(c.MemoryLimit), c.MemoryLimit, c.MemoryLimitBytes(), int64(tc.want), tc.printed, tc.bytes)
		}
	}
	// Set in code rather than parsed: validation still judges it.
	c := Default()
	c.MemoryLimit = -7
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "memory_limit: invalid value -7") {
		t.Errorf("MemoryLimit -7: %v", err)
	}
	if c.MemoryLimitBytes() != 0 {
		t.Errorf("MemoryLimit -7 gives %d bytes", c.MemoryLimitBytes())
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]Size{"0": 0, "4096": 4096, "1B": 1, "16MiB": 16 << 20, "256KiB": 256 << 10, "256 kib": 256 << 10, "1GB": 1e9, "1kB": 1000, "2TiB": 2 << 40, "1.5MiB": 3 << 19, "0.5KB": 500,
		// Exact decimal fractions (in floating point 2.01 x 1000 was
		// 2009.9999999999998, refused as "not a whole number of bytes").
		"2.01KB": 2010, "4.03KB": 4030, "8.05KB": 8050, "1.1KB": 1100, "0.001GB": 1e6, "1.": 1, "2.5KiB": 2560}
	for s, want := range good {
		got, err := ParseSize(s)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "MiB", "-1", "1XB", "1.2.3MB", "0.3B", "99999999999TiB", "9223372036854775808", "1e3", "NaN", ".", "1.0001KB", "9223372036854775807.5KB"} {
		if v, err := ParseSize(s); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", s, v)
		}
	}
	for _, s := range []Size{0, 1, 1023, 1024, 16 << 20, 3 << 19} {
		back, err := ParseSize(s.String())
		if err != nil || back != s {
			t.Errorf("ParseSize(%v.String()=%q) = %d, %v", int64(s), s.String(), back, err)
		}
	}
}

func TestEnvOverrides(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "moongate.yaml")
	if err := os.WriteFile(p, []byte("mqtt:\n  mode: external\n  external:\n    broker: tcp://127.0.0.1:1883\n    username: gw\n    password: from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvMQTTPassword, "from-env")
	t.Setenv(EnvDataDir, "/tmp/mg-data")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.MQTT.External.Password != "from-env" || c.DataDir != "/tmp/mg-data" {
		t.Fatalf("env not applied: password %q data_dir %q", c.MQTT.External.Password, c.DataDir)
	}
	// ${VAR} is not expanded.
	if err := os.WriteFile(p, []byte("data_dir: ${HOME}/x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Unsetenv(EnvDataDir)
	t.Setenv(EnvGatewayID, "bad id")
	_, err = Load(p)
	if err == nil || !strings.Contains(err.Error(), "gateway_id") || !strings.Contains(err.Error(), "$"+EnvGatewayID) {
		t.Fatalf("bad env value not reported with its variable: %v", err)
	}
	t.Setenv(EnvGatewayID, "gw1")
	c, err = Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "${HOME}/x" || c.GatewayID != "gw1" || c.MQTT.External.ClientID != "moongate-gw1" {
		t.Fatalf("got data_dir %q gateway_id %q client_id %q", c.DataDir, c.GatewayID, c.MQTT.External.ClientID)
	}
	// Set to "", it overrides the file like the others, and validation
	// names it: it was silently replaced by the host name (new record ids).
	if err := os.WriteFile(p, []byte("gateway_id: greenhouse-7\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvGatewayID, "")
	_, err = Load(p)
	if err == nil || !strings.Contains(err.Error(), "gateway_id: must not be empty (set by $"+EnvGatewayID+")") {
		t.Fatalf("empty %s: %v", EnvGatewayID, err)
	}
	os.Unsetenv(EnvGatewayID)
	if err := os.WriteFile(p, []byte("log:\n  level: info\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err = Load(p); err != nil || c.GatewayID == "" {
		t.Fatalf("no gateway_id anywhere: %v, %q (want the host name)", err, c.GatewayID)
	}
}

func TestLoad(t *testing.T) {
	c, err := Load("")
	if err != nil || c.MQTT.Mode != ModeEmbedded {
		t.Fatalf("Load(\"\") = %v, %v", c, err)
	}
	_, err = Load(filepath.Join(t.TempDir(), "missing.yaml"))
	if !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrInvalid) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := Load(t.TempDir()); err == nil {
		t.Fatal("directory accepted as config")
	}
	big := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(big, make([]byte, MaxFileSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "larger than the limit") {
		t.Fatalf("oversized file: %v", err)
	}
}

func TestExampleConfig(t *testing.T) {
	p := filepath.Join("..", "..", "deploy", "config.example.yaml")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(p, data)
	if err != nil {
		t.Fatal(err)
	}
	// The example documents the defaults: apart from the host-dependent
	// gateway id, it must load to exactly Default().
	want := Default()
	want.finish()
	c.GatewayID, want.GatewayID = "", ""
	c.MQTT.External.ClientID, want.MQTT.External.ClientID = "", ""
	c.file, c.lines, want.file, want.lines = "", nil, "", nil
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("deploy/config.example.yaml differs from Default():\n got %+v\nwant %+v", c, want)
	}
	// Every key of the schema appears in the example.
	for _, path := range schemaPaths(reflect.TypeOf(Config{}), "") {
		if !strings.Contains(string(data), lastKey(path)+":") {
			t.Errorf("key %s is not documented in %s", path, p)
		}
	}
}

func lastKey(p string) string {
	if i := strings.LastIndex(p, "."); i >= 0 {
		return p[i+1:]
	}
	return p
}

func schemaPaths(t reflect.Type, prefix string) []string {
	var out []string
	for _, f := range structFields(t) {
		p := joinPath(prefix, f.name)
		out = append(out, p)
		ft := t.Field(f.index).Type
		if ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct {
			out = append(out, schemaPaths(ft, p)...)
		}
	}
	return out
}

func TestRedacted(t *testing.T) {
	c, err := Parse("m.yaml", []byte("mqtt:\n  embedded:\n    users: [{username: a, password_hash: '"+goodHash+"'}]\n  external: {username: u, password: secret}\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := c.Redacted()
	s := fmt.Sprintf("%+v", r)
	if strings.Contains(s, "secret") || strings.Contains(s, goodHash) {
		t.Fatalf("secrets in %s", s)
	}
	if c.MQTT.External.Password != "secret" || c.MQTT.Embedded.Users[0].PasswordHash != goodHash {
		t.Fatal("Redacted modified the original")
	}
}

func TestTooManyErrors(t *testing.T) {
	var b strings.Builder
	for i := range 5000 {
		fmt.Fprintf(&b, "unknown%d: 1\n", i)
	}
	_, err := Parse("m.yaml", []byte(b.String()))
	es := Errors(err)
	if len(es) != MaxErrors+1 || !strings.Contains(es[MaxErrors].Msg, "4900 more problems not shown") || es[MaxErrors].Line != MaxErrors {
		t.Fatalf("%d errors, last %v", len(es), es[len(es)-1])
	}
}

// A device (whose size Stat does not tell) is refused: Load fails instead
// of reading without end (a regular file that grows after the Stat is read
// only up to the limit).
func TestLoadBoundedRead(t *testing.T) {
	_, err := Load("/dev/zero")
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("Load(/dev/zero): %v", err)
	}
}

// Error messages about URLs never carry the password they hold (they go to
// the journal and to check-config's output).
func TestURLErrorsRedactPasswords(t *testing.T) {
	for _, y := range []string{
		"mqtt:\n  mode: external\n  external: {broker: \"tcp://gw:S3cret@host:1883\"}\n",
		"mqtt:\n  mode: external\n  external: {broker: \"tcp://gw:S3cret@host:99999\"}\n",
		"sync:\n  targets:\n    - {name: up, type: http, http: {url: \"ftp://u:S3cret@host/x\"}}\n",
		"sync:\n  targets:\n    - {name: up, type: http, http: {url: \"http://u:S3cret@host/x\", tls: {insecure_skip_verify: true}}}\n",
		"sync:\n  targets:\n    - {name: up, type: mqtt, mqtt: {broker: \"tcp://u:S3cret@host:1883\", tls: {insecure_skip_verify: true}}}\n",
		"sync:\n  targets:\n    - {name: up, type: nats, nats: {url: \"http://u:S3cret@host:4222\"}}\n",
	} {
		_, err := Parse("m.yaml", []byte(y))
		if err == nil {
			t.Errorf("accepted:\n%s", y)
			continue
		}
		if strings.Contains(err.Error(), "S3cret") {
			t.Errorf("the error shows the password: %v", err)
		}
	}
}

// An MQTT keepalive is a 16-bit number of seconds: a sync target's is
// bounded like the external broker's.
func TestSyncKeepaliveBounded(t *testing.T) {
	_, err := Parse("m.yaml", []byte("sync:\n  targets:\n    - {name: up, type: mqtt, mqtt: {broker: \"tcp://host:1883\", keepalive: 19h}}\n"))
	if err == nil || !strings.Contains(err.Error(), "keepalive") {
		t.Fatalf("keepalive 19h: %v", err)
	}
}

// HTTP header names are case-insensitive: two spellings of one header are
// refused, an environment Authorization replaces the file's whatever its
// case, and a value with a line break is refused.
func TestSyncHeadersCaseInsensitive(t *testing.T) {
	_, err := Parse("m.yaml", []byte("sync:\n  targets:\n    - {name: up, type: http, http: {url: \"https://h/x\", headers: {authorization: a, Authorization: b}}}\n"))
	if err == nil || !strings.Contains(err.Error(), "same header") {
		t.Fatalf("two spellings: %v", err)
	}
	_, err = Parse("m.yaml", []byte("sync:\n  targets:\n    - {name: up, type: http, http: {url: \"https://h/x\", headers: {X-A: \"a\\r\\nX-B: b\"}}}\n"))
	if err == nil || !strings.Contains(err.Error(), "line break") {
		t.Fatalf("value with CRLF: %v", err)
	}
	c, err := Parse("m.yaml", []byte("sync:\n  targets:\n    - {name: up, type: http, http: {url: \"https://h/x\", headers: {authorization: \"Bearer old\", X-A: a}}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	c.ApplyEnv(func(k string) (string, bool) {
		if k == SyncEnvName("up", "AUTHORIZATION") {
			return "Bearer new", true
		}
		return "", false
	})
	h := c.Sync.Targets[0].HTTP.Headers
	if len(h) != 2 || h["Authorization"] != "Bearer new" || h["X-A"] != "a" {
		t.Fatalf("headers after the override: %v", h)
	}
}

// Target names that map to the same environment variables (a-b and a_b)
// are refused: one variable would give both targets its secret.
func TestSyncTargetEnvNamesDistinct(t *testing.T) {
	_, err := Parse("m.yaml", []byte("sync:\n  targets:\n    - {name: a-b, type: http, http: {url: \"https://h/x\"}}\n    - {name: a_b, type: http, http: {url: \"https://h/y\"}}\n"))
	if err == nil || !strings.Contains(err.Error(), "MOONGATE_SYNC_A_B_") {
		t.Fatalf("a-b and a_b: %v", err)
	}
}

// The headers the http target sets for each request cannot be configured:
// a fixed Idempotency-Key (or Content-Type, or record count) would
// override them, and the upstream would take every batch after the first
// for a repeat.
func TestSyncHeadersReserved(t *testing.T) {
	for _, h := range []string{"Idempotency-Key", "content-type", "Content-Encoding", "X-Moongate-Records", "x-moongate-gateway", "Host"} {
		_, err := Parse("m.yaml", []byte("sync:\n  targets:\n    - {name: up, type: http, http: {url: \"https://h/x\", headers: {\""+h+"\": v}}}\n"))
		if err == nil || !strings.Contains(err.Error(), "set by moongate") {
			t.Errorf("header %s: %v, want refused", h, err)
		}
	}
	if _, err := Parse("m.yaml", []byte("sync:\n  targets:\n    - {name: up, type: http, http: {url: \"https://h/x\", headers: {Authorization: a, X-Api-Key: b}}}\n")); err != nil {
		t.Errorf("ordinary headers refused: %v", err)
	}
}

// Header names must be HTTP tokens and values free of control characters
// (net/http's own checks): net/http refused to send a request carrying one,
// so the target failed every batch although the configuration loaded.
func TestSyncHeadersSendable(t *testing.T) {
	for _, h := range []struct{ k, v string }{{"X-Api\\tKey", "v"}, {"X-Api(Key)", "v"}, {"X-Api-Key", "a\\x01b"}, {"X-Api-Key", "a\\x7fb"}} {
		_, err := Parse("m.yaml", []byte("sync:\n  targets:\n    - {name: up, type: http, http: {url: \"https://h/x\", headers: {\""+h.k+"\": \""+h.v+"\"}}}\n"))
		if err == nil || !strings.Contains(err.Error(), "http.headers") {
			t.Errorf("header %q: %q: %v, want refused", h.k, h.v, err)
		}
	}
	if _, err := Parse("m.yaml", []byte("sync:\n  targets:\n    - {name: up, type: http, http: {url: \"https://h/x\", headers: {X-Api-Key: \"a b\\tc\"}}}\n")); err != nil {
		t.Errorf("a value with a space and a tab refused: %v", err)
	}
}
