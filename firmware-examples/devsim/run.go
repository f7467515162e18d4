package devsim

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Report is the outcome of a Run. Counters cover the whole fleet.
type Report struct {
	Devices int `json:"devices"`
	// Connected is the number of devices that connected at least once.
	Connected int `json:"connected"`
	// Sent counts telemetry messages written to the broker (first sends);
	// Resent the retransmissions (DUP) after a reconnect.
	Sent   uint64 `json:"sent"`
	Resent uint64 `json:"resent"`
	// Acked counts QoS 1 messages whose PUBACK arrived; Unacked those still
	// waiting when the device stopped (lost from the device's point of
	// view: the broker may still have them).
	Acked   uint64 `json:"acked"`
	Unacked uint64 `json:"unacked"`
	// CommandsReceived counts messages received on the devices' cmd topics.
	CommandsReceived uint64 `json:"commands_received"`
	// Reconnects counts successful connections after a device's first;
	// ConnectFailures failed connection attempts.
	Reconnects      uint64 `json:"reconnects"`
	ConnectFailures uint64 `json:"connect_failures"`
	// Errors counts failures of established connections (write errors,
	// protocol errors, connection lost); LastError is the latest one.
	Errors    uint64 `json:"errors"`
	LastError string `json:"last_error,omitempty"`
	// Elapsed is the wall time of the run, Rate the acknowledged (QoS 1)
	// or sent (QoS 0) messages per second over it.
	Elapsed time.Duration `json:"elapsed_ns"`
	Rate    float64       `json:"rate_per_s"`
	// Latency is first send to PUBACK of QoS 1 messages.
	Latency Latency `json:"ack_latency"`
}

// String renders the report as a few lines of text.
func (r *Report) String() string {
	s := fmt.Sprintf("devices %d (connected %d) in %v\n", r.Devices, r.Connected, r.Elapsed.Round(time.Millisecond))
	s += fmt.Sprintf("sent %d, resent %d, acked %d, unacked %d (%.0f msg/s)\n", r.Sent, r.Resent, r.Acked, r.Unacked, r.Rate)
	s += fmt.Sprintf("commands received %d, reconnects %d, connect failures %d, errors %d\n",
		r.CommandsReceived, r.Reconnects, r.ConnectFailures, r.Errors)
	if r.Latency.Count > 0 {
		s += fmt.Sprintf("ack latency ms: p50 %.2f p90 %.2f p99 %.2f max %.2f (%d samples)\n",
			r.Latency.P50, r.Latency.P90, r.Latency.P99, r.Latency.Max, r.Latency.Count)
	}
	if r.LastError != "" {
		s += "last error: " + r.LastError + "\n"
	}
	return s
}

// fleet is the shared state of one Run.
type fleet struct {
	cfg     Config
	addr    string
	limiter limiter
	hist    histogram

	sent, resent, acked, unacked, commands atomic.Uint64
	reconnects, connFailures, errors       atomic.Uint64
	connected                              atomic.Int64

	errMu   sync.Mutex
	lastErr string
}

func (f *fleet) fail(device string, err error) {
	f.errors.Add(1)
	f.errMu.Lock()
	f.lastErr = device + ": " + err.Error()
	f.errMu.Unlock()
	f.cfg.Logger.Debug("devsim: connection error", "device", device, "err", err)
}

// Run simulates the fleet until every device has published its Count or
// its Duration has passed (then waited for its PUBACKs and lingered), or
// until ctx ends. Ending ctx stops the run early and is not an error: the
// report covers what happened until then. Run returns an error wrapping
// ErrConfig for an invalid Config and ErrNoDevice when no device could
// connect at all. Run may be called concurrently with other Runs.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	addr, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	f := &fleet{cfg: cfg, addr: addr, limiter: limiter{every: time.Duration(float64(time.Second) / cfg.ConnectRate)}}
	start := time.Now()
	var wg sync.WaitGroup
	for i := range cfg.Devices {
		name := fmt.Sprintf("%s%05d", cfg.DevicePrefix, cfg.FirstDevice+i)
		d := newDevice(f, name)
		wg.Go(func() { d.run(ctx, start) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	r := &Report{
		Devices: cfg.Devices, Connected: int(f.connected.Load()),
		Sent: f.sent.Load(), Resent: f.resent.Load(), Acked: f.acked.Load(), Unacked: f.unacked.Load(),
		CommandsReceived: f.commands.Load(), Reconnects: f.reconnects.Load(),
		ConnectFailures: f.connFailures.Load(), Errors: f.errors.Load(), LastError: f.lastErr,
		Elapsed: elapsed, Latency: f.hist.summary(),
	}
	done := r.Sent
	if cfg.QoS == 1 {
		done = r.Acked
	}
	if s := elapsed.Seconds(); s > 0 {
		r.Rate = math.Round(float64(done)/s*10) / 10
	}
	cfg.Logger.Info("devsim: run finished", "devices", r.Devices, "sent", r.Sent, "acked", r.Acked,
		"commands", r.CommandsReceived, "reconnects", r.Reconnects, "elapsed", elapsed)
	if r.Connected == 0 && cfg.Devices > 0 && ctx.Err() == nil {
		return r, fmt.Errorf("%w: %s", ErrNoDevice, r.LastError)
	}
	return r, nil
}

// limiter spaces connection attempts of the whole fleet. Safe for
// concurrent use.
type limiter struct {
	mu    sync.Mutex
	next  time.Time
	every time.Duration
}

// wait blocks until the caller's turn, or ctx ends.
func (l *limiter) wait(ctx context.Context) error {
	l.mu.Lock()
	now := time.Now()
	t := l.next
	if t.Before(now) {
		t = now
	}
	l.next = t.Add(l.every)
	l.mu.Unlock()
	return sleep(ctx, time.Until(t))
}

// sleep waits d or until ctx ends (then it returns ctx's error).
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
