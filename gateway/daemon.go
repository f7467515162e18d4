package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"github.com/moongate-edge/moongate/gateway/apiserver"
	"github.com/moongate-edge/moongate/gateway/config"
	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
	upsync "github.com/moongate-edge/moongate/sync"
	"go.yaml.in/yaml/v3"
)

// Daemon is a whole moongate process built from a configuration: store,
// Lua runtime, MQTT side, gateway and HTTP endpoints. Create it with
// NewDaemon, then Run it; Run closes everything it opened when it returns.
type Daemon struct {
	cfg     *config.Config
	log     *slog.Logger
	store   *store.Store
	rt      *luavm.Runtime
	ingest  Ingest
	gw      *Gateway
	httpLn  net.Listener
	httpLim *connLimitListener // httpLn's bound on open connections
	httpSrv *http.Server
	mqttURL string
	mgr     manager // serialises API function changes (manage.go)
	api     *apiserver.Server
	syncState
	sync    *upsync.Manager
	forward []*Function  // built-in functions of sync.forward
	dirFns  dirFunctions // what functions_dir held (loadFunctions' goroutine)

	// FunctionsPoll is how often the functions directory is checked for
	// changes (default 2s).
	FunctionsPoll time.Duration
	// ClockProbe reports whether the system clock is synchronized (default:
	// the kernel's NTP status); records are stamped with it. Set before
	// Run.
	ClockProbe func() (bool, error)

	// stopping is closed once Run begins to stop (Stopping).
	stopping chan struct{}
	// storeHealth is the store's health as watchStore reads it, every
	// storeCheck (tests replace them: a store cannot be broken on purpose
	// here).
	storeHealth func() error
	storeCheck  time.Duration
}

// Stopping returns a channel that is closed once Run begins to stop:
// asked to (its context ended) or by itself (its store broke). A caller
// bounding the stop (cmd/moongate's serve) starts its clock there.
func (d *Daemon) Stopping() <-chan struct{} { return d.stopping }

// NewDaemon opens the store and builds every part; nothing listens yet
// except the HTTP endpoint (bound so that its address is known).
func NewDaemon(ctx context.Context, cfg *config.Config, log *slog.Logger) (*Daemon, error) {
	if log == nil {
		log = slog.Default()
	}
	d := &Daemon{cfg: cfg, log: log, FunctionsPoll: 2 * time.Second, ClockProbe: kernelClockSynced, stopping: make(chan struct{}),
		storeCheck: storeCheckInterval}
	st, err := store.Open(ctx, storeOptions(cfg, log))
	if err != nil {
		return nil, fmt.Errorf("open store in %s: %w", cfg.DataDir, err)
	}
	d.store = st
	fail := func(err error) (*Daemon, error) {
		d.closeAll()
		return nil, err
	}
	d.rt = luavm.NewRuntime(luavm.Options{Logger: log, DefaultLimits: functionLimits(cfg)})
	switch cfg.MQTT.Mode {
	case config.ModeExternal:
		x, err := mqtt.NewExternal(externalConfig(cfg), log)
		if err != nil {
			return fail(fmt.Errorf("mqtt: %w", err))
		}
		d.ingest = x
		d.mqttURL = cfg.MQTT.External.Broker
	default:
		ec := embeddedConfig(cfg)
		if cfg.MQTT.Embedded.PersistSessions {
			ec.Sessions = st
		}
		e, err := mqtt.NewEmbedded(ec, log)
		if err != nil {
			return fail(fmt.Errorf("mqtt: %w", err))
		}
		d.ingest = e
	}
	sm, err := upsync.New(upsync.Options{Store: st, GatewayID: cfg.GatewayID, Logger: log, Targets: syncTargets(cfg)})
	if err != nil {
		return fail(fmt.Errorf("sync: %w", err))
	}
	d.sync = sm
	d.SetSyncStatus(func(context.Context) ([]apiserver.SyncTarget, error) { return apiSyncTargets(sm.Status()), nil })
	if d.forward, err = forwardFunctions(cfg); err != nil {
		return fail(err)
	}
	gw, err := New(Options{
		RouteTargets:    sm.Route,
		Store:           st,
		Runtime:         d.rt,
		Ingest:          d.ingest,
		Logger:          log,
		Workers:         cfg.Pipeline.Workers,
		InboxLimit:      cfg.Pipeline.InboxLimit,
		MaxBacklogBytes: int64(cfg.Pipeline.InboxBytes),
		FunctionBacklog: cfg.Pipeline.FunctionBacklog,
		MaxHops:         cfg.Pipeline.MaxHops,
		MaxChainEvents:  cfg.Pipeline.MaxChainEvents,
		MaxPayload:      int(cfg.MQTT.MaxPayload),
		MaxEventBytes:   storeValueBytes(cfg),
		Retry: RetryPolicy{
			MaxAttempts:    cfg.Pipeline.Retry.MaxAttempts,
			InitialBackoff: cfg.Pipeline.Retry.InitialBackoff.Std(),
			MaxBackoff:     cfg.Pipeline.Retry.MaxBackoff.Std(),
		},
	})
	if err != nil {
		return fail(err)
	}
	d.gw = gw
	if cfg.API.Listen != "" {
		ln, err := net.Listen("tcp", cfg.API.Listen)
		if err != nil {
			return fail(fmt.Errorf("api listen %s: %w", cfg.API.Listen, err))
		}
		d.httpLim = newConnLimitListener(ln, cfg.API.MaxConnections, log)
		d.httpLn = d.httpLim
		api, err := d.newAPI()
		if err != nil {
			return fail(fmt.Errorf("api: %w", err))
		}
		d.api = api
		// One port for REST, gRPC and health: HTTP/2 for gRPC comes from
		// ALPN with TLS, or unencrypted HTTP/2 (prior knowledge) without.
		var protos http.Protocols
		protos.SetHTTP1(true)
		// IdleTimeout: a keep-alive connection left idle gives its place
		// (api.max_connections) back.
		// HTTP2.MaxConcurrentStreams: api.max_connections bounds
		// connections, and each could otherwise carry 250 requests (Go's
		// default), each buffering a body or following the logs.
		d.httpSrv = &http.Server{Handler: api.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, Protocols: &protos,
			HTTP2: &http.HTTP2Config{MaxConcurrentStreams: apiStreamsPerConn}}
		if d.cfg.API.TLS.Enabled() {
			tc, err := apiTLS(d.cfg.API.TLS)
			if err != nil {
				return fail(err)
			}
			protos.SetHTTP2(true)
			d.httpSrv.TLSConfig = tc
		} else {
			protos.SetUnencryptedHTTP2(true)
		}
	}
	return d, nil
}

