package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// validator collects problems with their positions.
type validator struct {
	c    *Config
	errs []error
}

func (v *validator) add(path, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if env, ok := v.c.env[path]; ok {
		msg += " (set by $" + env + ")"
	}
	v.errs = append(v.errs, &Error{File: v.c.file, Line: v.c.lines.At(path), Path: path, Msg: msg})
}

// Validate checks every value and every combination of values and returns
// all problems joined (nil when there are none), each an *Error wrapping
// [ErrInvalid] that names the file, the line (when the value comes from the
// file) and the key path. Validate does not touch the file system or the
// network.
func (c *Config) Validate() error {
	v := &validator{c: c}
	v.top()
	v.mqtt()
	if c.API.Listen != "" {
		v.listen("api.listen", c.API.Listen)
	}
	v.api()
	v.store()
	v.pipeline()
	v.functions()
	v.sync()
	v.blobs()
	return errors.Join(v.errs...)
}

var gatewayIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// blobIDSuffix is what a gateway id may not end in (see top).
const blobIDSuffix = "-blob"

func (v *validator) top() {
	c := v.c
	switch {
	case c.GatewayID == "":
		v.add("gateway_id", "must not be empty")
	case len(c.GatewayID) > MaxGatewayIDBytes:
		v.add("gateway_id", "longer than %d bytes", MaxGatewayIDBytes)
	case !gatewayIDRE.MatchString(c.GatewayID):
		v.add("gateway_id", "invalid %q: use only letters, digits, '.', '_' and '-'", clip(c.GatewayID))
	case strings.HasSuffix(c.GatewayID, blobIDSuffix):
		// Record ids are "<gateway>-<n>", blob sends "<gateway>-blob-<n>":
		// gateway "x-blob"'s record 1 and gateway "x"'s blob send 1 would
		// both be "x-blob-1", and an upstream that deduplicates by id
		// (JetStream's Nats-Msg-Id, the HTTP Idempotency-Key) would drop one.
		v.add("gateway_id", "invalid %q: must not end in %q (its record ids could be those of another gateway's blob sends)", clip(c.GatewayID), blobIDSuffix)
	}
	if strings.TrimSpace(c.DataDir) == "" {
		v.add("data_dir", "must not be empty")
	}
	v.noNUL("data_dir", c.DataDir)
	v.noNUL("functions_dir", c.FunctionsDir)
	v.enum("log.level", c.Log.Level, "debug", "info", "warn", "error")
	v.enum("log.format", c.Log.Format, "text", "json")
	v.memoryLimit()
}

func (v *validator) noNUL(path, s string) {
	if strings.IndexByte(s, 0) >= 0 {
		v.add(path, "contains a NUL byte")
	}
}

func (v *validator) enum(path, val string, allowed ...string) bool {
	for _, a := range allowed {
		if val == a {
			return true
		}
	}
	v.add(path, "unknown value %q (valid: %s)", clip(val), strings.Join(allowed, ", "))
	return false
}

func (v *validator) positive(path string, d Duration) {
	if d <= 0 {
		v.add(path, "must be greater than 0")
	}
}

func (v *validator) intRange(path string, n, lo, hi int64) {
	if n < lo || n > hi {
		v.add(path, "%d out of range [%d, %d]", n, lo, hi)
	}
}

func (v *validator) mqtt() {
	m := v.c.MQTT
	v.enum("mqtt.mode", m.Mode, ModeEmbedded, ModeExternal)
	if m.MaxPayload <= 0 || m.MaxPayload > MaxMQTTPayload {
		v.add("mqtt.max_payload", "%s out of range [1B, %d bytes]", m.MaxPayload, int64(MaxMQTTPayload))
	}
	switch m.Mode {
	case ModeEmbedded:
		v.embedded()
	case ModeExternal:
		v.external()
	}
}

