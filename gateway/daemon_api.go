package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"sort"
	"sync"
	"time"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"github.com/moongate-edge/moongate/gateway/apiserver"
	"github.com/moongate-edge/moongate/gateway/config"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// Version is the moongate version the API reports (GetSystemStatus). The
// main package sets it before NewDaemon.
var Version = "dev"

// SyncStatusFunc reports the upstream sync targets for the API. NewDaemon
// sets it to the status of its sync manager.
type SyncStatusFunc func(ctx context.Context) ([]apiserver.SyncTarget, error)

// daemonSync forwards to the daemon's current sync status source.
type daemonSync struct{ d *Daemon }

func (s daemonSync) SyncStatus(ctx context.Context) ([]apiserver.SyncTarget, error) {
	s.d.syncMu.RLock()
	f := s.d.syncStatus
	s.d.syncMu.RUnlock()
	if f == nil {
		return nil, nil
	}
	return f(ctx)
}

// SetSyncStatus sets what the API reports as the sync status (nil: no
// targets). Safe for concurrent use.
func (d *Daemon) SetSyncStatus(f SyncStatusFunc) {
	d.syncMu.Lock()
	d.syncStatus = f
	d.syncMu.Unlock()
}

// syncState is the daemon's sync status source for the API.
type syncState struct {
	syncMu     sync.RWMutex
	syncStatus SyncStatusFunc
}

// newAPI builds the management API server on the daemon.
// apiStore is the store as the API uses it, except that state written
// through the API is written like a function's own change: functions with
// a state trigger on it run.
type apiStore struct {
	*store.Store
	gw *Gateway
}

func (a apiStore) PutState(ctx context.Context, function, key string, value []byte) error {
	return a.gw.WriteState(ctx, store.StateChange{Function: function, Op: store.StateSet, Key: key, Value: value})
}

func (a apiStore) DeleteState(ctx context.Context, function, key string) error {
	return a.gw.WriteState(ctx, store.StateChange{Function: function, Op: store.StateDelete, Key: key})
}

func (d *Daemon) newAPI() (*apiserver.Server, error) {
	tokens := make([]apiserver.Token, 0, len(d.cfg.API.Tokens))
	for _, t := range d.cfg.API.Tokens {
		sc, err := apiserver.ParseScope(t.Scope)
		if err != nil {
			return nil, fmt.Errorf("api.tokens %s: %w", t.Name, err)
		}
		tokens = append(tokens, apiserver.Token{Name: t.Name, Scope: sc, Hash: t.Hash})
	}
	return apiserver.New(apiserver.Config{
		Store:             apiStore{Store: d.store, gw: d.gw},
		Functions:         apiBackend{d},
		Sync:              daemonSync{d},
		Blobs:             blobBackend{d},
		Tokens:            tokens,
		MaxBodyBytes:      int64(d.cfg.API.MaxBodyBytes),
		UploadReadTimeout: d.cfg.Blobs.UploadReadTimeout.Std(),
		Health:            d.Handler(),
		Metrics:           d.metrics,
		System: apiserver.SystemInfo{Version: Version, GatewayID: d.cfg.GatewayID, DataDir: d.cfg.DataDir, Counters: func() *v1.GatewayCounters {
			st := d.gw.Stats()
			return &v1.GatewayCounters{Received: st.Received, Processed: st.Processed, Failed: st.Failed, DeadLettered: st.DeadLettered,
				Published: st.Published, Backlog: int64(st.Backlog), Functions: int32(len(d.gw.Functions())), Ready: d.Ready() == nil}
		}},
		Logger: d.log,
	})
}