// apiStreamsPerConn bounds the requests one HTTP/2 connection to the API
// carries at once.
const apiStreamsPerConn = 16

// Gateway returns the daemon's gateway.
func (d *Daemon) Gateway() *Gateway { return d.gw }

// Sync returns the daemon's sync manager (its Status is the per-target
// state of the upstream targets).
func (d *Daemon) Sync() *upsync.Manager { return d.sync }

// Store returns the daemon's store.
func (d *Daemon) Store() *store.Store { return d.store }

// HTTPAddr is the bound address of the HTTP endpoint, or nil.
func (d *Daemon) HTTPAddr() net.Addr {
	if d.httpLn == nil {
		return nil
	}
	return d.httpLn.Addr()
}

// MQTTAddr is the embedded broker's bound address, or nil in external mode.
func (d *Daemon) MQTTAddr() net.Addr {
	if e, ok := d.ingest.(*mqtt.Embedded); ok {
		return e.Addr()
	}
	return nil
}

// Ready returns nil when the daemon takes events: the gateway runs and
// its store takes writes (not below its disk reserve, not failing);
// otherwise why not.
func (d *Daemon) Ready() error {
	if !d.gw.Ready() {
		return errors.New("the gateway is not running")
	}
	return d.store.Health()
}

// Handler serves /healthz (the process is alive) and /readyz (the gateway
// takes events).
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := d.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:", err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// Run loads the functions, serves until ctx is done, then stops in order
// and closes the store.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.closeAll()
	switch dir := d.cfg.FunctionsDir; {
	case ctx.Err() != nil:
		// Asked to stop before it started: nothing to load (and no
		// "context canceled" errors to log); the gateway stops cleanly.
	case dir != "":
		// The directory is the whole set of functions; each new or changed
		// one is also kept in the store as a new version.
		load := func(fns []trigger.Function, errs []error) bool { return d.loadFunctions(ctx, fns, errs) }
		if !load(trigger.LoadDir(dir)) && ctx.Err() == nil {
			// The directory could not be read (not mounted yet, being
			// replaced) or the store failed: the versions stored from it
			// run until the watcher loads it, rather than no function at
			// all, whose events would be taken for unmatched messages.
			if err := d.runStored(ctx, true); err != nil {
				return err
			}
			d.log.Warn("functions directory not loaded at start; running the stored versions until it is", "dir", dir, "functions", len(d.gw.Functions()))
		}
		// The watcher's loads read the store: it ends before closeAll.
		watchCtx, stopWatch := context.WithCancel(ctx)
		watchDone := make(chan struct{})
		go func() {
			defer close(watchDone)
			trigger.Watch(watchCtx, dir, d.FunctionsPoll, load)
		}()
		defer func() { stopWatch(); <-watchDone }()
	default:
		// Without its functions the gateway would take their events for
		// unmatched messages: a store that cannot be read fails the start.
		if err := d.runStored(ctx, false); err != nil {
			return err
		}
	}
	if srv, ln := d.httpSrv, d.httpLn; srv != nil {
		// The server and listener are passed in: closeAll clears the
		// fields, maybe before this goroutine runs (a stop while starting).
		go func() {
			var err error
			if srv.TLSConfig != nil {
				err = srv.ServeTLS(ln, "", "")
			} else {
				err = srv.Serve(ln)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("api server", "err", err)
			}
		}()
		d.log.Info("api listening", "addr", d.httpLn.Addr().String())
	}
	// Sync runs until the gateway has stopped (its last commits are in the
	// outboxes), then stops before the store closes.
	syncCtx, stopSync := context.WithCancel(context.WithoutCancel(ctx))
	syncDone := make(chan struct{})
	go func() {
		defer close(syncDone)
		if err := d.sync.Run(syncCtx); err != nil {
			d.log.Error("sync", "err", err)
		}
	}()
	// A store that broke (a commit failed and its state could not be
	// reloaded) refuses every write until it is reopened: the daemon stops
	// with that error, so that its supervisor restarts it.
	runCtx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	context.AfterFunc(runCtx, func() { close(d.stopping) })
	// Read here: closeAll clears d.store when Run returns, while the
	// watcher may still be looking.
	health := d.store.Health
	if d.storeHealth != nil {
		health = d.storeHealth
	}
	go d.watchStore(runCtx, stopRun, health, d.storeCheck)
	// The clock is read before the first event is taken, then every 30 s.
	clockDone := make(chan struct{})
	if cw := (&clockWatch{d: d, probe: d.ClockProbe}); d.ClockProbe != nil && cw.read() {
		go func() { defer close(clockDone); cw.run(runCtx) }()
	} else {
		close(clockDone)
	}
	defer func() { stopRun(nil); <-clockDone }()
	err := d.gw.Run(runCtx)
	stopSync()
	<-syncDone
	if cause := context.Cause(runCtx); err == nil && errors.Is(cause, store.ErrCorrupt) {
		err = cause
	}
	return err
}