func (v *validator) embedded() {
	e := v.c.MQTT.Embedded
	const p = "mqtt.embedded"
	loopback := true
	if v.listen(p+".listen", e.Listen) && !IsLoopback(e.Listen) {
		loopback = false
	}
	if e.WebsocketListen != "" && v.listen(p+".websocket_listen", e.WebsocketListen) && !IsLoopback(e.WebsocketListen) {
		loopback = false
	}
	v.serverTLS(p+".tls", e.TLS)
	if !loopback {
		if len(e.Users) == 0 {
			v.add(p+".users", "a non-loopback listen address requires at least one user (devices must authenticate)")
		}
		if _, explicit := v.c.lines[p+".allow_anonymous"]; explicit && e.AllowAnonymous {
			v.add(p+".allow_anonymous", "anonymous access is only honoured on loopback listen addresses; remove it or set it to false")
		}
	}
	seen := map[string]int{}
	for i, u := range e.Users {
		up := fmt.Sprintf("%s.users[%d]", p, i)
		switch {
		case u.Username == "":
			v.add(up+".username", "must not be empty")
		case !utf8.ValidString(u.Username) || strings.ContainsAny(u.Username, "/+#{}\x00") || len(u.Username) > 128:
			v.add(up+".username", "invalid %q: at most 128 bytes of UTF-8 without '/', '+', '#', '{', '}'", clip(u.Username))
		default:
			if j, dup := seen[u.Username]; dup {
				v.add(up+".username", "duplicate username %q (also users[%d])", u.Username, j)
			}
			seen[u.Username] = i
		}
		if u.PasswordHash == "" {
			v.add(up+".password_hash", "must not be empty (a bcrypt hash, e.g. from `htpasswd -nbBC 10 USER PASS`)")
		} else if err := CheckBcryptHash(u.PasswordHash); err != nil {
			v.add(up+".password_hash", "%v", err)
		}
		for j, f := range u.Publish {
			if err := ValidateACLFilter(f); err != nil {
				v.add(fmt.Sprintf("%s.publish[%d]", up, j), "%v", err)
			}
		}
		for j, f := range u.Subscribe {
			if err := ValidateACLFilter(f); err != nil {
				v.add(fmt.Sprintf("%s.subscribe[%d]", up, j), "%v", err)
			}
		}
	}
	if e.MaxSessionExpiry <= 0 {
		v.add(p+".max_session_expiry", "must be greater than 0 (offline sessions are kept in memory)")
	}
	v.intRange(p+".max_inflight", int64(e.MaxInflight), 1, MaxInflight)
	v.intRange(p+".max_queued_per_client", int64(e.MaxQueuedPerClient), 1, 65535)
	if b, m := e.MaxQueuedBytesPerClient, v.c.MQTT; b != 0 && (int64(b) < int64(m.MaxPayload)+64<<10 || b > 1<<30) {
		v.add(p+".max_queued_bytes_per_client", "%s out of range [max_payload + 64KiB = %d bytes, 1GiB] (0: 4 x max_payload)", b, int64(m.MaxPayload)+64<<10)
	}
	v.intRange(p+".max_clients", int64(e.MaxClients), 1, 1_000_000)
	v.intRange(p+".max_unauthenticated", int64(e.MaxUnauthenticated), 1, 65535)
	if n := e.MaxUnauthenticatedPerAddress; n < 0 || n > max(e.MaxUnauthenticated, 1) {
		v.add(p+".max_unauthenticated_per_address", "%d out of range [1, max_unauthenticated = %d] (0: 16, at most max_unauthenticated)", n, e.MaxUnauthenticated)
	}
	v.intRange(p+".max_retained", int64(e.MaxRetained), 1, 1_000_000)
	if b := int64(e.MaxRetainedBytes); b < int64(v.c.MQTT.MaxPayload) || b > 1<<30 {
		v.add(p+".max_retained_bytes", "%d out of range [max_payload = %d, 1GiB]", b, int64(v.c.MQTT.MaxPayload))
	}
	v.intRange(p+".max_subscriptions_per_client", int64(e.MaxSubscriptionsPerClient), 1, 100_000)
	if n := e.MaxSessions; n != 0 && (n < e.MaxClients || n > 2_000_000) {
		v.add(p+".max_sessions", "%d out of range [max_clients = %d, 2000000] (0: max_clients)", n, e.MaxClients)
	}
}