// apiTLS loads the API's certificate pair.
func apiTLS(t config.TLS) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
	if err != nil {
		return nil, fmt.Errorf("api tls: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}, nil
}

// metrics are the daemon's samples for /metrics.
func (d *Daemon) metrics() []apiserver.Metric {
	gs := d.gw.Stats()
	var out []apiserver.Metric
	counter := func(name, help string, v uint64) {
		out = append(out, apiserver.Metric{Name: name, Help: help, Type: "counter", Value: float64(v)})
	}
	gauge := func(name, help string, v float64, labels ...[2]string) {
		out = append(out, apiserver.Metric{Name: name, Help: help, Type: "gauge", Value: v, Labels: labels})
	}
	counter("moongate_messages_received_total", "MQTT messages handed over by the broker side.", gs.Received)
	counter("moongate_messages_unmatched_total", "Messages no function wanted.", gs.Unmatched)
	counter("moongate_messages_rejected_total", "Messages dead-lettered at intake (oversize, invalid topic).", gs.Rejected)
	counter("moongate_messages_redelivered_total", "MQTT redeliveries of messages already accepted.", gs.Redelivered)
	counter("moongate_inbox_enqueued_total", "Inbox entries written.", gs.Enqueued)
	counter("moongate_invocations_committed_total", "Invocations committed.", gs.Processed)
	counter("moongate_invocations_failed_total", "Invocation attempts that failed.", gs.Failed)
	counter("moongate_dead_letters_total", "Events that went to the dead letters.", gs.DeadLettered)
	counter("moongate_duplicates_total", "Inbox entries found already consumed.", gs.Duplicates)
	counter("moongate_publishes_total", "Local publishes carried out.", gs.Published)
	counter("moongate_publish_retries_total", "Failed tries of local publishes kept for another try (broker away or not answering).", gs.PublishRetries)
	gauge("moongate_backlog", "Events queued or running.", float64(gs.Backlog))
	fb := d.gw.FunctionBacklogs()
	for _, fn := range slices.Sorted(maps.Keys(fb)) {
		gauge("moongate_function_backlog", "Events of one function queued or running (at most pipeline.function_backlog; at it, intake of its events waits).",
			float64(fb[fn]), [2]string{"function", fn})
	}
	if d.httpLim != nil {
		counter("moongate_api_connections_shed_total", "API connections closed unread because api.max_connections were open.", d.httpLim.Shed())
	}
	if in, ok := d.ingest.(interface{ Stats() mqtt.Stats }); ok {
		ms := in.Stats()
		counter("moongate_mqtt_received_total", "Publishes received from devices (or the external broker).", ms.Received)
		counter("moongate_mqtt_ignored_total", "Publishes that matched no function's trigger (only routed to subscribers).", ms.Ignored)
		for _, r := range []struct {
			reason string
			n      uint64
		}{{"oversize", ms.RejectedOversize}, {"invalid_topic", ms.RejectedInvalidTopic}, {"unauthorized", ms.RejectedUnauthorized}, {"not_accepted", ms.RejectedHandler}} {
			out = append(out, apiserver.Metric{Name: "moongate_mqtt_rejected_total", Help: "Publishes refused, by reason.", Type: "counter",
				Value: float64(r.n), Labels: [][2]string{{"reason", r.reason}}})
		}
		counter("moongate_mqtt_auth_failures_total", "Connections refused for bad credentials (embedded broker).", ms.AuthFailures)
		counter("moongate_mqtt_connections_shed_total", "Connections turned away before they logged in because the broker was busy: closed unread (max_unauthenticated connections already waiting, or max_unauthenticated_per_address from the same address) or refused after waiting too long for a password check (embedded broker).", ms.ConnectionsShed)
		counter("moongate_mqtt_sessions_evicted_total", "Persistent sessions of offline devices discarded before they expired to make room for a new client id (max_sessions; embedded broker).", ms.SessionsEvicted)
		counter("moongate_mqtt_retained_refused_total", "Retained publishes delivered but not retained: max_retained topics hold one (embedded broker).", ms.RetainedRefused)
		counter("moongate_mqtt_reconnects_total", "Reconnections to the external broker.", ms.Reconnects)
		counter("moongate_mqtt_retained_replays_total", "Retained messages the external broker replayed because moongate subscribed, acknowledged and not run (they ran when published).", ms.RetainedReplays)
		counter("moongate_mqtt_dropped_qos0_total", "QoS 0 messages dropped under load (external broker).", ms.DroppedQoS0)
		counter("moongate_mqtt_clipped_total", "Payloads over max_payload cut as they were read, the rest never held, then dead-lettered (external broker; a redelivered one counts again).", ms.Clipped)
		if _, embedded := d.ingest.(*mqtt.Embedded); embedded {
			gauge("moongate_mqtt_clients_connected", "Clients connected to the embedded broker.", float64(ms.ClientsConnected))
			gauge("moongate_mqtt_sessions", "Sessions the embedded broker holds, persistent sessions of offline devices included.", float64(ms.Sessions))
			gauge("moongate_mqtt_retained", "Topics holding a retained message (bounded by max_retained).", float64(ms.Retained))
			gauge("moongate_mqtt_inflight", "QoS 1/2 messages queued or in flight to clients.", float64(ms.Inflight))
			counter("moongate_mqtt_messages_dropped_total", "Messages the embedded broker dropped for clients too slow or too far behind (max_queued_per_client, max_queued_bytes_per_client).", uint64(max(ms.MessagesDropped, 0)))
		}
	}
	gauge("moongate_functions", "Functions deployed.", float64(len(d.gw.Functions())))
	ready := 0.0
	if d.Ready() == nil {
		ready = 1
	}
	gauge("moongate_ready", "1 when the gateway takes events.", ready)
	ss := d.store.Stats()
	names := make([]string, 0, len(ss.Spaces))
	for n := range ss.Spaces {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		gauge("moongate_store_entries", "Live entries per key space.", float64(ss.Spaces[n].Count), [2]string{"space", n})
	}
	for _, n := range names {
		gauge("moongate_store_bytes", "Stored value bytes per key space (approximate).", float64(ss.Spaces[n].Bytes), [2]string{"space", n})
	}
	for _, n := range names {
		out = append(out, apiserver.Metric{Name: "moongate_store_dropped_total", Help: "Entries dropped by quota or age per key space.", Type: "counter",
			Value: float64(ss.Spaces[n].Drops), Labels: [][2]string{{"space", n}}})
	}
	full := 0.0
	if ss.DiskFull {
		full = 1
	}
	gauge("moongate_store_disk_full", "1 when writes stopped for lack of disk space.", full)
	gauge("moongate_store_free_bytes", "Free bytes on the data directory's file system.", float64(ss.FreeBytes))
	counter("moongate_store_commits_total", "Group commits (one per sync in durability always).", uint64(ss.Batches))
	counter("moongate_store_commit_writes_total", "Write requests committed; divided by the commits, the mean group size.", uint64(ss.Writes))
	counter("moongate_store_syncs_total", "Syncs of the write-ahead log and value log to disk.", uint64(ss.Syncs))
	seconds := func(name, help string, d time.Duration) {
		out = append(out, apiserver.Metric{Name: name, Help: help, Type: "counter", Value: d.Seconds()})
	}
	seconds("moongate_store_commit_busy_seconds_total", "Time the group committer spent on batches (applying writes, Badger's commit, the sync); its rate is the fraction of time it was busy: near 1, writes queue for the disk.", ss.CommitBusy)
	seconds("moongate_store_txn_commit_seconds_total", "Part of moongate_store_commit_busy_seconds_total spent in Badger's commit (write-ahead log, memtable inserts and, in durability always, the sync).", ss.TxnCommitTime)
	seconds("moongate_store_write_wait_seconds_total", "Time committed writes waited from submission until released (durable in durability always, committed otherwise), summed; divided by moongate_store_commit_writes_total, the mean wait of a write (an event waits for two: its inbox entry and its processing commit).", ss.WriteWait)
	gauge("moongate_store_lsm_bytes", "Size of the LSM tree.", float64(ss.LSMBytes))
	gauge("moongate_store_vlog_bytes", "Size of the value log.", float64(ss.VLogBytes))
	bs := d.store.BlobStats()
	buckets := make([]string, 0, len(bs))
	for n := range bs {
		buckets = append(buckets, n)
	}
	sort.Strings(buckets)
	for _, n := range buckets {
		gauge("moongate_blobs", "Blobs stored per bucket.", float64(bs[n].Count), [2]string{"bucket", n})
	}
	for _, n := range buckets {
		gauge("moongate_blob_bytes", "Bytes of the blobs stored per bucket (each blob counted, shared contents too).", float64(bs[n].Bytes), [2]string{"bucket", n})
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	gauge("moongate_go_heap_inuse_bytes", "Go heap in use.", float64(ms.HeapInuse))
	gauge("moongate_go_goroutines", "Goroutines.", float64(runtime.NumGoroutine()))
	limit := debug.SetMemoryLimit(-1)
	if limit == math.MaxInt64 {
		limit = 0
	}
	gauge("moongate_go_memory_limit_bytes", "Soft memory limit of the Go runtime (memory_limit or GOMEMLIMIT); 0 = none.", float64(limit))
	rs := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(rs)
	if rs[0].Value.Kind() == metrics.KindUint64 {
		gauge("moongate_go_heap_live_bytes", "Go heap live after the last garbage collection.", float64(rs[0].Value.Uint64()))
	}
	if rs[1].Value.Kind() == metrics.KindFloat64 {
		out = append(out, apiserver.Metric{Name: "moongate_go_gc_cpu_seconds_total", Help: "Processor time of garbage collection (the runtime's estimate).",
			Type: "counter", Value: rs[1].Value.Float64()})
	}
	return out
}

// apiBackend adapts the daemon to apiserver.Functions.
type apiBackend struct{ d *Daemon }

// apiErr maps the gateway's errors to the API's.
func apiErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrFunctionsDir):
		return apiserver.Wrap(apiserver.ErrFailedPrecondition, fmt.Errorf("%w (change the files in the directory instead)", err))
	case errors.Is(err, ErrInvalidFunction), errors.Is(err, ErrBadEvent):
		return apiserver.Wrap(apiserver.ErrInvalidArgument, err)
	case errors.Is(err, ErrNoFunction), errors.Is(err, store.ErrNotFound):
		return apiserver.Wrap(apiserver.ErrNotFound, err)
	case errors.Is(err, ErrStopped):
		return apiserver.Wrap(apiserver.ErrUnavailable, err)
	case errors.Is(err, ErrChainBudget):
		return apiserver.Wrap(apiserver.ErrFailedPrecondition, err)
	}
	return err
}