// storeCheckInterval is how often the daemon looks for a broken store.
const storeCheckInterval = 5 * time.Second

// watchStore stops the daemon (stop) once its store is broken (health
// reports ErrCorrupt).
func (d *Daemon) watchStore(ctx context.Context, stop context.CancelCauseFunc, health func() error, interval time.Duration) {
	every(ctx, interval, func() bool {
		if err := health(); errors.Is(err, store.ErrCorrupt) {
			d.log.Error("store refuses writes until restarted: stopping", "err", err)
			stop(err)
			return false
		}
		return true
	})
}

// runStored deploys the active versions kept in the store (fromDir: only
// those stored from functions_dir, see storedFunctions). A store that
// cannot be read fails the start (unless ctx ended): without its functions
// the gateway would take their events for unmatched messages.
func (d *Daemon) runStored(ctx context.Context, fromDir bool) error {
	fns, err := d.storedFunctions(ctx, fromDir)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("gateway: %w", err)
	}
	if err := d.gw.SetFunctions(ctx, d.withForwards(fns)); err != nil {
		d.log.Error("functions", "err", err)
	}
	return nil
}

// warnUnknownTargets logs the sync targets of f that are not configured
// (its records wait in that outbox, bounded by the outbox quota, visible in
// the sync status, until a target of that name is configured) and the
// buckets of its upload triggers that are not.
func (d *Daemon) warnUnknownTargets(f *Function) {
	for _, t := range f.Sync {
		if !d.sync.Has(t) {
			d.log.Warn("function syncs to a target that is not configured; its records wait in that outbox", "function", f.Name, "target", t)
		}
	}
	for _, u := range f.Uploads {
		if _, ok := d.cfg.Blobs.Buckets[u.Bucket]; !ok {
			d.log.Warn("function has an upload trigger on a bucket that is not configured (blobs.buckets): it never runs on it", "function", f.Name, "bucket", u.Bucket)
		}
	}
}

// forwardLua is the built-in function of a sync.forward entry: the raw
// event as a record (the payload as a JSON string: UTF-8 text byte for
// byte, invalid sequences as U+FFFD; docs/sync.md).
const forwardLua = `function handle(event, ctx)
  return {topic = event.topic, payload = event.payload}
end
`

// CheckConfig checks what config.Config.Validate cannot (the packages it
// needs import config): the trigger patterns of sync.forward. It returns
// every problem joined, each a *config.Error (nil when there is none), as
// serve would refuse them. check-config calls it after config.Load.
func CheckConfig(cfg *config.Config) error {
	var errs []error
	for i, f := range cfg.Sync.Forward {
		if _, err := trigger.ParsePattern(f.Trigger); err != nil {
			errs = append(errs, cfg.ErrorAt(fmt.Sprintf("sync.forward[%d].trigger", i), err))
		}
	}
	return errors.Join(errs...)
}

