package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// tracker follows the events of one load phase: devices FirstDevice..
// FirstDevice+n-1 of a devsim fleet, each sending seq 1, 2, ... It records
// when each event was first sent (from the devices' PUBACKs, or the payload
// timestamp for QoS 0) and when each sink first received it. Safe for
// concurrent use.
type tracker struct {
	prefix string
	first  int
	sinks  int
	devs   []devTrack
	// last is the unix nanos of the latest first receipt at any sink.
	last  atomic.Int64
	dups  atomic.Uint64
	stray atomic.Uint64 // receipts of unknown devices or unparsable payloads
	// Counters for pending: acknowledged events, events at every sink,
	// and events that are both.
	nAcked, nComplete, nBoth atomic.Int64
	// keepSamples makes outcome keep each event's send time with its
	// latency (for Options.Latencies).
	keepSamples bool
}

type devTrack struct {
	mu    sync.Mutex
	acked []int64   // by seq-1: first send time of an acknowledged event, 0 if not acked
	ts    []int64   // by seq-1: payload send time (ms resolution), from a receipt
	sent  []int64   // by seq-1: first send time, from the device (devsim OnSend)
	recv  [][]int64 // [sink][seq-1]: first receipt, 0 if none
	sinks []uint8   // by seq-1: sinks that received it
}

func newTracker(prefix string, first, devices, sinks int) *tracker {
	t := &tracker{prefix: prefix, first: first, sinks: sinks, devs: make([]devTrack, devices)}
	for i := range t.devs {
		t.devs[i].recv = make([][]int64, sinks)
	}
	return t
}

// index returns the tracker slot of a device name, or -1.
func (t *tracker) index(device string) int {
	s, ok := strings.CutPrefix(device, t.prefix)
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < t.first || n >= t.first+len(t.devs) {
		return -1
	}
	return n - t.first
}

func grow(s []int64, n int) []int64 {
	if n <= len(s) {
		return s
	}
	if n <= cap(s) {
		return s[:n]
	}
	return append(s, make([]int64, n-len(s))...)[:n]
}

// ack records an acknowledged event.
func (t *tracker) ack(device string, seq uint64, sent time.Time) {
	i := t.index(device)
	if i < 0 || seq == 0 || seq > 1<<31 {
		t.stray.Add(1)
		return
	}
	d := &t.devs[i]
	d.mu.Lock()
	d.acked = grow(d.acked, int(seq))
	first := d.acked[seq-1] == 0
	d.acked[seq-1] = sent.UnixNano()
	d.sinks = grow8(d.sinks, int(seq))
	complete := int(d.sinks[seq-1]) == t.sinks
	d.mu.Unlock()
	if first {
		t.nAcked.Add(1)
		if complete {
			t.nBoth.Add(1)
		}
	}
}

func grow8(s []uint8, n int) []uint8 {
	if n <= len(s) {
		return s
	}
	return append(s, make([]uint8, n-len(s))...)
}

// send records the first send of an event.
func (t *tracker) send(device string, seq uint64, at time.Time) {
	i := t.index(device)
	if i < 0 || seq == 0 || seq > 1<<31 {
		return
	}
	d := &t.devs[i]
	d.mu.Lock()
	d.sent = grow(d.sent, int(seq))
	d.sent[seq-1] = at.UnixNano()
	d.mu.Unlock()
}

// recv records a receipt of device's event seq at sink, with the payload's
// send time in ms (0 if unknown).
func (t *tracker) recv(sink int, device string, seq uint64, tsMs int64, at int64) {
	i := t.index(device)
	if i < 0 || seq == 0 || seq > 1<<31 {
		t.stray.Add(1)
		return
	}
	d := &t.devs[i]
	d.mu.Lock()
	r := grow(d.recv[sink], int(seq))
	d.recv[sink] = r
	dup := r[seq-1] != 0
	if !dup {
		r[seq-1] = at
		d.ts = grow(d.ts, int(seq))
		if d.ts[seq-1] == 0 {
			d.ts[seq-1] = tsMs * int64(time.Millisecond)
		}
	}
	complete, acked := false, false
	if !dup {
		d.sinks = grow8(d.sinks, int(seq))
		d.sinks[seq-1]++
		complete = int(d.sinks[seq-1]) == t.sinks
		acked = int(seq) <= len(d.acked) && d.acked[seq-1] != 0
	}
	d.mu.Unlock()
	if dup {
		t.dups.Add(1)
		return
	}
	if complete {
		t.nComplete.Add(1)
		if acked {
			t.nBoth.Add(1)
		}
	}
	for {
		l := t.last.Load()
		if at <= l || t.last.CompareAndSwap(l, at) {
			break
		}
	}
}

// outcome is what a tracker saw.
type outcome struct {
	acked     int   // acknowledged events (QoS 1)
	complete  int   // events received at every sink
	missing   int   // acknowledged events missing at some sink
	received  int   // events received at every sink (QoS 0: the count to compare with sent)
	firstSent int64 // unix nanos
	lastRecv  int64
	lat       []time.Duration // send -> last sink, per complete event, sorted
	samples   []latSample     // the same in device order, with send times (keepSamples)
	exactLat  bool            // from PUBACK send times (else payload ms)
	missingEx []string        // a few missing events, for the report
}

