package bench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// subscriber is a paho client that feeds every message on filter to a
// tracker sink. The device is the second topic level, or, for synced
// records, the record's device field.
type subscriber struct {
	c   paho.Client
	cur atomic.Pointer[tracker]
}

// newSubscriber connects to broker (host:port) and subscribes filter at qos;
// upstream selects the synced-record payload format.
func newSubscriber(ctx context.Context, broker, clientID, filter string, qos byte, sink int, upstream bool) (*subscriber, error) {
	s := &subscriber{}
	handler := func(_ paho.Client, m paho.Message) {
		now := time.Now().UnixNano()
		t := s.cur.Load()
		if t == nil {
			return
		}
		if upstream {
			dev, seq, ts, err := parseUpstream(m.Payload())
			if err != nil {
				t.stray.Add(1)
				return
			}
			t.recv(sink, dev, seq, ts, now)
			return
		}
		parts := strings.Split(m.Topic(), "/")
		seq, ts, ok := seqTS(m.Payload())
		if len(parts) < 3 || !ok {
			t.stray.Add(1)
			return
		}
		t.recv(sink, parts[1], seq, ts, now)
	}
	o := paho.NewClientOptions().AddBroker("tcp://" + broker).SetClientID(clientID).SetCleanSession(true).
		SetOrderMatters(false).SetKeepAlive(30 * time.Second).SetAutoReconnect(false).
		SetMessageChannelDepth(100000).SetDefaultPublishHandler(handler)
	s.c = paho.NewClient(o)
	tok := s.c.Connect()
	if err := waitToken(ctx, tok); err != nil {
		return nil, fmt.Errorf("subscriber connect %s: %w", broker, err)
	}
	tok = s.c.Subscribe(filter, qos, handler)
	if err := waitToken(ctx, tok); err != nil {
		s.c.Disconnect(0)
		return nil, fmt.Errorf("subscribe %s: %w", filter, err)
	}
	return s, nil
}

func waitToken(ctx context.Context, tok paho.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(30 * time.Second):
		return fmt.Errorf("timed out")
	}
}

func (s *subscriber) close() { s.c.Disconnect(100) }

// httpUpstream is an HTTP server taking NDJSON batches of synced records.
type httpUpstream struct {
	srv  *http.Server
	url  string
	cur  atomic.Pointer[tracker]
	sink int
	bad  atomic.Uint64
}

func newHTTPUpstream(sink int) (*httpUpstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u := &httpUpstream{sink: sink, url: "http://" + ln.Addr().String() + "/records"}
	u.srv = &http.Server{Handler: http.HandlerFunc(u.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = u.srv.Serve(ln) }()
	return u, nil
}

func (u *httpUpstream) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var lines [][]byte
	for sc.Scan() {
		if len(sc.Bytes()) > 0 {
			lines = append(lines, append([]byte(nil), sc.Bytes()...))
		}
	}
	if err := sc.Err(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// Received means acknowledged here: record after the whole body is read.
	now := time.Now().UnixNano()
	t := u.cur.Load()
	for _, l := range lines {
		dev, seq, ts, err := parseUpstream(l)
		if err != nil || t == nil {
			u.bad.Add(1)
			continue
		}
		t.recv(u.sink, dev, seq, ts, now)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (u *httpUpstream) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = u.srv.Shutdown(ctx)
}