// CheckFunction reports why serve would not load a function of
// functions_dir with configuration cfg: its manifest against the limits
// and the store (FunctionFromManifest), a source that does not compile, or
// a name a sync.forward entry takes. check-config runs it.
func CheckFunction(tf *trigger.Function, cfg *config.Config) error {
	if _, err := FunctionFromManifest(tf, cfg); err != nil {
		return err
	}
	if _, err := luavm.Compile(tf.Manifest.Name, tf.Source); err != nil {
		return err
	}
	for i, f := range cfg.Sync.Forward {
		if f.Name == tf.Manifest.Name {
			return fmt.Errorf("its name is used by sync.forward[%d]: serve does not load it", i)
		}
	}
	return nil
}

// forwardFunctions builds the functions of sync.forward.
func forwardFunctions(cfg *config.Config) ([]*Function, error) {
	if err := CheckConfig(cfg); err != nil {
		return nil, err
	}
	var out []*Function
	for i, f := range cfg.Sync.Forward {
		manifest, err := yaml.Marshal(map[string]any{"triggers": []map[string]string{{"mqtt": f.Trigger}}, "stream": f.Stream, "sync": f.Targets})
		if err != nil {
			return nil, err
		}
		m, err := trigger.ParseManifest(f.Name+".yaml", manifest)
		if err != nil {
			return nil, fmt.Errorf("sync.forward[%d]: %w", i, err)
		}
		sum := sha256.Sum256(append(append([]byte(nil), manifest...), forwardLua...))
		fn, err := FunctionFromManifest(&trigger.Function{Manifest: m, Source: []byte(forwardLua), SHA256: hex.EncodeToString(sum[:])}, cfg)
		if err != nil {
			return nil, fmt.Errorf("sync.forward[%d]: %w", i, err)
		}
		fn.Version = 1
		out = append(out, fn)
	}
	return out, nil
}

// withForwards adds the sync.forward functions to fns; a loaded function
// with the same name as a forward entry is not deployed.
func (d *Daemon) withForwards(fns []*Function) []*Function {
	if len(d.forward) == 0 {
		return fns
	}
	names := map[string]bool{}
	for _, f := range d.forward {
		names[f.Name] = true
	}
	out := make([]*Function, 0, len(fns)+len(d.forward))
	for _, f := range fns {
		if names[f.Name] {
			d.log.Error("function not loaded: its name is used by a sync.forward entry", "function", f.Name)
			continue
		}
		out = append(out, f)
	}
	return append(out, d.forward...)
}

// apiSyncTargets converts the sync manager's status for the API.
func apiSyncTargets(sts []upsync.TargetStatus) []apiserver.SyncTarget {
	out := make([]apiserver.SyncTarget, len(sts))
	for i, s := range sts {
		kind := s.Type
		if kind == "" {
			kind = s.State // an outbox without a configured target: "unconfigured"
		}
		out[i] = apiserver.SyncTarget{Name: s.Name, Kind: kind, Connected: s.Connected, BacklogRecords: s.Backlog,
			BacklogBytes: s.BacklogBytes, OldestPendingAge: s.OldestPending, DeliveredTotal: s.Delivered,
			DeliveredPerSecond: s.Rate, DroppedByQuota: s.Dropped, LastError: s.LastError, LastErrorTime: s.LastErrorAt,
			BlobsPending: s.BlobBacklog, BlobBytesPending: s.BlobBacklogBytes, BlobsDelivered: s.BlobsDelivered,
			BlobsFailed: s.BlobsDeadLettered, BlobsDropped: s.BlobsDropped}
	}
	return out
}

// syncTargets converts the sync section of cfg for the sync manager.
func syncTargets(cfg *config.Config) []upsync.TargetConfig {
	tls := func(c config.ClientTLS) upsync.TLSConfig {
		return upsync.TLSConfig{CA: c.CA, Cert: c.Cert, Key: c.Key, InsecureSkipVerify: c.InsecureSkipVerify}
	}
	out := make([]upsync.TargetConfig, 0, len(cfg.Sync.Targets))
	for _, t := range cfg.Sync.Targets {
		tc := upsync.TargetConfig{
			Name: t.Name, Type: t.Type,
			MaxRecords: t.Batch.MaxRecords, MaxBytes: int(t.Batch.MaxBytes), MaxDelay: t.Batch.MaxDelay.Std(),
			Inflight: t.Inflight, BandwidthLimit: int64(t.BandwidthLimit), DailyBudget: int64(t.DailyBudget),
			PriorityStreams: t.PriorityStreams, InitialBackoff: t.Backoff.Initial.Std(), MaxBackoff: t.Backoff.Max.Std(),
			AckTimeout: t.AckTimeout.Std(),
			MQTT: upsync.MQTTConfig{Broker: t.MQTT.Broker, ClientID: t.MQTT.ClientID, Username: t.MQTT.Username, Password: t.MQTT.Password,
				Topic: t.MQTT.Topic, KeepAlive: t.MQTT.KeepAlive.Std(), TLS: tls(t.MQTT.TLS), MaxPayload: int(t.MQTT.MaxPayload),
				MaxTopic: t.MQTT.MaxTopic},
			HTTP: upsync.HTTPConfig{URL: t.HTTP.URL, Headers: t.HTTP.Headers, Compression: t.HTTP.Compression, TLS: tls(t.HTTP.TLS)},
			NATS: upsync.NATSConfig{URL: t.NATS.URL, Subject: t.NATS.Subject, Username: t.NATS.Username, Password: t.NATS.Password,
				Token: t.NATS.Token, CredsFile: t.NATS.CredsFile, TLS: tls(t.NATS.TLS)},
		}
		if tc.MaxDelay == 0 {
			tc.MaxDelay = -1 // 0 in the file: send at once
		}
		out = append(out, tc)
	}
	return out
}

