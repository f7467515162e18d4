package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/moongate-edge/moongate/firmware-examples/devsim"
)

// coldIdle is the bench function's idle_timeout in the cold-start scenario;
// the luavm runtime reclaims idle instances once a second, so after
// coldIdle plus two seconds of silence the function has no instance.
const coldIdle = time.Second

// cold measures start-up: process start -> ready, deploy (the function's
// files written into functions_dir) -> first result, the first event after
// the function scaled to zero, and a warm event right after it.
func (r *runner) cold(ctx context.Context) ([]Row, error) {
	row := func(name string, d time.Duration, note string) Row {
		v := ms(d)
		return Row{Scenario: name, Broker: "embedded", QoS: 1, P50: v, P99: v, Max: v, ExactLatency: true, Samples: 1, Note: note}
	}
	var rows []Row
	dir := r.scenarioDir()
	p, err := freePort()
	if err != nil {
		return nil, err
	}
	broker := fmt.Sprintf("127.0.0.1:%d", p)
	mg, err := startMoongate(ctx, r.opts.Binary, dir, fmt.Sprintf("mqtt:\n  embedded: {listen: %q, allow_anonymous: true, %s}\n", broker, embeddedSettings), "")
	if err != nil {
		return nil, err
	}
	if err := mg.run(ctx, r.opts.Binary); err != nil {
		return nil, err
	}
	defer mg.kill()
	st, _ := readProcStats(mg.pid())
	start := row("cold: process start -> ready", mg.ready.Sub(mg.started), "moongate serve, empty store, no function")
	start.RSSIdle = st.RSS
	rows = append(rows, start)

	sub, err := newSubscriber(ctx, broker, "bench-sub", "devices/+/cmd", 1, 0, false)
	if err != nil {
		return rows, err
	}
	defer sub.close()
	// One device publishes 1,000 events/s while the function is deployed.
	t := newTracker("sim-", 0, 1, 1)
	sub.cur.Store(t)
	acked := make(chan struct{}, 1)
	lctx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan error, 1)
	go func() {
		_, err := devsim.Run(lctx, devsim.Config{Broker: "tcp://" + broker, Devices: 1, Rate: 1000, QoS: 1,
			Duration: time.Minute, NoStatus: true, NoCommands: true,
			OnAck: func(a devsim.Ack) {
				t.ack(a.Device, a.Seq, a.Sent)
				select {
				case acked <- struct{}{}:
				default:
				}
			}})
		loadDone <- err
	}()
	defer func() { stopLoad(); <-loadDone }()
	select {
	case <-acked:
	case <-time.After(30 * time.Second):
		return rows, errors.New("cold: no PUBACK from the device")
	}
	deployed := time.Now()
	if err := writeFunction(mg.fnDir, fmt.Sprintf("idle_timeout: %s\nmin_instances: 0\n", coldIdle)); err != nil {
		return rows, err
	}
	for t.last.Load() == 0 {
		if time.Since(deployed) > 30*time.Second {
			return rows, errors.New("cold: no result within 30s of the deploy")
		}
		time.Sleep(time.Millisecond) // polling the tracker, not waiting for a condition we could be told about
	}
	rows = append(rows, row("cold: deploy -> first result", time.Duration(t.last.Load()-deployed.UnixNano()),
		"files written into functions_dir; moongate serve watches it (inotify, settles 2 x 100 ms)"))
	stopLoad()
	<-loadDone
	loadDone <- nil

	// Scale to zero: no event for idle_timeout plus the reclaim period.
	select {
	case <-time.After(coldIdle + 2*time.Second):
	case <-ctx.Done():
		return rows, ctx.Err()
	}
	for i, name := range []string{"cold: first event after scale to zero", "warm: next event (same function)"} {
		one := newTracker("sim-", 10+i, 1, 1)
		sub.cur.Store(one)
		_, err := devsim.Run(ctx, devsim.Config{Broker: "tcp://" + broker, Devices: 1, FirstDevice: 10 + i, Count: 1, QoS: 1,
			NoStatus: true, NoCommands: true, OnAck: func(a devsim.Ack) { one.ack(a.Device, a.Seq, a.Sent) }})
		if err != nil {
			return rows, err
		}
		deadline := time.Now().Add(10 * time.Second)
		for one.pending(true, 0) > 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		o := one.outcome(true)
		if o.missing > 0 || len(o.lat) == 0 {
			return rows, fmt.Errorf("%w: %s: the event's result did not arrive", ErrLoss, name)
		}
		rows = append(rows, row(name, o.lat[0], fmt.Sprintf("publish -> result; idle_timeout %s", coldIdle)))
	}
	return rows, mg.stop()
}