func (b apiBackend) Deploy(ctx context.Context, name string, manifest, source []byte, dryRun bool) (store.FunctionRecord, bool, error) {
	r, err := b.d.DeployFunction(ctx, DeployRequest{Name: name, Manifest: manifest, Source: source, DryRun: dryRun})
	return r.Function, r.Unchanged, apiErr(err)
}

func (b apiBackend) Rollback(ctx context.Context, name string, version int64) (store.FunctionRecord, error) {
	r, err := b.d.RollbackFunction(ctx, name, version)
	return r, apiErr(err)
}

func (b apiBackend) Delete(ctx context.Context, name string) (int, error) {
	n, err := b.d.DeleteFunction(ctx, name)
	return n, apiErr(err)
}

func (b apiBackend) Running(name string) (apiserver.RunningFunction, bool) {
	f := b.d.gw.Lookup(name)
	if f == nil {
		return apiserver.RunningFunction{}, false
	}
	return apiserver.RunningFunction{Version: f.Version, HTTPMethods: f.HTTPMethods}, true
}

func (b apiBackend) Invoke(ctx context.Context, name string, ev *luavm.Event, commit bool, accept func(*luavm.Result) error) (apiserver.Invocation, error) {
	r, err := b.d.gw.Invoke(ctx, name, ev, commit, accept)
	if err != nil {
		return apiserver.Invocation{}, apiErr(err)
	}
	return apiserver.Invocation{Result: r.Result, Err: r.Err, Committed: r.Committed, EventID: r.EventID}, nil
}