// loadFunctions deploys what LoadDir or Watch read from the functions
// directory. The directory is the whole set of functions, except that a
// function whose files are there but failed to load (a typo in NAME.yaml, a
// bad limit, a missing or half-written file) keeps its running version: only
// a function whose files are gone is removed. When the directory could not
// be read, the store failed or ctx is done, nothing changes.
func (d *Daemon) loadFunctions(ctx context.Context, fns []trigger.Function, errs []error) (applied bool) {
	keep := map[string]bool{}
	for _, err := range errs {
		var fe *trigger.FileError
		if !errors.As(err, &fe) || fe.Name == "" {
			d.log.Error("functions directory not read; the deployed functions stay as they are", "err", err)
			return false
		}
		keep[fe.Name] = true
		d.log.Error("function not loaded; its running version (if any) stays deployed", "function", fe.Name, "err", err)
	}
	if ctx.Err() != nil {
		return false
	}
	// Read before versioned marks versions FromDir.
	adopted, err := d.dirAdopted(ctx)
	var out []*Function
	if err == nil {
		out, err = d.versioned(ctx, fns, keep)
	}
	if err == nil {
		out, err = d.fallBack(ctx, out, keep, !adopted)
	}
	if err != nil {
		if ctx.Err() == nil {
			d.log.Error("functions not updated; the deployed functions stay as they are (tried again at the next poll)", "err", err)
		}
		return false
	}
	held := maps.Clone(keep) // the names with files, broken or not
	for _, f := range d.forward {
		delete(keep, f.Name)
	}
	if err := d.gw.setFunctions(ctx, d.withForwards(out), keep); err != nil {
		// A function that does not deploy (it would fail the same way
		// again) is logged; the others are in place.
		d.log.Error("functions", "err", err)
	}
	d.deactivateRemoved(ctx, out, held)
	// Noted once the directory held a function (an empty one may be a
	// mount point not mounted yet: nothing was marked).
	if !adopted && holdsFunction(out, held) {
		if err := d.store.PutState(ctx, gatewayState, dirAdoptedKey, []byte("1")); err != nil {
			d.log.Warn("functions directory not noted as adopted in the store (tried again at the next load)", "err", err)
		} else {
			d.dirFns.adopted = true
		}
	}
	return true
}

// holdsFunction reports whether a load found a function's files: one
// loaded (out) or a broken one with a valid name (held; a README.yaml is
// not a function).
func holdsFunction(out []*Function, held map[string]bool) bool {
	if len(out) > 0 {
		return true
	}
	for name := range held {
		if trigger.ValidFunctionName(name) {
			return true
		}
	}
	return false
}

// gatewayState is the state namespace of the gateway's own notes (not a
// valid function name, so no function's state).
const gatewayState = "_gateway"

// dirAdoptedKey, in gatewayState, is set once a load of functions_dir was
// applied by a moongate that marks the versions it stores from the
// directory (FromDir). Before that, the store's active versions cannot be
// told apart (written by an older moongate): all count as the
// directory's.
const dirAdoptedKey = "functions_dir_adopted"

// dirAdopted reports whether dirAdoptedKey is set.
func (d *Daemon) dirAdopted(ctx context.Context) (bool, error) {
	if d.dirFns.adopted {
		return true, nil
	}
	_, ok, err := d.store.GetState(ctx, gatewayState, dirAdoptedKey)
	if err != nil {
		return false, fmt.Errorf("read %s/%s: %w", gatewayState, dirAdoptedKey, err)
	}
	d.dirFns.adopted = ok
	return ok, nil
}

// dirFunctions is what the functions directory held, for
// deactivateRemoved. The zero value is the state at start.
type dirFunctions struct {
	last  map[string]bool // the names at the last applied load
	off   map[string]bool // removed names whose deactivation failed (retried)
	swept bool            // the store's versions from the directory were checked against it
	// adopted caches dirAdoptedKey once read or written (never unset).
	adopted bool
}

