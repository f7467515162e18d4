package devsim

import (
	"context"
	"errors"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// message is a QoS 1 publish awaiting its PUBACK. seq 0 marks a status
// message (not telemetry).
type message struct {
	id      uint16
	seq     uint64
	sent    time.Time
	payload []byte
	resent  int
	acked   chan struct{} // closed by the PUBACK when not nil
}

// session is one connection and its reader.
type session struct {
	c       *conn
	lost    chan struct{} // closed when the reader stops
	closing atomic.Bool   // closed by us: not an error
}

// device is one simulated device. Its publisher runs in run; its reader in
// one goroutine per connection.
type device struct {
	f                                *fleet
	name, clientID                   string
	telemetry, cmdTopic, statusTopic string
	username, password               string
	phase                            float64
	seq                              uint64
	connectedOnce                    bool
	failures                         int
	connectedAt                      time.Time // the current (or last) connection's CONNACK
	cur                              *session
	lastWrite                        atomic.Int64 // unix nanos
	lastRead, lastPing               atomic.Int64 // unix nanos
	room                             chan struct{}
	mu                               sync.Mutex // guards inflight and nextID
	inflight                         []*message // in send order
	nextID                           uint16
	buf                              []byte
	// giveUp ends connection attempts: the end of the publishing phase.
	giveUp time.Time
}

func newDevice(f *fleet, name string) *device {
	c := &f.cfg
	h := fnv.New32a()
	h.Write([]byte(name))
	return &device{
		f: f, name: name, clientID: c.ClientIDPrefix + name,
		telemetry:   c.TopicPrefix + "/" + name + "/telemetry",
		cmdTopic:    c.TopicPrefix + "/" + name + "/cmd",
		statusTopic: c.TopicPrefix + "/" + name + "/status",
		username:    strings.ReplaceAll(c.Username, "{device}", name),
		password:    strings.ReplaceAll(c.Password, "{device}", name),
		phase:       float64(h.Sum32()%3600) / 3600 * 2 * math.Pi,
		room:        make(chan struct{}, 1),
	}
}

// wait outcomes.
const (
	evTime = iota // until reached
	evWake        // wake signalled
	evLost        // connection lost
	evDone        // ctx ended
)

var forever = time.Unix(1<<40, 0)

// subscribeID is the packet id of the SUBSCRIBE; publishes never use it.
const subscribeID = 65535

// wait blocks until until, a signal on wake, the loss of the connection or
// the end of ctx, sending PINGREQs while the connection is idle.
func (d *device) wait(ctx context.Context, until time.Time, wake <-chan struct{}) int {
	s := d.cur
	ping := d.f.cfg.KeepAlive / 2
	for {
		now := time.Now()
		if !now.Before(until) {
			return evTime
		}
		// A PINGREQ is due when nothing was written, or nothing read, for
		// half a keep-alive (and none was sent since): a QoS 0 device that
		// publishes all the time reads nothing back, and its reader's
		// deadline (1.5 keep-alives without a byte) dropped a healthy
		// connection every 45 s.
		due := d.pingDue(now, ping)
		t := time.NewTimer(min(until.Sub(now), max(due.Sub(now), time.Millisecond)))
		select {
		case <-ctx.Done():
			t.Stop()
			return evDone
		case <-s.lost:
			t.Stop()
			return evLost
		case <-wake:
			t.Stop()
			return evWake
		case <-t.C:
			if now := time.Now(); !now.Before(d.pingDue(now, ping)) {
				d.lastPing.Store(now.UnixNano())
				d.send(s, &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
			}
		}
	}
}

// pingDue is when the next PINGREQ is due: half a keep-alive (ping) after
// the older of the last write and the last read, but not within ping of
// the last PINGREQ.
func (d *device) pingDue(now time.Time, ping time.Duration) time.Time {
	quiet := time.Unix(0, min(d.lastWrite.Load(), d.lastRead.Load())).Add(ping)
	if next := time.Unix(0, d.lastPing.Load()).Add(ping); next.After(quiet) {
		return next
	}
	return quiet
}

// send writes pk; on failure it closes the connection so that the reader
// reports the loss.
func (d *device) send(s *session, pk *packets.Packet) bool {
	if err := s.c.write(pk); err != nil {
		s.c.close()
		return false
	}
	d.lastWrite.Store(time.Now().UnixNano())
	return true
}

// run is the device's life: connect, publish, wait for acks, linger,
// disconnect.
func (d *device) run(ctx context.Context, start time.Time) {
	cfg := &d.f.cfg
	defer d.finish()
	interval := time.Duration(float64(time.Second) / cfg.Rate)
	end := forever
	if cfg.Duration > 0 {
		end = start.Add(cfg.Duration)
	}
	d.giveUp = end
	if !d.connect(ctx) {
		return
	}
	// Spread the first messages of the fleet over one interval.
	next := start.Add(time.Duration(rand.Int64N(int64(interval) + 1)))
	for cfg.Count == 0 || d.seq < uint64(cfg.Count) {
		if !time.Now().Before(end) {
			break
		}
		until := next
		if end.Before(until) {
			until = end
		}
		switch d.wait(ctx, until, nil) {
		case evDone:
			return
		case evLost:
			if !d.reconnect(ctx) {
				return
			}
			continue
		}
		if !time.Now().Before(end) {
			break
		}
		if cfg.QoS == 1 && d.inflightLen() >= cfg.MaxInflight {
			switch d.wait(ctx, end, d.room) {
			case evDone:
				return
			case evLost:
				if !d.reconnect(ctx) {
					return
				}
			}
			continue
		}
		d.publish()
		now := time.Now()
		step := interval
		if cfg.Jitter > 0 {
			step = time.Duration(float64(interval) * (1 + cfg.Jitter*(2*rand.Float64()-1)))
		}
		next = next.Add(step)
		if next.Before(now.Add(-interval)) {
			next = now // after an outage: resume the schedule, no burst
		}
	}
	// Wait for the last PUBACKs, then linger for commands.
	ackBy := time.Now().Add(cfg.AckTimeout)
	d.giveUp = ackBy
	for d.inflightTelemetry() > 0 && time.Now().Before(ackBy) {
		switch d.wait(ctx, ackBy, d.room) {
		case evDone:
			return
		case evLost:
			if !d.reconnect(ctx) {
				return
			}
		}
	}
	lingerUntil := time.Now().Add(cfg.Linger)
	d.giveUp = lingerUntil
	for time.Now().Before(lingerUntil) {
		switch d.wait(ctx, lingerUntil, nil) {
		case evDone:
			return
		case evLost:
			if !d.reconnect(ctx) {
				return
			}
		}
	}
}

// payloadFor builds the telemetry of message seq.
func (d *device) payloadFor(seq uint64, now time.Time) []byte {
	x := 2*math.Pi*float64(seq)/120 + d.phase
	p := Payload{Seq: seq, TS: now.UnixMilli(),
		Temp: math.Round((22+6*math.Sin(x)+rand.Float64()-0.5)*100) / 100,
		Hum:  math.Round((45+15*math.Cos(x)+rand.Float64()-0.5)*100) / 100}
	b := appendPayload(d.buf[:0], &p)
	if want := d.f.cfg.PayloadBytes; len(b) < want {
		n := max(want-len(b)-len(`,"pad":""`), 1)
		p.Pad = strings.Repeat("x", n)
		b = appendPayload(b[:0], &p)
	}
	d.buf = b
	return append([]byte(nil), b...)
}

// publish sends the next telemetry message.
func (d *device) publish() {
	cfg := &d.f.cfg
	d.seq++
	now := time.Now()
	payload := d.payloadFor(d.seq, now)
	pk := &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: cfg.QoS},
		TopicName: d.telemetry, Payload: payload}
	if cfg.QoS == 1 {
		m := &message{seq: d.seq, sent: now, payload: payload}
		d.mu.Lock()
		m.id = d.allocID()
		d.inflight = append(d.inflight, m)
		d.mu.Unlock()
		pk.PacketID = m.id
	}
	// A failed write leaves a QoS 1 message in flight: it is resent after
	// the reconnect. A QoS 0 message is lost, as on a real device.
	if d.send(d.cur, pk) || cfg.QoS == 1 {
		d.f.sent.Add(1)
		if cfg.OnSend != nil {
			cfg.OnSend(d.name, d.seq, now)
		}
	}
}

