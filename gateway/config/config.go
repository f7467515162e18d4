package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Environment variables that override values of the file. They are the only
// way the environment changes the configuration: `${VAR}` in values is not
// expanded.
const (
	// EnvMQTTPassword overrides mqtt.external.password.
	EnvMQTTPassword = "MOONGATE_MQTT_PASSWORD"
	// EnvDataDir overrides data_dir.
	EnvDataDir = "MOONGATE_DATA_DIR"
	// EnvGatewayID overrides gateway_id.
	EnvGatewayID = "MOONGATE_GATEWAY_ID"
)

// Config is moongate's whole configuration. The zero value is not useful:
// start from [Default], [Parse] or [Load].
type Config struct {
	// GatewayID names this gateway in record ids and the external broker's
	// client id: [A-Za-z0-9._-], at most 64 bytes. Default: the host name.
	GatewayID string `yaml:"gateway_id"`
	// DataDir holds the store. Default ./moongate-data.
	DataDir string `yaml:"data_dir"`
	// FunctionsDir, when set, is a directory of NAME.lua + NAME.yaml
	// function manifests, loaded at start and on change.
	FunctionsDir string `yaml:"functions_dir"`
	// MemoryLimit is the Go runtime's soft memory limit (see
	// [MemoryLimit]); default auto. GOMEMLIMIT in the environment wins.
	MemoryLimit MemoryLimit `yaml:"memory_limit"`
	Log         Log         `yaml:"log"`
	MQTT        MQTT        `yaml:"mqtt"`
	API         API         `yaml:"api"`
	Store       Store       `yaml:"store"`
	Pipeline    Pipeline    `yaml:"pipeline"`
	Functions   Functions   `yaml:"functions"`
	// Sync configures the upstream targets of records (see sync.go).
	Sync Sync `yaml:"sync"`
	// Blobs configures the buckets of file uploads (see blobs.go).
	Blobs Blobs `yaml:"blobs"`

	file  string            // file name given to Parse, for messages
	env   map[string]string // key path -> environment variable that set it
	lines Lines             // key path -> line, from Parse
}

// Log configures log/slog output.
type Log struct {
	Level  string `yaml:"level"`  // debug | info | warn | error (default info)
	Format string `yaml:"format"` // text | json (default text)
}

// MQTT modes.
const (
	ModeEmbedded = "embedded"
	ModeExternal = "external"
)

// MQTT selects and configures the broker side.
type MQTT struct {
	Mode       string   `yaml:"mode"`        // embedded | external (default embedded)
	MaxPayload Size     `yaml:"max_payload"` // largest accepted payload (default 256KiB)
	Embedded   Embedded `yaml:"embedded"`
	External   External `yaml:"external"`
}