// deactivateRemoved marks inactive in the store the functions whose files
// are no longer in the directory: left active, a start that could not read
// the directory yet (runStored), or a broken NAME.yaml appearing later
// (fallBack), ran the removed function again. Those are the names the
// directory held at the last load and no longer holds, and, at the first
// load that finds at least one function file (an empty directory may be a
// mount point not mounted yet), every active version stored from the
// directory whose name it does not hold: removed while the daemon was
// stopped. Only versions stored from the directory (FromDir) are
// deactivated: those deployed through the API before functions_dir was set
// are left as they are. A deactivation that fails is tried again at the
// next load. loadFunctions' goroutine only.
func (d *Daemon) deactivateRemoved(ctx context.Context, out []*Function, keep map[string]bool) {
	present := make(map[string]bool, len(out)+len(keep))
	for _, f := range out {
		present[f.Name] = true
	}
	for name := range keep {
		present[name] = true
	}
	gone := d.dirFns.off
	if gone == nil {
		gone = map[string]bool{}
	}
	for name := range d.dirFns.last {
		gone[name] = true
	}
	if !d.dirFns.swept && holdsFunction(out, keep) {
		recs, err := d.store.ListFunctions(ctx)
		if err != nil {
			d.log.Warn("functions removed from the directory while stopped not checked (tried again at the next load)", "err", err)
		} else {
			d.dirFns.swept = true
			for _, r := range recs {
				if r.Active && r.FromDir {
					gone[r.Name] = true
				}
			}
		}
	}
	d.dirFns.last = present
	d.dirFns.off = nil
	for name := range gone {
		// A sync.forward entry's name is not in present: a function
		// removed from the directory whose name a forward took since is
		// removed all the same (forwards are not stored).
		if present[name] || !trigger.ValidFunctionName(name) {
			continue
		}
		r, err := d.store.GetFunction(ctx, name, 0)
		switch {
		case errors.Is(err, store.ErrNotFound):
			continue // no active version
		case err == nil && !r.FromDir:
			continue // deployed through the API, not the directory's
		case err == nil:
			err = d.store.SetActive(ctx, name, 0)
		}
		if err != nil {
			d.log.Warn("removed function left active in the store (tried again at the next load)", "function", name, "err", err)
			if d.dirFns.off == nil {
				d.dirFns.off = map[string]bool{}
			}
			d.dirFns.off[name] = true
		}
	}
}

// fallBack adds to out the stored active version of each function in
// failed that has no running version (its files failed to load when the
// daemon started): the version that ran before stays in place, as it does
// for a change made while running. Only a version stored from the
// directory (FromDir; any while legacy, before dirAdoptedKey, and it is
// then marked FromDir): a broken NAME.yaml does not bring in a version
// deployed through the API before functions_dir was set.
func (d *Daemon) fallBack(ctx context.Context, out []*Function, failed map[string]bool, legacy bool) ([]*Function, error) {
	forwards := map[string]bool{}
	for _, f := range d.forward {
		forwards[f.Name] = true
	}
	for name := range failed {
		running := d.gw.funcs.Load().byName[name]
		if running != nil && !legacy || forwards[name] {
			continue
		}
		r, err := d.store.GetFunction(ctx, name, 0)
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrInvalid) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read stored function %s: %w", name, err)
		}
		if !r.FromDir {
			if !legacy {
				continue
			}
			// Also when it runs already (the unreadable-directory
			// fallback of this start ran it): once the store notes the
			// adoption, only versions marked run for a broken file.
			if running == nil || running.Version == r.Version {
				if err := d.store.MarkFromDir(ctx, name, r.Version); err != nil {
					return nil, fmt.Errorf("mark stored function %s as the directory's: %w", name, err)
				}
			}
		}
		if running != nil {
			continue
		}
		if f := d.fromRecord(r); f != nil {
			d.log.Warn("function files not loaded; running its stored version", "function", name, "version", r.Version)
			out = append(out, f)
		}
	}
	return out, nil
}

// versioned builds the functions loaded from the directory, storing each
// new or changed one as the next active version. The name of a function
// that cannot be built is added to failed (its running version stays); an
// error of the store (or ctx ending) is returned: the caller must not
// change the deployed functions on an incomplete list.
func (d *Daemon) versioned(ctx context.Context, fns []trigger.Function, failed map[string]bool) ([]*Function, error) {
	out := make([]*Function, 0, len(fns))
	for i := range fns {
		tf := &fns[i]
		f, err := FunctionFromManifest(tf, d.cfg)
		if err != nil {
			failed[tf.Manifest.Name] = true
			d.log.Error("function not loaded; its running version (if any) stays deployed", "function", tf.Manifest.Name, "err", err)
			continue
		}
		cur, err := d.store.GetFunction(ctx, f.Name, 0)
		switch {
		case err == nil && cur.SHA256 == tf.SHA256:
			f.Version = cur.Version
			if !cur.FromDir {
				// Deployed through the API before functions_dir was set,
				// or stored before FromDir existed: from now on the
				// directory's (deactivateRemoved, and the fallbacks once
				// the store notes the adoption, which a load failing here
				// does not).
				if err := d.store.MarkFromDir(ctx, f.Name, cur.Version); err != nil {
					return nil, fmt.Errorf("mark stored function %s as the directory's: %w", f.Name, err)
				}
			}
		case err == nil || errors.Is(err, store.ErrNotFound):
			// A source that does not compile is a broken file like a bad
			// manifest: stored as the active version, it was what the next
			// start loaded, and the function's events were dead-lettered
			// instead of run by the version before.
			if _, cerr := d.rt.Compile(f.Name, tf.Source); cerr != nil {
				failed[f.Name] = true
				d.log.Error("function not loaded; its running version (if any) stays deployed", "function", f.Name, "err", cerr)
				continue
			}
			// The manifest as read and parsed (read again, it was unbounded
			// and could differ from what its SHA-256 and f came from).
			v, perr := d.store.PutFunction(ctx, store.FunctionRecord{Name: f.Name, Source: tf.Source, Manifest: tf.ManifestData, SHA256: tf.SHA256, Active: true, FromDir: true})
			if store.IsPermanent(perr) {
				// This function's record is refused for good (too large):
				// like a broken file, not a reason to leave every other
				// change of the directory out.
				failed[f.Name] = true
				d.log.Error("function not loaded; its running version (if any) stays deployed", "function", f.Name, "err", perr)
				continue
			}
			if perr != nil {
				return nil, fmt.Errorf("store function %s: %w", f.Name, perr)
			}
			f.Version = v
		default:
			return nil, fmt.Errorf("read stored function %s: %w", f.Name, err)
		}
		d.warnUnknownTargets(f)
		out = append(out, f)
	}
	return out, nil
}