// latSample is one complete event's send time (Unix nanoseconds) and
// latency.
type latSample struct {
	sent int64
	lat  time.Duration
}

// writeLatencies sorts samples by send time and writes one line per sample:
// scenario, offered rate (0: as fast as the QoS 1 windows allow), send time
// in Unix nanoseconds and latency in nanoseconds, tab-separated. Plotted
// against the send time, the latencies show whether a tail comes from
// stalls (all events of an interval late) or from spread.
func writeLatencies(w io.Writer, scenario string, rate float64, samples []latSample) error {
	slices.SortFunc(samples, func(a, b latSample) int { return cmp.Compare(a.sent, b.sent) })
	bw := bufio.NewWriter(w)
	for _, s := range samples {
		fmt.Fprintf(bw, "%s\t%.0f\t%d\t%d\n", scenario, rate, s.sent, int64(s.lat))
	}
	return bw.Flush()
}

// outcome evaluates the phase. For QoS 1 (acked true) every acknowledged
// event must be at every sink; for QoS 0 the events received at every sink
// are counted.
func (t *tracker) outcome(qos1 bool) outcome {
	var o outcome
	o.exactLat = true
	o.firstSent = 1<<63 - 1
	for di := range t.devs {
		d := &t.devs[di]
		d.mu.Lock()
		n := len(d.acked)
		for s := range d.recv {
			n = max(n, len(d.recv[s]))
		}
		for k := range n {
			var sent int64
			if qos1 {
				if k >= len(d.acked) || d.acked[k] == 0 {
					continue
				}
				sent = d.acked[k]
				o.acked++
			} else if k < len(d.ts) {
				sent = d.ts[k]
			}
			if k < len(d.sent) && d.sent[k] != 0 {
				sent = d.sent[k] // exact
			} else if !qos1 {
				o.exactLat = false
			}
			end, ok := int64(0), true
			for s := range d.recv {
				if k >= len(d.recv[s]) || d.recv[s][k] == 0 {
					ok = false
					break
				}
				end = max(end, d.recv[s][k])
			}
			if !ok {
				if qos1 {
					o.missing++
					if len(o.missingEx) < 5 {
						o.missingEx = append(o.missingEx, fmt.Sprintf("%s%05d#%d", t.prefix, t.first+di, k+1))
					}
				}
				continue
			}
			o.complete++
			if sent > 0 {
				o.firstSent = min(o.firstSent, sent)
				o.lat = append(o.lat, time.Duration(end-sent))
				if t.keepSamples {
					o.samples = append(o.samples, latSample{sent: sent, lat: time.Duration(end - sent)})
				}
			}
			o.lastRecv = max(o.lastRecv, end)
		}
		d.mu.Unlock()
	}
	o.received = o.complete
	slices.Sort(o.lat)
	return o
}

// pending reports how many acknowledged events are still missing at some
// sink (QoS 1), or how many sent events are (QoS 0, given the fleet's sent
// count).
func (t *tracker) pending(qos1 bool, sent uint64) int {
	if qos1 {
		return int(t.nAcked.Load() - t.nBoth.Load())
	}
	return int(int64(sent) - t.nComplete.Load())
}

// quantile returns the q quantile of sorted durations.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// numberField returns the JSON number after `"name":` in b (the first one),
// parsed as float64 (Lua encodes integers like 1.7e+12).
func numberField(b []byte, name string) (float64, bool) {
	key := `"` + name + `":`
	i := bytes.Index(b, []byte(key))
	if i < 0 {
		return 0, false
	}
	rest := b[i+len(key):]
	for len(rest) > 0 && rest[0] == ' ' {
		rest = rest[1:]
	}
	j := 0
	for j < len(rest) && strings.IndexByte("0123456789+-.eE", rest[j]) >= 0 {
		j++
	}
	f, err := strconv.ParseFloat(string(rest[:j]), 64)
	return f, err == nil
}

// seqTS returns the seq and ts fields of a telemetry or result payload.
func seqTS(b []byte) (uint64, int64, bool) {
	seq, ok := numberField(b, "seq")
	if !ok || seq < 1 || seq != float64(uint64(seq)) {
		return 0, 0, false
	}
	ts, _ := numberField(b, "ts")
	return uint64(seq), int64(ts), true
}

// upstreamRecord is the part of a synced record (sync.AppendRecord) the
// benchmark reads.
type upstreamRecord struct {
	Device string `json:"device"`
	Data   struct {
		Seq float64 `json:"seq"`
		TS  float64 `json:"ts"`
	} `json:"data"`
}

// parseUpstream decodes one synced record line.
func parseUpstream(line []byte) (device string, seq uint64, ts int64, err error) {
	var r upstreamRecord
	if err := json.Unmarshal(line, &r); err != nil {
		return "", 0, 0, err
	}
	if r.Data.Seq < 1 {
		return "", 0, 0, fmt.Errorf("record without data.seq")
	}
	return r.Device, uint64(r.Data.Seq), int64(r.Data.TS), nil
}