// allocID returns a free packet id; d.mu must be held.
func (d *device) allocID() uint16 {
	for {
		d.nextID++
		if d.nextID == 0 || d.nextID == subscribeID {
			d.nextID = 1
		}
		free := true
		for _, m := range d.inflight {
			if m.id == d.nextID {
				free = false
				break
			}
		}
		if free {
			return d.nextID
		}
	}
}

func (d *device) inflightLen() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.inflight)
}

func (d *device) inflightTelemetry() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, m := range d.inflight {
		if m.seq != 0 {
			n++
		}
	}
	return n
}

// acked handles a PUBACK (reader goroutine).
func (d *device) acked(id uint16) {
	d.mu.Lock()
	var m *message
	for i, x := range d.inflight {
		if x.id == id {
			m = x
			d.inflight = append(d.inflight[:i], d.inflight[i+1:]...)
			break
		}
	}
	d.mu.Unlock()
	if m != nil && m.acked != nil {
		close(m.acked)
	}
	if m != nil {
		// Room in the window, for any message (the retained status
		// counts in it too: with MaxInflight 1 a publisher waiting for
		// the status's PUBACK was never woken).
		select {
		case d.room <- struct{}{}:
		default:
		}
	}
	if m == nil || m.seq == 0 {
		return
	}
	now := time.Now()
	d.f.acked.Add(1)
	d.f.hist.add(now.Sub(m.sent))
	if d.f.cfg.OnAck != nil {
		d.f.cfg.OnAck(Ack{Device: d.name, Seq: m.seq, Sent: m.sent, Acked: now, Resent: m.resent})
	}
	select {
	case d.room <- struct{}{}:
	default:
	}
}