// storedFunctions builds the active versions kept in the store; with
// fromDir only those stored from functions_dir (FromDir), once the store
// tells them apart (dirAdopted): versions deployed through the API before
// functions_dir was set are not the directory's. An error reading the
// store is returned (the list would be incomplete); a stored function that
// cannot be built is logged and left out.
func (d *Daemon) storedFunctions(ctx context.Context, fromDir bool) ([]*Function, error) {
	if fromDir {
		adopted, err := d.dirAdopted(ctx)
		if err != nil {
			return nil, err
		}
		fromDir = adopted
	}
	recs, err := d.store.ListFunctions(ctx)
	if err != nil {
		return nil, fmt.Errorf("list stored functions: %w", err)
	}
	var out []*Function
	for _, r := range recs {
		if !r.Active || fromDir && !r.FromDir {
			continue
		}
		if f := d.fromRecord(r); f != nil {
			out = append(out, f)
		}
	}
	return out, nil
}

// fromRecord builds a stored version. One that cannot be built (its
// limits no longer fit the configuration) is returned with LoadErr set,
// so that its events are dead-lettered rather than ignored; one whose
// manifest does not parse (its triggers are unknown) is logged and nil.
func (d *Daemon) fromRecord(r store.FunctionRecord) *Function {
	m, err := trigger.ParseStoredManifest(r.Name+".yaml", r.Manifest)
	if err != nil {
		d.log.Error("stored function not loaded; its triggers are unknown, so its events are not taken", "function", r.Name, "version", r.Version, "err", err)
		return nil
	}
	m.Name = r.Name
	tf := &trigger.Function{Manifest: m, Source: r.Source, SHA256: r.SHA256}
	f, err := FunctionFromManifest(tf, d.cfg)
	if err != nil {
		f = NotLoadedFunction(tf, err)
	}
	f.Version = r.Version
	// A rollback to an identical older version still switches versions.
	f.Fingerprint = r.SHA256 + "@" + strconv.FormatInt(r.Version, 10)
	d.warnUnknownTargets(f)
	return f
}

func (d *Daemon) closeAll() {
	if d.api != nil {
		// First: it ends the open streams (log follow) that would hold
		// the HTTP server's shutdown.
		d.api.Close()
		d.api = nil
	}
	if d.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = d.httpSrv.Shutdown(ctx)
		cancel()
		d.httpSrv = nil
	} else if d.httpLn != nil {
		_ = d.httpLn.Close()
	}
	if d.rt != nil {
		d.rt.Close()
		d.rt = nil
	}
	if d.store != nil {
		if err := d.store.Close(); err != nil {
			d.log.Error("close store", "err", err)
		}
		d.store = nil
	}
}

// eventOverhead bounds what an encoded event adds to its payload: the topic
// (at most 65,535 bytes), its captures (parts of it) and a few fields.
const eventOverhead = 2*65535 + 4096

// storeValueBytes is the store's value size limit (store.Options.MaxValueBytes)
// under cfg: an event of max_payload bytes with the longest topic (and its
// captures) must fit one value, or it could never be queued.
func storeValueBytes(cfg *config.Config) int {
	return max(1<<20, int(cfg.MQTT.MaxPayload)+eventOverhead)
}

// outputOverhead bounds what a record or a local publish adds to a
// function's result or effect in its store value (ids, stream, function,
// device, targets, times; a publish's topic is part of its effect size).
const outputOverhead = 8 << 10