func (v *validator) serverTLS(path string, t TLS) {
	if t.Cert != "" && t.Key == "" {
		v.add(path+".key", "tls.cert is set but tls.key is not")
	}
	if t.Key != "" && t.Cert == "" {
		v.add(path+".cert", "tls.key is set but tls.cert is not")
	}
}

var brokerSchemes = map[string]bool{"tcp": false, "mqtt": false, "ssl": true, "tls": true, "mqtts": true, "ws": false, "wss": true}

func (v *validator) external() {
	x := v.c.MQTT.External
	const p = "mqtt.external"
	secure := false
	if x.Broker == "" {
		v.add(p+".broker", "required in external mode (e.g. tcp://127.0.0.1:1883)")
	} else if s, err := CheckBrokerURL(x.Broker); err != nil {
		v.add(p+".broker", "%v", err)
	} else {
		secure = s
	}
	switch {
	case x.ClientID == "":
		v.add(p+".client_id", "must not be empty")
	case len(x.ClientID) > 65535 || !utf8.ValidString(x.ClientID) || strings.IndexByte(x.ClientID, 0) >= 0:
		v.add(p+".client_id", "must be valid UTF-8 without NUL, at most 65535 bytes")
	}
	if x.Password != "" && x.Username == "" {
		v.add(p+".username", "a password is set but no username")
	}
	t := x.TLS
	if t.Cert != "" && t.Key == "" {
		v.add(p+".tls.key", "tls.cert is set but tls.key is not")
	}
	if t.Key != "" && t.Cert == "" {
		v.add(p+".tls.cert", "tls.key is set but tls.cert is not")
	}
	if x.Broker != "" && !secure && (t.CA != "" || t.Cert != "" || t.InsecureSkipVerify) {
		v.add(p+".tls", "TLS settings need a TLS broker URL (ssl://, tls://, mqtts:// or wss://)")
	}
	if x.KeepAlive < Duration(time.Second) || x.KeepAlive > Duration(18*time.Hour) {
		v.add(p+".keepalive", "%s out of range [1s, 18h]", x.KeepAlive)
	}
	if x.MaxPacketSize < 0 || x.MaxPacketSize > MaxMQTTPacket {
		v.add(p+".max_packet_size", "%s out of range [0, %d bytes] (0: no bound)", x.MaxPacketSize, int64(MaxMQTTPacket))
	}
}

// MaxMQTTPacket is the largest MQTT packet: a remaining length of at most
// 268,435,455 bytes after a fixed header of at most 5.
const MaxMQTTPacket = Size(268435455 + 5)

// CheckBrokerURL checks an external broker URL (scheme tcp, mqtt, ssl, tls,
// mqtts, ws or wss, a host and, except for websockets, a port) and reports
// whether it uses TLS.
func CheckBrokerURL(s string) (tls bool, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return false, fmt.Errorf("invalid broker URL %q: %w", redactURL(s), err)
	}
	secure, ok := brokerSchemes[u.Scheme]
	if !ok {
		return false, fmt.Errorf("invalid broker URL %q: unsupported scheme %q (use tcp, mqtt, ssl, tls, mqtts, ws or wss)", redactURL(s), u.Scheme)
	}
	if u.Hostname() == "" {
		return false, fmt.Errorf("invalid broker URL %q: missing host", redactURL(s))
	}
	if u.User != nil {
		// Not the URL itself: it holds a password.
		return false, fmt.Errorf("invalid broker URL %q: put credentials in the username and password settings, not in the URL", redactURL(s))
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return false, fmt.Errorf("invalid broker URL %q: bad port %q", redactURL(s), port)
		}
	} else if u.Scheme != "ws" && u.Scheme != "wss" {
		return false, fmt.Errorf("invalid broker URL %q: missing port (e.g. %s://%s:1883)", redactURL(s), u.Scheme, u.Hostname())
	}
	return secure, nil
}

// listen validates a listen address and reports whether it is valid.
func (v *validator) listen(path, addr string) bool {
	if _, _, err := splitHostPort(addr); err != nil {
		v.add(path, "invalid address %q: %v", clip(addr), err)
		return false
	}
	return true
}

