package sync

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	gosync "sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// mqttSubscriber collects every message under gateways/# with a
// persistent QoS 1 session, so that nothing is lost while the broker
// restarts (mosquitto keeps the session in its persistence file).
func mqttSubscriber(t testing.TB, url string) *collector {
	t.Helper()
	col := &collector{}
	o := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("sub-%d", time.Now().UnixNano())).
		SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(100 * time.Millisecond).
		SetConnectRetry(true).SetConnectRetryInterval(50 * time.Millisecond).SetOrderMatters(true)
	o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
		var r upRecord
		if err := json.Unmarshal(m.Payload(), &r); err != nil {
			t.Errorf("bad payload %q: %v", m.Payload(), err)
			return
		}
		if want := "gateways/gw/" + cleanMQTT(r.Stream); m.Topic() != want {
			t.Errorf("topic %s, want %s", m.Topic(), want)
		}
		col.add(r)
	})
	subscribed := make(chan struct{}, 1)
	o.SetOnConnectHandler(func(c paho.Client) {
		tok := c.Subscribe("gateways/#", 1, nil)
		tok.Wait()
		select {
		case subscribed <- struct{}{}:
		default:
		}
	})
	c := paho.NewClient(o)
	c.Connect()
	select {
	case <-subscribed:
	case <-time.After(10 * time.Second):
		t.Fatal("subscriber did not connect")
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return col
}

// natsServer is a real nats-server -js process owned by a test.
type natsServer struct {
	t    testing.TB
	port int
	dir  string
	conf string // a configuration file (-c), or ""
	mu   gosync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// NATSServerPath is the nats-server binary the tests start.
var natsServerPath = "/usr/sbin/nats-server"

// startNATS starts nats-server -js on a free loopback port; conf lines,
// if any, go to a configuration file (e.g. "max_payload: 65536").
func startNATS(t testing.TB, conf ...string) *natsServer {
	t.Helper()
	if _, err := os.Stat(natsServerPath); err != nil {
		t.Fatalf("%s not found (apt-get install nats-server; scripts/test-deps.sh): %v", natsServerPath, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &natsServer{t: t, port: port, dir: t.TempDir()}
	if len(conf) > 0 {
		s.conf = filepath.Join(s.dir, "nats.conf")
		if err := os.WriteFile(s.conf, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *natsServer) url() string { return "nats://127.0.0.1:" + strconv.Itoa(s.port) }

func (s *natsServer) start() {
	s.t.Helper()
	for attempt := 0; ; attempt++ {
		args := []string{"-js", "-a", "127.0.0.1", "-p", strconv.Itoa(s.port), "-sd", filepath.Join(s.dir, "js"),
			"-l", filepath.Join(s.dir, "nats.log")}
		if s.conf != "" {
			args = append(args, "-c", s.conf)
		}
		cmd := exec.Command(natsServerPath, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			s.t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		s.mu.Lock()
		s.cmd, s.done = cmd, done
		s.mu.Unlock()
		if err := s.waitReady(done); err == nil {
			return
		} else if attempt >= 20 {
			log, _ := os.ReadFile(filepath.Join(s.dir, "nats.log"))
			s.t.Fatalf("nats-server not ready: %v\n%s", err, log)
		}
		s.stop()
		time.Sleep(100 * time.Millisecond) // the port may still be closing; retry
	}
}

// waitReady polls until JetStream answers an account info request.
func (s *natsServer) waitReady(done chan struct{}) error {
	deadline := time.Now().Add(10 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("nats-server exited")
		default:
		}
		var nc *nats.Conn
		if nc, err = nats.Connect(s.url(), nats.Timeout(time.Second)); err == nil {
			js, _ := jetstream.New(nc)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err = js.AccountInfo(ctx)
			cancel()
			nc.Close()
			if err == nil {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond) // poll interval while waiting for readiness
	}
	return err
}

func (s *natsServer) stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// createStream makes the stream the nats targets publish into, with a
// duplicate window of two minutes.
func createStream(t testing.TB, url string) jetstream.Stream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "GATEWAYS", Subjects: []string{"gateways.>"}, Duplicates: 2 * time.Minute, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// streamRecords reads the whole stream (a fresh connection each time, so
// it works across server restarts).
func streamRecords(t testing.TB, url string) []upRecord {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "GATEWAYS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := int(info.State.Msgs)
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]upRecord, 0, n)
	for len(out) < n {
		batch, err := cons.Fetch(min(n-len(out), 1000), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			var r upRecord
			if err := json.Unmarshal(m.Data(), &r); err != nil {
				t.Fatalf("bad message %q: %v", m.Data(), err)
			}
			if id := m.Headers().Get(jetstream.MsgIDHeader); id != r.ID {
				t.Errorf("Nats-Msg-Id %q for record %q", id, r.ID)
			}
			out = append(out, r)
			got++
		}
		if batch.Error() != nil {
			t.Fatal(batch.Error())
		}
		if got == 0 {
			t.Fatalf("stream read stalled at %d of %d", len(out), n)
		}
	}
	return out
}

// streamCount is the number of messages in the stream, -1 if unknown.
func streamCount(url string) int {
	nc, err := nats.Connect(url, nats.Timeout(time.Second))
	if err != nil {
		return -1
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "GATEWAYS")
	if err != nil {
		return -1
	}
	info, err := st.Info(ctx)
	if err != nil {
		return -1
	}
	return int(info.State.Msgs)
}
