package config

import (
	"fmt"
	"maps"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Sync configures store-and-forward of records to upstream targets
// (package sync). Function manifests route their records to targets by
// name (`sync: [name]`).
type Sync struct {
	Targets []SyncTarget `yaml:"targets"`
	// Forward sends raw events upstream without writing Lua: each entry
	// becomes a built-in function (named Name) whose record is the event's
	// topic and payload, routed to Targets. Events still go through the
	// inbox and the atomic commit.
	Forward []SyncForward `yaml:"forward"`
}

// SyncForward forwards the raw events of one MQTT trigger.
type SyncForward struct {
	Name    string   `yaml:"name"`    // the built-in function's name, [a-z0-9][a-z0-9_-]{0,62}
	Trigger string   `yaml:"trigger"` // MQTT topic pattern, e.g. devices/{device}/telemetry
	Stream  string   `yaml:"stream"`  // default: the name
	Targets []string `yaml:"targets"` // configured sync targets (at least one)
}

// Sync target types.
const (
	SyncTypeMQTT = "mqtt"
	SyncTypeHTTP = "http"
	SyncTypeNATS = "nats"
)

// SyncTarget is one upstream target. Zero values take the defaults noted
// on each field (filled in by Parse and Load).
type SyncTarget struct {
	Name string `yaml:"name"` // [a-z0-9][a-z0-9_-]{0,62}, as in manifests' sync lists
	Type string `yaml:"type"` // mqtt | http | nats
	// Batch bounds one batch (one HTTP request; a run of pipelined
	// messages for mqtt and nats).
	Batch SyncBatch `yaml:"batch"`
	// Inflight is the window of messages awaiting an acknowledgement
	// (mqtt, nats; default 256).
	Inflight int `yaml:"inflight"`
	// BandwidthLimit caps the upload in record bytes per second (0: none).
	BandwidthLimit Size `yaml:"bandwidth_limit"`
	// DailyBudget caps the record bytes sent per UTC day (0: none); the
	// priority streams are exempt.
	DailyBudget Size `yaml:"daily_budget"`
	// PriorityStreams are delivered before the backlog of other streams.
	PriorityStreams []string    `yaml:"priority_streams"`
	Backoff         SyncBackoff `yaml:"backoff"`
	// AckTimeout bounds one upstream acknowledgement or HTTP request
	// (default 30s).
	AckTimeout Duration `yaml:"ack_timeout"`
	MQTT       SyncMQTT `yaml:"mqtt"`
	HTTP       SyncHTTP `yaml:"http"`
	NATS       SyncNATS `yaml:"nats"`
}

// SyncBatch bounds a batch.
type SyncBatch struct {
	MaxRecords int      `yaml:"max_records"` // default 500 (http), 2000 (mqtt, nats)
	MaxBytes   Size     `yaml:"max_bytes"`   // of stored records (default 1MiB)
	MaxDelay   Duration `yaml:"max_delay"`   // a partial batch waits this long for more (default 100ms)
}

// SyncBackoff is the reconnect/retry backoff: exponential from Initial,
// capped at Max, with full jitter.
type SyncBackoff struct {
	Initial Duration `yaml:"initial"` // default 500ms
	Max     Duration `yaml:"max"`     // default 60s
}

// SyncMQTT configures an mqtt target (QoS 1, one message per record).
type SyncMQTT struct {
	Broker    string    `yaml:"broker"`    // tcp:// | mqtt:// | ssl:// | tls:// | mqtts:// | ws:// | wss://
	ClientID  string    `yaml:"client_id"` // default moongate-sync-<gateway_id>-<name>
	Username  string    `yaml:"username"`
	Password  string    `yaml:"password"`
	Topic     string    `yaml:"topic"`     // default gateways/{gateway}/{stream}
	KeepAlive Duration  `yaml:"keepalive"` // default 30s
	TLS       ClientTLS `yaml:"tls"`
	// MaxPayload is the largest record message the target publishes
	// (default and at most SyncMQTTMaxPayload); a larger record is refused
	// before it is sent and goes to the dead letters. Set it to the
	// broker's limit: MQTT 3.1.1 has no per-message refusal, a broker just
	// drops the connection.
	MaxPayload Size `yaml:"max_payload"`
	// MaxTopic is the longest topic the target publishes to, in bytes
	// (default and at most 65535); a record whose topic is longer is
	// refused before it is sent and goes to the dead letters (1024 for a
	// moongate upstream, 256 for AWS IoT).
	MaxTopic int `yaml:"max_topic"`
}

// SyncMQTTMaxPayload is the largest payload an MQTT 3.1.1 publish can
// carry whatever its topic (the protocol's 268435455 bytes of remaining
// length minus a QoS 1 variable header with the longest topic): the
// default and the maximum of sync.targets[].mqtt.max_payload.
const SyncMQTTMaxPayload = Size(268435455 - (2 + 65535) - 2)

// SyncHTTP configures an http target (batched NDJSON POST).
type SyncHTTP struct {
	URL         string            `yaml:"url"`
	Headers     map[string]string `yaml:"headers"`
	Compression string            `yaml:"compression"` // gzip (default) | none
	TLS         ClientTLS         `yaml:"tls"`
}

// SyncNATS configures a nats target (JetStream publish per record).
type SyncNATS struct {
	URL       string    `yaml:"url"`
	Subject   string    `yaml:"subject"` // default gateways.{gateway}.{stream}
	Username  string    `yaml:"username"`
	Password  string    `yaml:"password"`
	Token     string    `yaml:"token"`
	CredsFile string    `yaml:"creds_file"`
	TLS       ClientTLS `yaml:"tls"`
}

// finishSync fills the per-target defaults.
func (c *Config) finishSync() {
	if len(c.Sync.Targets) == 0 {
		c.Sync.Targets = nil
	}
	if len(c.Sync.Forward) == 0 {
		c.Sync.Forward = nil
	}
	for i := range c.Sync.Forward {
		setDefault(&c.Sync.Forward[i].Stream, c.Sync.Forward[i].Name)
	}
	for i := range c.Sync.Targets {
		t := &c.Sync.Targets[i]
		if t.Type == SyncTypeHTTP {
			setDefault(&t.Batch.MaxRecords, 500)
		} else {
			setDefault(&t.Batch.MaxRecords, 2000)
		}
		setDefault(&t.Batch.MaxBytes, 1<<20)
		if _, set := c.lines[fmt.Sprintf("sync.targets[%d].batch.max_delay", i)]; !set {
			// Only when absent: an explicit 0 means "send at once".
			t.Batch.MaxDelay = Duration(100 * time.Millisecond)
		}
		setDefault(&t.Inflight, 256)
		setDefault(&t.Backoff.Initial, Duration(500*time.Millisecond))
		setDefault(&t.Backoff.Max, Duration(time.Minute))
		setDefault(&t.AckTimeout, Duration(30*time.Second))
		switch t.Type {
		case SyncTypeMQTT:
			setDefault(&t.MQTT.Topic, "gateways/{gateway}/{stream}")
			setDefault(&t.MQTT.KeepAlive, Duration(30*time.Second))
			setDefault(&t.MQTT.ClientID, "moongate-sync-"+c.GatewayID+"-"+t.Name)
			setDefault(&t.MQTT.MaxPayload, SyncMQTTMaxPayload)
			setDefault(&t.MQTT.MaxTopic, 65535)
		case SyncTypeHTTP:
			setDefault(&t.HTTP.Compression, "gzip")
		case SyncTypeNATS:
			setDefault(&t.NATS.Subject, "gateways.{gateway}.{stream}")
		}
	}
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}

// ValidSyncTargetName reports whether name is a valid sync target name:
// [a-z0-9][a-z0-9_-]{0,62}.
func ValidSyncTargetName(name string) bool { return syncNameRE.MatchString(name) }

var (
	syncNameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	syncStreamRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,127}$`)
)

func (v *validator) sync() {
	seen := map[string]int{}
	envSeen := map[string]int{}
	for i := range v.c.Sync.Targets {
		t := &v.c.Sync.Targets[i]
		p := fmt.Sprintf("sync.targets[%d]", i)
		switch {
		case !syncNameRE.MatchString(t.Name):
			v.add(p+".name", "invalid target name %q: use [a-z0-9][a-z0-9_-]{0,62} (as in manifests' sync lists)", clip(t.Name))
		default:
			if j, dup := seen[t.Name]; dup {
				v.add(p+".name", "target %q is already defined by sync.targets[%d]", t.Name, j)
			} else if j, dup := envSeen[SyncEnvName(t.Name, "")]; dup {
				// a-b and a_b: one set of MOONGATE_SYNC_A_B_* variables
				// would give both their secrets.
				v.add(p+".name", "target %q and sync.targets[%d] (%q) share the environment variables %s*", t.Name, j, v.c.Sync.Targets[j].Name, SyncEnvName(t.Name, ""))
			}
			seen[t.Name] = i
			envSeen[SyncEnvName(t.Name, "")] = i
		}
		if v.enum(p+".type", t.Type, SyncTypeMQTT, SyncTypeHTTP, SyncTypeNATS) {
			v.syncType(p, t)
		}
		v.intRange(p+".batch.max_records", int64(t.Batch.MaxRecords), 1, 100_000)
		v.intRange(p+".batch.max_bytes", int64(t.Batch.MaxBytes), 1<<10, 64<<20)
		if t.Batch.MaxDelay < 0 || t.Batch.MaxDelay > Duration(time.Minute) {
			v.add(p+".batch.max_delay", "%s out of range [0, 1m]", t.Batch.MaxDelay)
		}
		v.intRange(p+".inflight", int64(t.Inflight), 1, MaxInflight)
		if t.BandwidthLimit < 0 {
			v.add(p+".bandwidth_limit", "must not be negative")
		} else if t.BandwidthLimit > 0 && t.BandwidthLimit < 1<<10 {
			v.add(p+".bandwidth_limit", "%s is below 1KiB per second", t.BandwidthLimit)
		}
		if t.DailyBudget < 0 {
			v.add(p+".daily_budget", "must not be negative")
		}
		for j, s := range t.PriorityStreams {
			if !syncStreamRE.MatchString(s) {
				v.add(fmt.Sprintf("%s.priority_streams[%d]", p, j), "invalid stream name %q: use [a-z0-9][a-z0-9_.-]{0,127}", clip(s))
			}
		}
		v.positive(p+".backoff.initial", t.Backoff.Initial)
		if t.Backoff.Max > maxBackoff {
			v.add(p+".backoff.max", "%s is more than %s", t.Backoff.Max, maxBackoff)
		}
		if t.Backoff.Max < t.Backoff.Initial {
			v.add(p+".backoff.max", "%s is less than backoff.initial %s", t.Backoff.Max, t.Backoff.Initial)
		}
		if t.AckTimeout < Duration(100*time.Millisecond) || t.AckTimeout > Duration(10*time.Minute) {
			v.add(p+".ack_timeout", "%s out of range [100ms, 10m]", t.AckTimeout)
		}
	}
	v.syncForward(seen)
}

func (v *validator) syncForward(targets map[string]int) {
	seen := map[string]int{}
	for i, f := range v.c.Sync.Forward {
		p := fmt.Sprintf("sync.forward[%d]", i)
		if !syncNameRE.MatchString(f.Name) {
			v.add(p+".name", "invalid name %q: use [a-z0-9][a-z0-9_-]{0,62} (it names a built-in function)", clip(f.Name))
		} else if j, dup := seen[f.Name]; dup {
			v.add(p+".name", "%q is already used by sync.forward[%d]", f.Name, j)
		} else {
			seen[f.Name] = i
		}
		if strings.TrimSpace(f.Trigger) == "" {
			v.add(p+".trigger", "required: an MQTT topic pattern such as devices/{device}/telemetry")
		}
		if !syncStreamRE.MatchString(f.Stream) {
			v.add(p+".stream", "invalid stream name %q: use [a-z0-9][a-z0-9_.-]{0,127}", clip(f.Stream))
		}
		if len(f.Targets) == 0 {
			v.add(p+".targets", "at least one sync target is required")
		}
		for j, t := range f.Targets {
			if _, ok := targets[t]; !ok {
				v.add(fmt.Sprintf("%s.targets[%d]", p, j), "%q is not a configured sync target", clip(t))
			}
		}
	}
}

func (v *validator) syncType(p string, t *SyncTarget) {
	set := func(name string, isSet bool) {
		if isSet && name != t.Type {
			v.add(p+"."+name, "set, but the target's type is %s", t.Type)
		}
	}
	set(SyncTypeMQTT, t.MQTT != (SyncMQTT{}))
	set(SyncTypeHTTP, t.HTTP.URL != "" || len(t.HTTP.Headers) > 0 || t.HTTP.Compression != "" || t.HTTP.TLS != (ClientTLS{}))
	set(SyncTypeNATS, t.NATS != (SyncNATS{}))
	tlsPair := func(path string, c ClientTLS) {
		if (c.Cert == "") != (c.Key == "") {
			v.add(path, "cert and key must be set together")
		}
	}
	switch t.Type {
	case SyncTypeMQTT:
		if t.MQTT.Broker == "" {
			v.add(p+".mqtt.broker", "required for an mqtt target")
		} else if secure, err := CheckBrokerURL(t.MQTT.Broker); err != nil {
			v.add(p+".mqtt.broker", "%v", err)
		} else if !secure && t.MQTT.TLS != (ClientTLS{}) {
			v.add(p+".mqtt.tls", "set, but broker %q is not a TLS URL (the settings would be ignored and credentials sent in clear): use ssl://, tls://, mqtts:// or wss://", redactURL(t.MQTT.Broker))
		}
		if t.MQTT.MaxTopic < 1 || t.MQTT.MaxTopic > 65535 {
			v.add(p+".mqtt.max_topic", "%d out of range [1, 65535]", t.MQTT.MaxTopic)
		}
		if t.MQTT.MaxPayload < 1<<10 || t.MQTT.MaxPayload > SyncMQTTMaxPayload {
			v.add(p+".mqtt.max_payload", "%s out of range [1KiB, %d bytes]", t.MQTT.MaxPayload, int64(SyncMQTTMaxPayload))
		}
		if strings.ContainsAny(t.MQTT.Topic, "+#\x00") {
			v.add(p+".mqtt.topic", "%q: a publish topic cannot contain wildcards", clip(t.MQTT.Topic))
		}
		if t.MQTT.KeepAlive < Duration(time.Second) || t.MQTT.KeepAlive > Duration(18*time.Hour) {
			// MQTT sends it as a 16-bit number of seconds (18h12m15s at most).
			v.add(p+".mqtt.keepalive", "%s out of range [1s, 18h]", t.MQTT.KeepAlive)
		}
		tlsPair(p+".mqtt.tls", t.MQTT.TLS)
	case SyncTypeHTTP:
		u, err := url.Parse(t.HTTP.URL)
		switch {
		case t.HTTP.URL == "":
			v.add(p+".http.url", "required for an http target")
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			v.add(p+".http.url", "invalid %q: want http(s)://host[:port]/path", redactURL(t.HTTP.URL))
		case u.Scheme == "http" && t.HTTP.TLS != (ClientTLS{}):
			v.add(p+".http.tls", "set, but url %q is plain http (the settings would be ignored and headers sent in clear): use https://", redactURL(t.HTTP.URL))
		}
		v.enum(p+".http.compression", t.HTTP.Compression, "gzip", "none")
		seen := map[string]string{}
		for _, k := range slices.Sorted(maps.Keys(t.HTTP.Headers)) {
			if !httpguts.ValidHeaderFieldName(k) {
				v.add(p+".http.headers", "invalid header name %q", clip(k))
			}
			// HTTP header names are case-insensitive: two of them would
			// be sent as one, whichever the map gives last.
			if o, dup := seen[strings.ToLower(k)]; dup {
				v.add(p+".http.headers", "headers %q and %q are the same header", clip(o), clip(k))
			}
			seen[strings.ToLower(k)] = k
			if l := strings.ToLower(k); reservedSyncHeaders[l] || strings.HasPrefix(l, "x-moongate-") {
				// They say what the body is and which records it holds:
				// a fixed Idempotency-Key would have the upstream drop
				// every batch after the first as a repeat.
				v.add(p+".http.headers", "header %q is set by moongate for each request and cannot be configured", clip(k))
			}
			if !httpguts.ValidHeaderFieldValue(t.HTTP.Headers[k]) {
				// net/http refuses to send it: every batch would fail.
				v.add(p+".http.headers", "header %q: value with a line break, NUL or another control character", clip(k))
			}
		}
		tlsPair(p+".http.tls", t.HTTP.TLS)
	case SyncTypeNATS:
		if t.NATS.URL == "" {
			v.add(p+".nats.url", "required for a nats target")
		}
		for _, s := range strings.Split(t.NATS.URL, ",") {
			if u, err := url.Parse(strings.TrimSpace(s)); t.NATS.URL != "" && (err != nil || u.Host == "" || (u.Scheme != "nats" && u.Scheme != "tls")) {
				v.add(p+".nats.url", "invalid %q: want nats://host:port or tls://host:port", redactURL(strings.TrimSpace(s)))
			}
		}
		if strings.ContainsAny(t.NATS.Subject, "*> \t\r\n\x00") {
			v.add(p+".nats.subject", "%q: a publish subject cannot contain wildcards or white space", clip(t.NATS.Subject))
		}
		tlsPair(p+".nats.tls", t.NATS.TLS)
	}
}

// redacted returns a copy of s without secrets: passwords, tokens and HTTP
// header values (which usually carry credentials) become "REDACTED".
func (s Sync) redacted() Sync {
	if s.Targets == nil {
		return s
	}
	r := s
	r.Targets = make([]SyncTarget, len(s.Targets))
	red := func(p *string) {
		if *p != "" {
			*p = "REDACTED"
		}
	}
	for i, t := range s.Targets {
		red(&t.MQTT.Password)
		red(&t.NATS.Password)
		red(&t.NATS.Token)
		if t.HTTP.Headers != nil {
			h := make(map[string]string, len(t.HTTP.Headers))
			for k := range t.HTTP.Headers {
				h[k] = "REDACTED"
			}
			t.HTTP.Headers = h
		}
		r.Targets[i] = t
	}
	return r
}

// SyncEnvPrefix starts the environment variables that carry a sync
// target's secrets: MOONGATE_SYNC_<NAME>_PASSWORD (mqtt.password or
// nats.password), MOONGATE_SYNC_<NAME>_TOKEN (nats.token) and
// MOONGATE_SYNC_<NAME>_AUTHORIZATION (the http Authorization header), with
// NAME the target name in upper case and '-' as '_'.
const SyncEnvPrefix = "MOONGATE_SYNC_"

// SyncEnvName is the variable that carries secret ("PASSWORD", "TOKEN",
// "AUTHORIZATION") of target name.
func SyncEnvName(name, secret string) string {
	return SyncEnvPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_")) + "_" + secret
}

func (c *Config) applySyncEnv(lookup func(string) (string, bool)) {
	for i := range c.Sync.Targets {
		t := &c.Sync.Targets[i]
		p := fmt.Sprintf("sync.targets[%d]", i)
		set := func(secret string, dst *string, path string) {
			name := SyncEnvName(t.Name, secret)
			if v, ok := lookup(name); ok {
				*dst = v
				if c.env == nil {
					c.env = map[string]string{}
				}
				c.env[path] = name
			}
		}
		switch t.Type {
		case SyncTypeMQTT:
			set("PASSWORD", &t.MQTT.Password, p+".mqtt.password")
		case SyncTypeNATS:
			set("PASSWORD", &t.NATS.Password, p+".nats.password")
			set("TOKEN", &t.NATS.Token, p+".nats.token")
		case SyncTypeHTTP:
			var v string
			set("AUTHORIZATION", &v, p+".http.headers")
			if _, ok := lookup(SyncEnvName(t.Name, "AUTHORIZATION")); ok {
				h := make(map[string]string, len(t.HTTP.Headers)+1)
				for k, x := range t.HTTP.Headers {
					if !strings.EqualFold(k, "Authorization") { // replaced, whatever its case
						h[k] = x
					}
				}
				h["Authorization"] = v
				t.HTTP.Headers = h
			}
		}
	}
}

// reservedSyncHeaders are the headers (lower case) the http target sets
// itself on each request; with those starting "x-moongate-", http.headers
// may not set them.
var reservedSyncHeaders = map[string]bool{
	"content-type": true, "content-encoding": true, "content-length": true, "content-digest": true,
	"idempotency-key": true, "transfer-encoding": true, "host": true, "expect": true, "connection": true,
}
