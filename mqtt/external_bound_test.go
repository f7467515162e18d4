package mqtt

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// remainingLength is MQTT's variable-length encoding of n.
func remainingLength(n int) []byte { return appendHeader(nil, 0, n)[1:] }

// floodBroker is a broker that answers CONNECT and SUBSCRIBE, then sends
// n QoS 1 publishes on n topics without waiting for any acknowledgement
// (as one without an in-flight window would, or a hostile one).
func floodBroker(t *testing.T, n int) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		for {
			h, err := r.ReadByte()
			if err != nil {
				return
			}
			size, mul := 0, 1
			for {
				b, err := r.ReadByte()
				if err != nil {
					return
				}
				size += int(b&0x7f) * mul
				mul *= 128
				if b&0x80 == 0 {
					break
				}
			}
			body := make([]byte, size)
			if _, err := io.ReadFull(r, body); err != nil {
				return
			}
			switch h >> 4 {
			case 1: // CONNECT
				c.Write([]byte{0x20, 0x02, 0x00, 0x00})
			case 8: // SUBSCRIBE of one filter
				c.Write([]byte{0x90, 0x03, body[0], body[1], 1})
				go func() {
					w := bufio.NewWriter(c)
					for i := range n {
						topic := fmt.Sprintf("devices/d%05d/telemetry", i)
						b := binary.BigEndian.AppendUint16(nil, uint16(len(topic)))
						b = append(b, topic...)
						b = binary.BigEndian.AppendUint16(b, uint16(i%65535+1))
						b = append(b, make([]byte, 512)...)
						w.Write(append([]byte{0x32}, remainingLength(len(b))...))
						w.Write(b)
					}
					w.Flush()
				}()
			}
		}
	}()
	return "tcp://" + ln.Addr().String()
}

// TestExternalLaneWorkersBounded: with its intake blocked (a full inbox),
// the external side handles QoS 1 messages on distinct topics, which a
// broker without an in-flight window pushes without waiting, with at most
// maxExternalHandlers lane workers, not a goroutine per topic (50,000
// messages made 50,000 goroutines, +200 MiB of heap and stacks). It keeps
// reading meanwhile (PINGRESP included: blocking paho's router made the
// keep-alive end the connection), and handles every message once intake
// flows again.
func TestExternalLaneWorkersBounded(t *testing.T) {
	const n = 3 * maxExternalQueued
	url := floodBroker(t, n)
	x, err := NewExternal(ExternalConfig{Broker: url, ClientID: "gw", KeepAlive: time.Minute}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := x.SetFilters(context.Background(), []string{"devices/#"}); err != nil {
		t.Fatal(err)
	}
	g0 := runtime.NumGoroutine()
	block := make(chan struct{})
	h := func(ctx context.Context, m *Message) error {
		select {
		case <-block:
		case <-ctx.Done():
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := x.Start(ctx, h); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every message received", 20*time.Second, func() bool { return x.stats.received.Load() == n })
	if g := runtime.NumGoroutine() - g0; g > maxExternalHandlers+32 {
		t.Errorf("%d more goroutines, want at most the %d lane workers and a few", g, maxExternalHandlers)
	}
	close(block) // intake flows again: every message is handled
	waitFor(t, "every message handled", 60*time.Second, func() bool { return x.stats.accepted.Load() == n })
	if err := x.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}