func (b apiBackend) Requeue(ctx context.Context, function, key string, event []byte, deadLetter uint64) error {
	return apiErr(b.d.gw.Requeue(ctx, function, key, event, deadLetter))
}

func (b apiBackend) DecodeEvent(e []byte) (*luavm.Event, error) {
	ev, err := DecodeEvent(e)
	return ev, apiErr(err)
}

func (b apiBackend) Committed() <-chan struct{} { return b.d.gw.Committed() }

// blobBackend serves the API's blob calls: reads from the store, uploads
// through the gateway (which runs the functions they trigger).
type blobBackend struct{ d *Daemon }

func (b blobBackend) PutBlob(ctx context.Context, bucket, name, contentType string, body io.Reader) (store.BlobInfo, error) {
	return b.d.gw.PutBlob(ctx, bucket, name, contentType, body)
}

func (b blobBackend) StatBlob(ctx context.Context, bucket, name string) (store.BlobInfo, error) {
	return b.d.store.StatBlob(ctx, bucket, name)
}

func (b blobBackend) OpenBlob(ctx context.Context, bucket, name string) (*store.Blob, error) {
	return b.d.store.OpenBlob(ctx, bucket, name)
}

func (b blobBackend) ListBlobs(ctx context.Context, bucket, prefix string, limit int, cursor string) ([]store.BlobInfo, string, error) {
	return b.d.store.ListBlobs(ctx, bucket, prefix, limit, cursor)
}

func (b blobBackend) DeleteBlob(ctx context.Context, bucket, name string) error {
	return b.d.store.DeleteBlob(ctx, bucket, name)
}