// connect connects, retrying with backoff until ctx ends or the publishing
// phase is over.
func (d *device) connect(ctx context.Context) bool {
	for {
		if err := d.f.limiter.wait(ctx); err != nil || !time.Now().Before(d.giveUp) {
			return false
		}
		err := d.dial(ctx)
		if err == nil {
			// Failures in a row are counted on until the connection has
			// lasted (see reconnect): a broker that takes over or drops
			// the session at once is not hammered.
			d.connectedAt = time.Now()
			if d.connectedOnce {
				d.f.reconnects.Add(1)
			} else {
				d.connectedOnce = true
				d.f.connected.Add(1)
			}
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		d.f.connFailures.Add(1)
		d.f.errMu.Lock()
		d.f.lastErr = d.name + ": connect: " + err.Error()
		d.f.errMu.Unlock()
		d.f.cfg.Logger.Debug("devsim: connect failed", "device", d.name, "err", err)
		d.failures++
		if sleep(ctx, d.backoff()) != nil {
			return false
		}
	}
}

// reconnect replaces a lost connection.
func (d *device) reconnect(ctx context.Context) bool {
	if d.cur != nil {
		d.cur.c.close()
		<-d.cur.lost
		d.cur = nil
	}
	// The firmware contract: a connection lost before it lasted a while
	// (stableConnection) counts as a failure, so the backoff grows (it was
	// reset by every CONNACK: a broker dropping the device at once got a
	// reconnect loop). A short random pause always, so that a broker
	// restart does not bring the whole fleet back in the same millisecond.
	wait := time.Duration(rand.Int64N(int64(d.f.cfg.ReconnectMin) + 1))
	if time.Since(d.connectedAt) < stableConnection {
		d.failures++
		wait = d.backoff()
	} else {
		d.failures = 0
	}
	if sleep(ctx, wait) != nil {
		return false
	}
	return d.connect(ctx)
}

// stableConnection is how long a connection must last for its loss not to
// count as a failure in a row.
const stableConnection = time.Minute

// backoff is the wait after d.failures failures in a row: full jitter over
// an exponentially growing cap.
func (d *device) backoff() time.Duration {
	cfg := &d.f.cfg
	capd := cfg.ReconnectMin
	for i := 1; i < d.failures && capd < cfg.ReconnectMax; i++ {
		capd *= 2
	}
	capd = min(capd, cfg.ReconnectMax)
	return time.Duration(rand.Int64N(int64(capd) + 1))
}

// dial opens a session: CONNECT (with the last will), SUBSCRIBE to the
// cmd topic, the retained "online" status, and the resend of the messages
// still in flight.
func (d *device) dial(ctx context.Context) error {
	cfg := &d.f.cfg
	pk := &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}}
	pk.Connect = packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: d.clientID,
		Clean: cfg.CleanSession, Keepalive: uint16(cfg.KeepAlive / time.Second)}
	if !cfg.NoStatus {
		pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, d.statusTopic, []byte("offline")
		pk.Connect.WillQos, pk.Connect.WillRetain = 1, true
	}
	if d.username != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(d.username)
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(d.password)
	}
	c, _, err := dial(ctx, d.f.addr, cfg.ConnectTimeout, pk)
	if err != nil {
		return err
	}
	s := &session{c: c, lost: make(chan struct{})}
	d.cur = s
	connected := time.Now().UnixNano() // CONNACK read
	d.lastWrite.Store(connected)
	d.lastRead.Store(connected)
	go d.reader(s)
	if !cfg.NoCommands {
		sub := &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: subscribeID,
			Filters: packets.Subscriptions{{Filter: d.cmdTopic, Qos: 1}}}
		d.send(s, sub)
	}
	d.mu.Lock()
	kept := d.inflight[:0]
	for _, m := range d.inflight {
		if m.seq != 0 { // a new "online" replaces an unacknowledged one
			kept = append(kept, m)
		}
	}
	d.inflight = kept
	var status *packets.Packet
	if !cfg.NoStatus {
		m := &message{id: d.allocID()}
		d.inflight = append(d.inflight, m)
		status = &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
			TopicName: d.statusTopic, Payload: []byte("online"), PacketID: m.id}
	}
	resend := append([]*message(nil), kept...)
	d.mu.Unlock()
	if status != nil {
		d.send(s, status)
	}
	for _, m := range resend {
		m.resent++
		d.f.resent.Add(1)
		d.send(s, &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Dup: true},
			TopicName: d.telemetry, Payload: m.payload, PacketID: m.id})
	}
	return nil
}

