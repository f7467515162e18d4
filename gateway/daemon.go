package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/moongate-edge/moongate/gateway/apiserver"
	"github.com/moongate-edge/moongate/gateway/config"
	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
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
	httpSrv *http.Server
	mqttURL string
	mgr     manager // serialises API function changes (manage.go)
	api     *apiserver.Server
	syncState

	// FunctionsPoll is how often the functions directory is checked for
	// changes (default 2s).
	FunctionsPoll time.Duration
}

// NewDaemon opens the store and builds every part; nothing listens yet
// except the HTTP endpoint (bound so that its address is known).
func NewDaemon(ctx context.Context, cfg *config.Config, log *slog.Logger) (*Daemon, error) {
	if log == nil {
		log = slog.Default()
	}
	d := &Daemon{cfg: cfg, log: log, FunctionsPoll: 2 * time.Second}
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
		e, err := mqtt.NewEmbedded(embeddedConfig(cfg), log)
		if err != nil {
			return fail(fmt.Errorf("mqtt: %w", err))
		}
		d.ingest = e
	}
	gw, err := New(Options{
		Store:           st,
		Runtime:         d.rt,
		Ingest:          d.ingest,
		Logger:          log,
		Workers:         cfg.Pipeline.Workers,
		InboxLimit:      cfg.Pipeline.InboxLimit,
		MaxBacklogBytes: int64(cfg.Pipeline.InboxBytes),
		MaxHops:         cfg.Pipeline.MaxHops,
		MaxPayload:      int(cfg.MQTT.MaxPayload),
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
		d.httpLn = ln
		api, err := d.newAPI()
		if err != nil {
			return fail(fmt.Errorf("api: %w", err))
		}
		d.api = api
		// One port for REST, gRPC and health: HTTP/2 for gRPC comes from
		// ALPN with TLS, or unencrypted HTTP/2 (prior knowledge) without.
		var protos http.Protocols
		protos.SetHTTP1(true)
		d.httpSrv = &http.Server{Handler: api.Handler(), ReadHeaderTimeout: 10 * time.Second, Protocols: &protos}
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

// Gateway returns the daemon's gateway.
func (d *Daemon) Gateway() *Gateway { return d.gw }

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
		if !d.gw.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready")
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
	if dir := d.cfg.FunctionsDir; dir != "" {
		// The directory is the whole set of functions; each new or changed
		// one is also kept in the store as a new version.
		load := func(fns []trigger.Function, errs []error) {
			for _, err := range errs {
				d.log.Error("function not loaded", "err", err)
			}
			if err := d.gw.SetFunctions(ctx, d.versioned(ctx, fns)); err != nil {
				d.log.Error("functions", "err", err)
			}
		}
		load(trigger.LoadDir(dir))
		go trigger.Watch(ctx, dir, d.FunctionsPoll, load)
	} else if err := d.gw.SetFunctions(ctx, d.storedFunctions(ctx)); err != nil {
		d.log.Error("functions", "err", err)
	}
	if d.httpSrv != nil {
		go func() {
			var err error
			if d.httpSrv.TLSConfig != nil {
				err = d.httpSrv.ServeTLS(d.httpLn, "", "")
			} else {
				err = d.httpSrv.Serve(d.httpLn)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("api server", "err", err)
			}
		}()
		d.log.Info("api listening", "addr", d.httpLn.Addr().String())
	}
	return d.gw.Run(ctx)
}

// versioned builds the functions loaded from the directory, storing each
// new or changed one as the next active version.
func (d *Daemon) versioned(ctx context.Context, fns []trigger.Function) []*Function {
	out := make([]*Function, 0, len(fns))
	for i := range fns {
		tf := &fns[i]
		f, err := FunctionFromManifest(tf, d.cfg)
		if err != nil {
			d.log.Error("function not loaded", "function", tf.Manifest.Name, "err", err)
			continue
		}
		cur, err := d.store.GetFunction(ctx, f.Name, 0)
		switch {
		case err == nil && cur.SHA256 == tf.SHA256:
			f.Version = cur.Version
		case err == nil || errors.Is(err, store.ErrNotFound):
			manifest, rerr := os.ReadFile(tf.ManifestPath)
			if rerr != nil {
				d.log.Error("function not loaded", "function", f.Name, "err", rerr)
				continue
			}
			v, perr := d.store.PutFunction(ctx, store.FunctionRecord{Name: f.Name, Source: tf.Source, Manifest: manifest, SHA256: tf.SHA256, Active: true})
			if perr != nil {
				d.log.Error("function not stored", "function", f.Name, "err", perr)
				continue
			}
			f.Version = v
		default:
			d.log.Error("function not loaded", "function", f.Name, "err", err)
			continue
		}
		out = append(out, f)
	}
	return out
}

// storedFunctions builds the active versions kept in the store.
func (d *Daemon) storedFunctions(ctx context.Context) []*Function {
	recs, err := d.store.ListFunctions(ctx)
	if err != nil {
		d.log.Error("list stored functions", "err", err)
		return nil
	}
	var out []*Function
	for _, r := range recs {
		if !r.Active {
			continue
		}
		m, err := trigger.ParseManifest(r.Name+".yaml", r.Manifest)
		if err != nil {
			d.log.Error("stored function not loaded", "function", r.Name, "version", r.Version, "err", err)
			continue
		}
		m.Name = r.Name
		f, err := FunctionFromManifest(&trigger.Function{Manifest: m, Source: r.Source, SHA256: r.SHA256}, d.cfg)
		if err != nil {
			d.log.Error("stored function not loaded", "function", r.Name, "err", err)
			continue
		}
		f.Version = r.Version
		// A rollback to an identical older version still switches versions.
		f.Fingerprint = r.SHA256 + "@" + strconv.FormatInt(r.Version, 10)
		out = append(out, f)
	}
	return out
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

func storeOptions(cfg *config.Config, log *slog.Logger) store.Options {
	o := store.Options{
		Dir:          cfg.DataDir,
		Profile:      store.Profile(cfg.Store.Profile),
		SyncInterval: cfg.Store.SyncInterval.Std(),
		GatewayID:    cfg.GatewayID,
		DiskReserve:  int64(cfg.Store.DiskReserve),
		Logger:       log,
		Quotas:       map[string]store.Quota{},
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
	if len(cfg.Blobs.Buckets) > 0 {
		o.Buckets = map[string]store.Bucket{}
		for name, b := range cfg.Blobs.Buckets {
			o.Buckets[name] = store.Bucket{MaxSize: int64(b.MaxSize), MaxBytes: int64(b.MaxBytes), MaxAge: b.MaxAge.Std()}
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
		MaxClients: e.MaxClients,
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
		KeepAlive: x.KeepAlive.Std(),
	}
}