func storeOptions(cfg *config.Config, log *slog.Logger) store.Options {
	o := store.Options{
		Dir:          cfg.DataDir,
		Profile:      store.Profile(cfg.Store.Profile),
		SyncInterval: cfg.Store.SyncInterval.Std(),
		GatewayID:    cfg.GatewayID,
		DiskReserve:  int64(cfg.Store.DiskReserve),
		Logger:       log,
		Quotas:       map[string]store.Quota{},
		// 0 in the configuration turns pacing off: negative for the store.
		CompactionShare: cfg.Store.CompactionShare,
		MaxValueBytes:   storeValueBytes(cfg),
	}
	if o.CompactionShare == 0 {
		o.CompactionShare = -1
	}
	if o.DiskReserve == 0 {
		// No reserve, as configured: one byte (the store's 0 is its 64 MiB
		// default, and its -1 also stops reading the free space, which the
		// metrics and the value-log GC's room check need).
		o.DiskReserve = 1
	}
	switch cfg.Store.Durability {
	case config.DurabilityInterval:
		o.Durability = store.DurabilityInterval
	case config.DurabilityNone:
		o.Durability = store.DurabilityNone
	default:
		o.Durability = store.DurabilityAlways
	}
	q := cfg.Store.Quotas
	for name, cq := range map[string]config.Quota{"records": q.Records, "outbox": q.Outbox, "logs": q.Logs, "deadletters": q.Deadletters, "inbox": q.Inbox} {
		sq := store.Quota{MaxBytes: int64(cq.MaxBytes), MaxAge: cq.MaxAge.Std()}
		if cq.Policy == config.PolicyRejectNew {
			sq.Policy = store.RejectNew
		}
		o.Quotas[name] = sq
	}
	o.Quotas[store.SpaceUsage] = store.Quota{MaxAge: q.Usage.MaxAge.Std()}
	o.Quotas[store.SpaceState] = store.Quota{MaxBytes: int64(q.State.MaxBytes), Policy: store.RejectNew}
	if len(cfg.Blobs.Buckets) > 0 {
		o.Buckets = map[string]store.Bucket{}
		for name, b := range cfg.Blobs.Buckets {
			o.Buckets[name] = store.Bucket{MaxSize: int64(b.MaxSize), MaxBytes: int64(b.MaxBytes), MaxAge: b.MaxAge.Std(), Sync: b.Sync}
		}
	}
	return o
}

func functionLimits(cfg *config.Config) luavm.Limits {
	f := cfg.Functions
	return luavm.Limits{Timeout: f.Timeout.Std(), MaxSteps: f.MaxSteps, MaxMemory: int64(f.MaxMemory)}.WithDefaults()
}

func embeddedConfig(cfg *config.Config) mqtt.EmbeddedConfig {
	e := cfg.MQTT.Embedded
	users := make([]mqtt.User, len(e.Users))
	for i, u := range e.Users {
		users[i] = mqtt.User{Username: u.Username, PasswordHash: u.PasswordHash, Publish: u.Publish, Subscribe: u.Subscribe}
	}
	return mqtt.EmbeddedConfig{
		Listen: e.Listen, WebSocketListen: e.WebsocketListen, TLSCert: e.TLS.Cert, TLSKey: e.TLS.Key,
		AllowAnonymous: e.AnonymousAllowed(), Users: users, MaxPayload: int(cfg.MQTT.MaxPayload),
		MaxSessionExpiry: e.MaxSessionExpiry.Std(), MaxInflight: e.MaxInflight, MaxQueuedPerClient: e.MaxQueuedPerClient,
		MaxQueuedBytesPerClient: int64(e.MaxQueuedBytesPerClient), MaxClients: e.MaxClients, MaxUnauthenticated: e.MaxUnauthenticated, MaxUnauthenticatedPerAddress: e.MaxUnauthenticatedPerAddress, MaxRetained: e.MaxRetained, MaxRetainedBytes: int64(e.MaxRetainedBytes),
		MaxSubscriptionsPerClient: e.MaxSubscriptionsPerClient, MaxSessions: e.MaxSessions,
	}
}

func externalConfig(cfg *config.Config) mqtt.ExternalConfig {
	x := cfg.MQTT.External
	id := x.ClientID
	if id == "" {
		id = "moongate-" + cfg.GatewayID
	}
	return mqtt.ExternalConfig{
		Broker: x.Broker, ClientID: id, Username: x.Username, Password: x.Password,
		CAFile: x.TLS.CA, CertFile: x.TLS.Cert, KeyFile: x.TLS.Key, InsecureSkipVerify: x.TLS.InsecureSkipVerify,
		KeepAlive: x.KeepAlive.Std(), MaxPayload: int(cfg.MQTT.MaxPayload),
		SessionFile:   filepath.Join(cfg.DataDir, externalSessionFile),
		MaxPacketSize: int(x.MaxPacketSize),
	}
}

// externalSessionFile, in data_dir, keeps the external broker session's
// epoch (mqtt.ExternalConfig.SessionFile): the redelivery check tells a
// new session's packet ids from the old one's.
const externalSessionFile = "mqtt-broker-session"