// reader handles what the broker sends on one connection.
func (d *device) reader(s *session) {
	defer close(s.lost)
	// Without a PINGRESP or anything else for 1.5 keep-alives the
	// connection is dead.
	timeout := d.f.cfg.KeepAlive * 3 / 2
	for {
		_ = s.c.nc.SetReadDeadline(time.Now().Add(timeout))
		pk, err := s.c.read()
		if err != nil {
			if !s.closing.Load() {
				d.f.fail(d.name, err)
			}
			s.c.close()
			return
		}
		d.lastRead.Store(time.Now().UnixNano())
		switch pk.FixedHeader.Type {
		case packets.Puback:
			d.acked(pk.PacketID)
		case packets.Publish:
			d.f.commands.Add(1)
			if d.f.cfg.OnCommand != nil {
				d.f.cfg.OnCommand(d.name, pk.Payload)
			}
			if pk.FixedHeader.Qos > 0 {
				d.send(s, &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
			}
		case packets.Suback:
			for _, rc := range pk.ReasonCodes {
				if rc >= 0x80 {
					d.f.fail(d.name, errors.New("subscription to "+d.cmdTopic+" refused"))
				}
			}
		}
	}
}

// finish disconnects cleanly and counts what stayed unacked. Before the
// DISCONNECT (which does not send the last will) it publishes the retained
// "offline" at QoS 1, as the contract asks of status messages, and waits
// for its PUBACK (at most AckTimeout), so that the broker has it before the
// connection closes.
func (d *device) finish() {
	d.f.unacked.Add(uint64(d.inflightTelemetry()))
	s := d.cur
	if s == nil {
		return
	}
	select {
	case <-s.lost:
	default:
		if !d.f.cfg.NoStatus {
			m := &message{acked: make(chan struct{})}
			d.mu.Lock()
			m.id = d.allocID()
			d.inflight = append(d.inflight, m)
			d.mu.Unlock()
			if d.send(s, &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
				TopicName: d.statusTopic, Payload: []byte("offline"), PacketID: m.id}) {
				t := time.NewTimer(d.f.cfg.AckTimeout)
				select {
				case <-m.acked:
				case <-s.lost:
				case <-t.C:
				}
				t.Stop()
			}
		}
		s.closing.Store(true)
		d.send(s, &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	}
	s.closing.Store(true)
	s.c.close()
	<-s.lost
}