// Embedded configures the built-in MQTT broker.
type Embedded struct {
	Listen          string `yaml:"listen"`           // TCP address (default 127.0.0.1:1883)
	WebsocketListen string `yaml:"websocket_listen"` // "" = no websocket listener
	TLS             TLS    `yaml:"tls"`
	// AllowAnonymous lets clients connect without credentials. It is
	// honoured only when every listener is on loopback (see [Embedded.AnonymousAllowed]);
	// setting it to true explicitly together with a non-loopback listener
	// is a validation error. Default true.
	AllowAnonymous     bool     `yaml:"allow_anonymous"`
	Users              []User   `yaml:"users"`
	MaxSessionExpiry   Duration `yaml:"max_session_expiry"`    // default 1h
	MaxInflight        int      `yaml:"max_inflight"`          // default 64
	MaxQueuedPerClient int      `yaml:"max_queued_per_client"` // default 1000
	// MaxQueuedBytesPerClient bounds the payload and topic bytes held for
	// one client (in flight and waiting to be written); past it messages
	// to that client are dropped. 0 (the default) means 4 x max_payload,
	// at least max_payload + 64KiB, which is also the minimum.
	MaxQueuedBytesPerClient Size `yaml:"max_queued_bytes_per_client"`
	// MaxClients bounds the devices connected at once (about 35 KB each);
	// more are refused at CONNECT. Default 1000.
	MaxClients int `yaml:"max_clients"`
	// MaxUnauthenticated bounds, per listener, the connections that have
	// not logged in yet (TLS handshake, CONNECT, password check); more are
	// closed at once. Default 64.
	MaxUnauthenticated int `yaml:"max_unauthenticated"`
	// MaxUnauthenticatedPerAddress bounds how many of those connections
	// come from one address (an IPv4 address, an IPv6 /64), so that one
	// host cannot keep the others out; at most max_unauthenticated.
	// 0 (the default) means 16, or max_unauthenticated if that is lower.
	MaxUnauthenticatedPerAddress int `yaml:"max_unauthenticated_per_address"`
	// MaxRetained bounds the topics holding a retained message; retained
	// publishes to new topics beyond it are delivered, not retained.
	// Default 10000.
	MaxRetained int `yaml:"max_retained"`
	// MaxRetainedBytes bounds the payload bytes of all retained messages
	// together; a retained publish beyond it is delivered, not retained.
	// Default 32MiB.
	MaxRetainedBytes Size `yaml:"max_retained_bytes"`
	// MaxSubscriptionsPerClient bounds the subscriptions one client may
	// hold; a SUBSCRIBE to a new filter beyond it is refused. Default 256.
	MaxSubscriptionsPerClient int `yaml:"max_subscriptions_per_client"`
	// MaxSessions bounds the clients the broker holds, connected or with a
	// persistent session kept while offline; a new client id past it
	// discards the session of the device offline the longest. 0 (the
	// default) means max_clients; otherwise at least max_clients.
	MaxSessions int `yaml:"max_sessions"`
	// PersistSessions keeps persistent sessions (subscriptions, queued
	// QoS 1/2 messages) and retained messages in the store, so that they
	// survive a restart. Default true; false keeps them in memory only.
	PersistSessions bool `yaml:"persist_sessions"`
}

// User is a device account of the embedded broker. Publish and Subscribe
// are MQTT topic filters in which "{username}" stands for the user's name;
// when absent they default to ["devices/{username}/#"]. An explicit empty
// list allows nothing.
type User struct {
	Username     string   `yaml:"username"`
	PasswordHash string   `yaml:"password_hash"` // bcrypt ($2a$, $2b$ or $2y$)
	Publish      []string `yaml:"publish"`
	Subscribe    []string `yaml:"subscribe"`
}

// DefaultACL is the publish and subscribe filter of a user whose lists are
// absent.
const DefaultACL = "devices/{username}/#"

// TLS is a server certificate and key (PEM files). Both or neither.
type TLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Enabled reports whether a certificate is configured.
func (t TLS) Enabled() bool { return t.Cert != "" || t.Key != "" }

// External configures the connection to an existing broker.
type External struct {
	Broker   string    `yaml:"broker"`    // tcp:// | mqtt:// | ssl:// | tls:// | mqtts:// | ws:// | wss://
	ClientID string    `yaml:"client_id"` // default moongate-<gateway_id>
	Username string    `yaml:"username"`
	Password string    `yaml:"password"` // or MOONGATE_MQTT_PASSWORD
	TLS      ClientTLS `yaml:"tls"`
	// KeepAlive is the MQTT keepalive (default 30s, at least 1s).
	KeepAlive Duration `yaml:"keepalive"`
	// MaxPacketSize bounds the PUBLISH packet (header, topic and payload)
	// of a function's local publish through the broker (0: no bound). Set
	// it to the broker's limit: a broker that closes the connection on a
	// larger message (mosquitto's max_packet_size) made the publisher retry
	// it for ever, holding up every publish behind it; a larger one is a
	// publish dead letter instead.
	MaxPacketSize Size `yaml:"max_packet_size"`
}