// maxBackoff bounds every configured backoff: longer waits are a mistake
// (a retry a year away), and the doubling towards them must not overflow.
const maxBackoff = Duration(24 * time.Hour)

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*$`)

// splitHostPort splits and checks a listen address: port 0-65535 (0 picks a
// free port), host empty (all interfaces), an IP or a host name.
func splitHostPort(addr string) (host string, port int, err error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return "", 0, errors.New(ae.Err)
		}
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 0 || n > 65535 {
		return "", 0, fmt.Errorf("bad port %q", clip(p))
	}
	if h != "" {
		if _, err := netip.ParseAddr(h); err != nil && !hostnameRE.MatchString(h) {
			return "", 0, fmt.Errorf("bad host %q", clip(h))
		}
	}
	return h, n, nil
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.IsLoopback()
}

var bcryptRE = regexp.MustCompile(`^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$`)

// CheckBcryptHash checks that h looks like a bcrypt hash ("$2a$", "$2b$" or
// "$2y$", a cost of 4 to 31, 53 characters of salt and hash). It does not
// verify any password.
func CheckBcryptHash(h string) error {
	m := bcryptRE.FindStringSubmatch(h)
	if m == nil {
		return errors.New("not a bcrypt hash (want $2a$/$2b$/$2y$, cost, 53 characters; e.g. from `htpasswd -nbBC 10 USER PASS`)")
	}
	if cost, _ := strconv.Atoi(m[1]); cost < 4 || cost > 31 {
		return fmt.Errorf("bcrypt cost %d out of range [4, 31]", cost)
	}
	return nil
}

// ValidateACLFilter checks an ACL topic filter: MQTT filter syntax (levels
// separated by '/', '+' alone in a level, '#' alone in the last level),
// where the placeholders "{username}" and "{clientid}" may stand for a whole
// level.
func ValidateACLFilter(f string) error {
	if f == "" {
		return errors.New("empty topic filter")
	}
	if len(f) > 65535 || !utf8.ValidString(f) || strings.IndexByte(f, 0) >= 0 {
		return fmt.Errorf("invalid topic filter %q: must be UTF-8 without NUL, at most 65535 bytes", clip(f))
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		switch {
		case l == "#":
			if i != len(levels)-1 {
				return fmt.Errorf("invalid topic filter %q: '#' must be the last level", clip(f))
			}
		case l == "+", l == "{username}", l == "{clientid}":
		case strings.ContainsAny(l, "+#"):
			return fmt.Errorf("invalid topic filter %q: '+' and '#' must fill a whole level", clip(f))
		case strings.ContainsAny(l, "{}"):
			return fmt.Errorf("invalid topic filter %q: only {username} and {clientid} may be used, as a whole level", clip(f))
		}
	}
	return nil
}

func (v *validator) store() {
	s := v.c.Store
	v.enum("store.profile", s.Profile, ProfileLowMemory, ProfileLarge)
	if v.enum("store.durability", s.Durability, DurabilityAlways, DurabilityInterval, DurabilityNone) && s.Durability == DurabilityInterval {
		if s.SyncInterval < Duration(time.Millisecond) || s.SyncInterval > Duration(time.Minute) {
			v.add("store.sync_interval", "%s out of range [1ms, 1m]", s.SyncInterval)
		}
	}
	if c := s.CompactionShare; c != 0 && !(c >= 0.1 && c <= 1) {
		v.add("store.compaction_share", "%v out of range [0.1, 1] (0 turns pacing off)", c)
	}
	q := s.Quotas
	for _, x := range []struct {
		name string
		q    Quota
	}{{"records", q.Records}, {"outbox", q.Outbox}, {"logs", q.Logs}, {"deadletters", q.Deadletters}, {"inbox", q.Inbox}} {
		v.enum("store.quotas."+x.name+".policy", x.q.Policy, PolicyDropOldest, PolicyRejectNew)
	}
	if q.Inbox.Policy == PolicyDropOldest {
		v.add("store.quotas.inbox.policy", "must be reject_new: the inbox holds acknowledged events, dropping them would lose them")
	}
	if q.Inbox.MaxAge != 0 {
		v.add("store.quotas.inbox.max_age", "must be 0: acknowledged events never expire from the inbox")
	}
	if q.State.MaxBytes < 0 {
		v.add("store.quotas.state.max_bytes", "%s is negative (0: no bound)", q.State.MaxBytes)
	}
	if b := q.Deadletters.MaxBytes; b != 0 && b < minDeadletterBytes {
		// A dead letter keeps at least the first 16 KiB of its event: one
		// that never fits its quota was refused for good on every try, and
		// the event ran again and again, holding its lane.
		v.add("store.quotas.deadletters.max_bytes", "%s is below %s (room for one dead letter of an event cut to its first 16KiB, with its error)", b, Size(minDeadletterBytes))
	}
	if q.Usage.MaxAge < 0 {
		v.add("store.quotas.usage.max_age", "%s is negative (0 keeps the usage meters forever)", q.Usage.MaxAge)
	} else if q.Usage.MaxAge != 0 && q.Usage.MaxAge < Duration(time.Hour) {
		v.add("store.quotas.usage.max_age", "%s is below 1h (the meters are per minute; 0 keeps them forever)", q.Usage.MaxAge)
	}
}

// minDeadletterBytes is the least non-zero dead-letter quota.
const minDeadletterBytes = 64 << 10

func (v *validator) pipeline() {
	p := v.c.Pipeline
	v.intRange("pipeline.workers", int64(p.Workers), 0, MaxWorkers)
	v.intRange("pipeline.inbox_limit", int64(p.InboxLimit), 1, 10_000_000)
	v.intRange("pipeline.inbox_bytes", int64(p.InboxBytes), 64<<10, 1<<30)
	if p.FunctionBacklog < 0 || (p.InboxLimit >= 1 && p.FunctionBacklog > p.InboxLimit) {
		v.add("pipeline.function_backlog", "%d out of range [0, inbox_limit = %d] (0: inbox_limit / 4)", p.FunctionBacklog, p.InboxLimit)
	}
	v.intRange("pipeline.max_hops", int64(p.MaxHops), 1, 1000)
	v.intRange("pipeline.max_chain_events", int64(p.MaxChainEvents), 1, 1_000_000)
	v.intRange("pipeline.retry.max_attempts", int64(p.Retry.MaxAttempts), 1, MaxRetryAttempts)
	v.positive("pipeline.retry.initial_backoff", p.Retry.InitialBackoff)
	if p.Retry.MaxBackoff > maxBackoff {
		v.add("pipeline.retry.max_backoff", "%s is more than %s", p.Retry.MaxBackoff, maxBackoff)
	}
	if p.Retry.MaxBackoff < p.Retry.InitialBackoff {
		v.add("pipeline.retry.max_backoff", "%s is less than initial_backoff %s", p.Retry.MaxBackoff, p.Retry.InitialBackoff)
	}
}

func (v *validator) functions() {
	f := v.c.Functions
	const p = "functions"
	if f.Timeout <= 0 || f.Timeout > Duration(MaxTimeout) {
		v.add(p+".timeout", "%s out of range (0, %s]", f.Timeout, MaxTimeout)
	}
	v.intRange(p+".max_steps", f.MaxSteps, 1, MaxSteps)
	if f.MaxMemory < 1<<20 || f.MaxMemory > MaxMemory {
		v.add(p+".max_memory", "%s out of range [1MiB, %s]", f.MaxMemory, MaxMemory)
	}
	v.intRange(p+".max_concurrency", int64(f.MaxConcurrency), 1, MaxConcurrency)
	v.intRange(p+".min_instances", int64(f.MinInstances), 0, int64(f.MaxConcurrency))
	if f.IdleTimeout > Duration(MaxIdleTimeout) {
		v.add(p+".idle_timeout", "%s longer than %s", f.IdleTimeout, MaxIdleTimeout)
	}
}

var (
	apiTokenNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	apiTokenHashRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
)

func (v *validator) api() {
	a := v.c.API
	const p = "api"
	v.serverTLS(p+".tls", a.TLS)
	if a.Listen != "" && !a.TLS.Enabled() && !a.AllowPlaintext {
		if _, _, err := splitHostPort(a.Listen); err == nil && !IsLoopback(a.Listen) {
			v.add(p+".listen", "a non-loopback address needs api.tls (tokens would cross the network in clear); set api.allow_plaintext: true only behind a trusted TLS proxy")
		}
	}
	v.intRange(p+".max_connections", int64(a.MaxConnections), 1, 65535)
	if a.MaxBodyBytes < MinAPIBodyBytes || a.MaxBodyBytes > MaxAPIBodyBytes {
		v.add(p+".max_body_bytes", "%s out of range [%s, %s]", a.MaxBodyBytes, MinAPIBodyBytes, MaxAPIBodyBytes)
	}
	names := map[string]int{}
	hashes := map[string]int{}
	for i, t := range a.Tokens {
		tp := fmt.Sprintf("%s.tokens[%d]", p, i)
		if !apiTokenNameRE.MatchString(t.Name) {
			v.add(tp+".name", "invalid %q: 1 to 64 letters, digits, '.', '_' or '-'", clip(t.Name))
		} else if j, dup := names[t.Name]; dup {
			v.add(tp+".name", "duplicate token name %q (also tokens[%d])", t.Name, j)
		} else {
			names[t.Name] = i
		}
		if t.Scope != ScopeAdmin && t.Scope != ScopeRead {
			v.add(tp+".scope", "invalid %q: admin or read", clip(t.Scope))
		}
		if !apiTokenHashRE.MatchString(t.Hash) {
			v.add(tp+".hash", "invalid: \"sha256:\" and 64 lower-case hex digits, as printed by `moongate token create`")
		} else if j, dup := hashes[t.Hash]; dup {
			v.add(tp+".hash", "same token as tokens[%d]", j)
		} else {
			hashes[t.Hash] = i
		}
	}
}

var bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

func (v *validator) blobs() {
	if t := v.c.Blobs.UploadReadTimeout; t < Duration(100*time.Millisecond) || t > Duration(time.Hour) {
		v.add("blobs.upload_read_timeout", "%s out of range [100ms, 1h]", t)
	}
	targets := make([]string, 0, len(v.c.Sync.Targets))
	known := map[string]bool{}
	for _, t := range v.c.Sync.Targets {
		targets = append(targets, t.Name)
		known[t.Name] = true
	}
	configured := "none are configured"
	if len(targets) > 0 {
		configured = "configured: " + strings.Join(targets, ", ")
	}
	for name, b := range v.c.Blobs.Buckets {
		p := "blobs.buckets." + name
		if !bucketRE.MatchString(name) {
			v.add(p, "invalid bucket name %q: use [a-z0-9][a-z0-9_-]{0,62}", clip(name))
		}
		v.intRange(p+".max_size", int64(b.MaxSize), 0, int64(MaxBlobSize))
		if b.MaxBytes < 0 {
			v.add(p+".max_bytes", "must not be negative")
		}
		if b.MaxBytes > 0 && b.MaxSize > b.MaxBytes {
			v.add(p+".max_size", "%d is more than max_bytes %d", b.MaxSize, b.MaxBytes)
		}
		if b.MaxAge < 0 {
			v.add(p+".max_age", "must not be negative")
		}
		seen := map[string]int{}
		for i, t := range b.Sync {
			q := fmt.Sprintf("%s.sync[%d]", p, i)
			if j, dup := seen[t]; dup {
				v.add(q, "%q is already listed as sync[%d]", clip(t), j)
				continue
			}
			seen[t] = i
			if !known[t] {
				v.add(q, "%q is not a sync target (sync.targets: %s)", clip(t), configured)
			}
		}
	}
}

// redactURL is the URL s for an error message, without a password it may
// hold (messages go to the journal and to check-config's output).
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		return clip(u.Redacted())
	}
	if i := strings.Index(s, "://"); i >= 0 {
		if j := strings.LastIndex(s[i+3:], "@"); j >= 0 {
			return clip(s[:i+3] + "xxxxx" + s[i+3+j:])
		}
	}
	return clip(s)
}