// ClientTLS configures TLS towards an external broker. CA is a PEM bundle
// trusted in addition to nothing else when set (system roots otherwise);
// Cert and Key, both or neither, are a client certificate.
type ClientTLS struct {
	CA                 string `yaml:"ca"`
	Cert               string `yaml:"cert"`
	Key                string `yaml:"key"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// API configures the HTTP API (health endpoints and REST).
type API struct {
	Listen string `yaml:"listen"` // default 127.0.0.1:8080; "" disables the API
	// Tokens are the bearer tokens the management API accepts (none by
	// default: every call but /healthz, /readyz and /metrics is refused).
	// Removing a token and restarting revokes it.
	Tokens []APIToken `yaml:"tokens"`
	// TLS serves the API over HTTPS (certificate and key, both or neither).
	// Required when Listen is not a loopback address, unless
	// AllowPlaintext is set.
	TLS TLS `yaml:"tls"`
	// AllowPlaintext allows a non-loopback Listen address without TLS
	// (tokens then cross the network in clear; only behind a trusted proxy).
	AllowPlaintext bool `yaml:"allow_plaintext"`
	// MaxBodyBytes bounds a request body, a function deploy included
	// (default 4MiB; 64KiB to 64MiB). Larger bodies get 413.
	MaxBodyBytes Size `yaml:"max_body_bytes"`
	// MaxConnections bounds the API's open connections (each a goroutine
	// and some KiB of buffers; an idle keep-alive connection is closed
	// after 2 minutes). More are closed at once, unread, and counted in
	// moongate_api_connections_shed_total. Default 128; 1 to 65535.
	MaxConnections int `yaml:"max_connections"`
}

// APIToken is one accepted bearer token, kept as a hash: Hash is
// "sha256:" and the hex SHA-256 of the token (`moongate token create`
// prints a new token and this line).
type APIToken struct {
	Name  string `yaml:"name"`  // shown in the audit log; unique
	Scope string `yaml:"scope"` // ScopeAdmin or ScopeRead
	Hash  string `yaml:"hash"`
}

// API token scopes.
const (
	ScopeAdmin = "admin" // everything: deploy, delete, invoke, writes
	ScopeRead  = "read"  // queries only
)

// API body size bounds.
const (
	MinAPIBodyBytes = Size(64 << 10)
	MaxAPIBodyBytes = Size(64 << 20)
)

// Store profiles, durability modes and quota policies.
const (
	ProfileLowMemory = "low-memory"
	ProfileLarge     = "large"

	DurabilityAlways   = "always"
	DurabilityInterval = "interval"
	DurabilityNone     = "none"

	PolicyDropOldest = "drop_oldest"
	PolicyRejectNew  = "reject_new"
)

// Store configures the Badger store.
type Store struct {
	Profile      string   `yaml:"profile"`       // low-memory | large
	Durability   string   `yaml:"durability"`    // always | interval | none
	SyncInterval Duration `yaml:"sync_interval"` // for interval (default 100ms)
	DiskReserve  Size     `yaml:"disk_reserve"`  // stop writing when free disk falls below (default 64MiB; 0: no reserve)
	Quotas       Quotas   `yaml:"quotas"`
	// CompactionShare is the fraction of one processor Badger's compactions
	// may use while they keep up: 0.1-1, or 0 for no pacing
	// (default 0.5; store.Options.CompactionShare).
	CompactionShare float64 `yaml:"compaction_share"`
}

// Quotas bound each key space of the store.
type Quotas struct {
	Records     Quota `yaml:"records"`
	Outbox      Quota `yaml:"outbox"`
	Logs        Quota `yaml:"logs"`
	Deadletters Quota `yaml:"deadletters"`
	// Inbox holds acknowledged events: its policy must be reject_new
	// (dropping acknowledged events would lose them).
	Inbox Quota `yaml:"inbox"`
	// Usage bounds the per-minute usage meters of functions (one key per
	// function and minute, about 525,600 a year each) by age only.
	Usage UsageQuota `yaml:"usage"`
	// State bounds the state of each function (keys and values): a
	// function's commit that would take it over max_bytes is refused
	// and its event dead-lettered. Default 64MiB.
	State StateQuota `yaml:"state"`
}

// StateQuota bounds the state of one function in bytes (0: no bound).
type StateQuota struct {
	MaxBytes Size `yaml:"max_bytes"`
}

// UsageQuota bounds the usage meters: those of minutes older than MaxAge
// are deleted (0: kept forever). Default 2160h (90 days).
type UsageQuota struct {
	MaxAge Duration `yaml:"max_age"`
}

// Quota bounds one key space. A zero MaxBytes or MaxAge means no limit of
// that kind.
type Quota struct {
	MaxBytes Size     `yaml:"max_bytes"`
	MaxAge   Duration `yaml:"max_age"`
	Policy   string   `yaml:"policy"` // drop_oldest | reject_new
}

// Pipeline configures event processing.
type Pipeline struct {
	Workers    int `yaml:"workers"`     // 0 = 2 x CPUs
	InboxLimit int `yaml:"inbox_limit"` // backlog at which intake stops (default 10000)
	// InboxBytes bounds the same backlog in bytes of events (default 16MiB).
	InboxBytes Size `yaml:"inbox_bytes"`
	// FunctionBacklog is how many entries of that backlog (and the same
	// part of its bytes) the events of one function may hold; once a slow
	// or failing function has filled it, only intake of its own events
	// waits (default 0: inbox_limit / 4).
	FunctionBacklog int   `yaml:"function_backlog"`
	Retry           Retry `yaml:"retry"`
	// MaxHops bounds function chains (stream and state triggers): an event
	// more hops from its origin is dead-lettered (default 8, 1 to 1000).
	MaxHops int `yaml:"max_hops"`
	// MaxChainEvents bounds the breadth of function chains: the chained
	// events one event may cause at every hop together (default 1000, 1 to
	// 1,000,000); an event whose outputs would chain more than its share
	// of it left is dead-lettered.
	MaxChainEvents int `yaml:"max_chain_events"`
}

// Retry is the retry policy of a failed event before it goes to the dead
// letters.
type Retry struct {
	MaxAttempts    int      `yaml:"max_attempts"`    // default 5
	InitialBackoff Duration `yaml:"initial_backoff"` // default 200ms
	MaxBackoff     Duration `yaml:"max_backoff"`     // default 30s
}

// Functions holds the defaults of every function; a manifest may lower or
// raise each within the hard caps ([MaxTimeout] ...).
type Functions struct {
	Timeout        Duration `yaml:"timeout"`         // default 1s
	MaxSteps       int64    `yaml:"max_steps"`       // default 10,000,000
	MaxMemory      Size     `yaml:"max_memory"`      // default 16MiB
	MaxConcurrency int      `yaml:"max_concurrency"` // default 4
	MinInstances   int      `yaml:"min_instances"`   // default 0
	IdleTimeout    Duration `yaml:"idle_timeout"`    // default 60s
}

// Blobs configures file uploads (PUT /v1/blobs/{bucket}/{name}).
type Blobs struct {
	// Buckets by name ([a-z0-9][a-z0-9_-]{0,62}); an upload to a bucket not
	// listed is refused (404). Default: none.
	Buckets map[string]Bucket `yaml:"buckets"`
	// UploadReadTimeout bounds the wait for each 64 KiB of an upload's
	// body (the rest of it when shorter): a client that sends less is cut
	// off with 408 and its partial file removed, so a stalled upload holds
	// neither a connection nor a temporary file (default 30s).
	UploadReadTimeout Duration `yaml:"upload_read_timeout"`
}

// Bucket bounds one blob bucket.
type Bucket struct {
	MaxSize  Size     `yaml:"max_size"`  // one blob (0: 64MiB, or MaxBytes when smaller; at most 4GiB)
	MaxBytes Size     `yaml:"max_bytes"` // all the bucket's blobs; 0 = unbounded
	MaxAge   Duration `yaml:"max_age"`   // blobs older than this are deleted; 0 = kept
	// Sync names sync targets (sync.targets) every blob stored in the
	// bucket is sent to: an http target PUTs its content, mqtt and nats
	// targets send its metadata record.
	Sync []string `yaml:"sync"`
}

// MaxBlobSize caps a bucket's max_size.
const MaxBlobSize = Size(4 << 30)

// Hard caps on function limits, for the config defaults and manifests alike.
const (
	MaxTimeout        = 10 * time.Minute
	MaxSteps          = int64(10_000_000_000)
	MaxMemory         = Size(1 << 30)
	MaxConcurrency    = 256
	MaxIdleTimeout    = 24 * time.Hour
	MaxMQTTPayload    = Size(1 << 20) // an event is one store value (the daemon sizes the store's limit for it and its topic)
	MaxWorkers        = 1024
	MaxInflight       = 65535
	MaxRetryAttempts  = 1000
	MaxGatewayIDBytes = 64
)

// Default returns the default configuration: what `moongate serve` runs
// without a file. GatewayID is the sanitized host name.
func Default() *Config {
	return &Config{
		GatewayID:    hostID(),
		DataDir:      "./moongate-data",
		FunctionsDir: "",
		Log:          Log{Level: "info", Format: "text"},
		MQTT: MQTT{
			Mode:       ModeEmbedded,
			MaxPayload: 256 << 10,
			Embedded: Embedded{
				Listen:                    "127.0.0.1:1883",
				AllowAnonymous:            true,
				MaxSessionExpiry:          Duration(time.Hour),
				MaxInflight:               64,
				MaxQueuedPerClient:        1000,
				MaxClients:                1000,
				MaxUnauthenticated:        64,
				MaxRetained:               10000,
				MaxRetainedBytes:          32 << 20,
				MaxSubscriptionsPerClient: 256,
				PersistSessions:           true,
			},
			External: External{KeepAlive: Duration(30 * time.Second)},
		},
		API: API{Listen: "127.0.0.1:8080", Tokens: []APIToken{}, MaxBodyBytes: 4 << 20, MaxConnections: 128},
		Store: Store{
			Profile:         ProfileLowMemory,
			Durability:      DurabilityAlways,
			SyncInterval:    Duration(100 * time.Millisecond),
			DiskReserve:     64 << 20,
			CompactionShare: 0.5,
			Quotas: Quotas{
				Records:     Quota{MaxBytes: 256 << 20, MaxAge: Duration(720 * time.Hour), Policy: PolicyDropOldest},
				Outbox:      Quota{MaxBytes: 128 << 20, Policy: PolicyDropOldest},
				Logs:        Quota{MaxBytes: 16 << 20, MaxAge: Duration(72 * time.Hour), Policy: PolicyDropOldest},
				Deadletters: Quota{MaxBytes: 64 << 20, MaxAge: Duration(720 * time.Hour), Policy: PolicyDropOldest},
				Inbox:       Quota{Policy: PolicyRejectNew},
				Usage:       UsageQuota{MaxAge: Duration(2160 * time.Hour)},
				State:       StateQuota{MaxBytes: 64 << 20},
			},
		},
		Pipeline: Pipeline{
			Workers:        0,
			InboxLimit:     10000,
			InboxBytes:     16 << 20,
			MaxHops:        8,
			MaxChainEvents: 1000,
			Retry:          Retry{MaxAttempts: 5, InitialBackoff: Duration(200 * time.Millisecond), MaxBackoff: Duration(30 * time.Second)},
		},
		Functions: Functions{
			Timeout:        Duration(time.Second),
			MaxSteps:       10_000_000,
			MaxMemory:      16 << 20,
			MaxConcurrency: 4,
			MinInstances:   0,
			IdleTimeout:    Duration(60 * time.Second),
		},
		Blobs:       Blobs{Buckets: map[string]Bucket{}, UploadReadTimeout: Duration(30 * time.Second)},
		MemoryLimit: MemoryLimitAuto,
	}
}

var badIDChars = regexp.MustCompile(`[^A-Za-z0-9._-]`)

func hostID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "moongate"
	}
	h = badIDChars.ReplaceAllString(h, "-")
	if len(h) > MaxGatewayIDBytes {
		h = h[:MaxGatewayIDBytes]
	}
	if strings.HasSuffix(h, blobIDSuffix) {
		h = h[:len(h)-len(blobIDSuffix)] + "_blob" // an id validation accepts
	}
	return h
}

// Parse decodes a configuration file's content (name is used in messages)
// over the defaults, fills derived defaults and validates it. It does not
// read the environment (see [Load] and [Config.ApplyEnv]). On error the
// returned error joins every problem found, each an *Error wrapping
// [ErrInvalid]; the *Config is nil.
func Parse(name string, data []byte) (*Config, error) {
	c, err := decode(name, data)
	if c == nil {
		return nil, err
	}
	c.finish()
	if err := c.validateAfter(err); err != nil {
		return nil, err
	}
	return c, nil
}

// decode decodes data over the defaults. When the document parsed but some
// values were rejected, it returns the config (rejected values keep their
// defaults) together with the errors, so that validation can report the
// remaining problems too; on a syntax error the config is nil.
func decode(name string, data []byte) (*Config, error) {
	c := Default()
	c.file = name
	lines, err := Unmarshal(name, data, c)
	c.lines = lines
	if err != nil && len(lines) == 0 {
		return nil, err
	}
	return c, err
}

// validateAfter validates c and joins the result with the decoding errors,
// leaving out validation problems under a key that already failed to
// decode, sorted by line.
func (c *Config) validateAfter(decodeErr error) error {
	if decodeErr == nil {
		return c.Validate()
	}
	des := Errors(decodeErr)
	all := make([]*Error, 0, len(des))
	all = append(all, des...)
	for _, ve := range Errors(c.Validate()) {
		dup := false
		for _, de := range des {
			if de.Path == "" || ve.Path == de.Path || strings.HasPrefix(ve.Path, de.Path+".") || strings.HasPrefix(ve.Path, de.Path+"[") {
				dup = true
				break
			}
		}
		if !dup {
			all = append(all, ve)
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].Line < all[j].Line })
	errs := make([]error, len(all))
	for i, e := range all {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// finish fills the defaults derived from other values.
func (c *Config) finish() {
	if _, fromEnv := c.env["gateway_id"]; c.GatewayID == "" && !fromEnv {
		// Set to "" by $MOONGATE_GATEWAY_ID it stays empty, and validation
		// says so: the host name would change the ids of new records.
		c.GatewayID = hostID()
	}
	if c.MQTT.External.ClientID == "" {
		c.MQTT.External.ClientID = "moongate-" + c.GatewayID
	}
	c.finishSync()
	if len(c.MQTT.Embedded.Users) == 0 {
		c.MQTT.Embedded.Users = nil
	}
	for i := range c.MQTT.Embedded.Users {
		u := &c.MQTT.Embedded.Users[i]
		if u.Publish == nil {
			u.Publish = []string{DefaultACL}
		}
		if u.Subscribe == nil {
			u.Subscribe = []string{DefaultACL}
		}
	}
}

// Load reads and parses the file at path, applies the environment overrides
// and validates the result. An empty path means no file: the defaults with
// the environment overrides. Errors reading the file are returned wrapped
// (errors.Is(err, fs.ErrNotExist) works); content errors wrap [ErrInvalid].
func Load(path string) (*Config, error) {
	c := Default()
	var decodeErr error
	if path != "" {
		st, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		if st.IsDir() {
			return nil, fmt.Errorf("config: %s is a directory", path)
		}
		if !st.Mode().IsRegular() {
			// A FIFO without a writer blocked the open for ever, before
			// the signal handling and the stop deadline were in place.
			return nil, fmt.Errorf("config: %s is not a regular file (%s)", path, st.Mode().Type())
		}
		if st.Size() > MaxFileSize {
			return nil, &Error{File: path, Msg: fmt.Sprintf("file is %d bytes, larger than the limit of %d", st.Size(), MaxFileSize)}
		}
		// Read at most one byte past the limit: a file that grows after the
		// Stat cannot make it read without end.
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		if len(data) > MaxFileSize {
			return nil, &Error{File: path, Msg: fmt.Sprintf("file is larger than the limit of %d bytes", MaxFileSize)}
		}
		var derr error
		if c, derr = decode(path, data); c == nil {
			return nil, derr
		}
		decodeErr = derr
	}
	c.ApplyEnv(os.LookupEnv)
	c.finish()
	if err := c.validateAfter(decodeErr); err != nil {
		return nil, err
	}
	return c, nil
}

// ApplyEnv applies the environment overrides ([EnvMQTTPassword],
// [EnvDataDir], [EnvGatewayID]) found by lookup (os.LookupEnv in [Load]).
// A variable that is set, even to "", overrides the file; validation then
// judges the result. Call [Config.Validate] afterwards.
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) {
	set := func(name string, dst *string, path string) {
		if v, ok := lookup(name); ok {
			*dst = v
			if c.env == nil {
				c.env = map[string]string{}
			}
			c.env[path] = name
		}
	}
	set(EnvMQTTPassword, &c.MQTT.External.Password, "mqtt.external.password")
	set(EnvDataDir, &c.DataDir, "data_dir")
	set(EnvGatewayID, &c.GatewayID, "gateway_id")
	c.applySyncEnv(lookup)
}

// Redacted returns a copy of c that is safe to log or print: the external
// broker password and the users' password hashes are replaced by
// "REDACTED" when set, as are the sync targets' passwords, tokens and
// HTTP header values.
func (c *Config) Redacted() *Config {
	r := *c
	if r.MQTT.External.Password != "" {
		r.MQTT.External.Password = "REDACTED"
	}
	if c.MQTT.Embedded.Users != nil {
		r.MQTT.Embedded.Users = make([]User, len(c.MQTT.Embedded.Users))
		for i, u := range c.MQTT.Embedded.Users {
			if u.PasswordHash != "" {
				u.PasswordHash = "REDACTED"
			}
			r.MQTT.Embedded.Users[i] = u
		}
	}
	r.Sync = c.Sync.redacted()
	return &r
}

// File is the name the configuration was parsed from ("" for defaults).
func (c *Config) File() string { return c.file }

// EffectiveWorkers is pipeline.workers, or 2 x cpus when it is 0.
func (p Pipeline) EffectiveWorkers(cpus int) int {
	if p.Workers > 0 {
		return p.Workers
	}
	return max(2*cpus, 1)
}

// AnonymousAllowed reports whether clients may connect without
// credentials: only when allow_anonymous is on and every configured listener
// (listen and, when set, websocket_listen) is a loopback address.
func (e Embedded) AnonymousAllowed() bool {
	if !e.AllowAnonymous || !IsLoopback(e.Listen) {
		return false
	}
	return e.WebsocketListen == "" || IsLoopback(e.WebsocketListen)
}

// IsLoopback reports whether the listen address addr ("host:port") binds
// only loopback interfaces: host "localhost" or a loopback IP. An empty host
// (all interfaces) is not loopback.
func IsLoopback(addr string) bool {
	host, _, err := splitHostPort(addr)
	if err != nil {
		return false
	}
	return isLoopbackHost(host)
}
