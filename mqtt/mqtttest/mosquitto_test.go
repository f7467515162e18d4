package mqtttest

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStartMosquitto(t *testing.T) {
	m := StartMosquitto(t, WithConfig("max_inflight_messages 7"))
	if m.Port() <= 0 || m.URL() != "tcp://"+m.Addr() || !strings.HasPrefix(m.Addr(), "127.0.0.1:") {
		t.Fatalf("port %d url %s", m.Port(), m.URL())
	}
	conf, err := os.ReadFile(filepath.Join(m.Dir(), "mosquitto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"persistence true", "max_queued_messages 100000", "set_tcp_nodelay true", "max_inflight_messages 7", "allow_anonymous true"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("config lacks %q:\n%s", want, conf)
		}
	}
	dialOK := func() bool {
		c, err := net.DialTimeout("tcp", m.Addr(), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}
	if !dialOK() {
		t.Fatal("not accepting after start")
	}
	port := m.Port()
	m.Kill()
	if dialOK() {
		t.Fatal("still accepting after Kill")
	}
	m.Restart()
	if !dialOK() || m.Port() != port {
		t.Fatal("not accepting on the same port after Restart")
	}
	m.Stop()
	m.Stop() // idempotent
	if dialOK() {
		t.Fatal("still accepting after Stop")
	}
}

func TestStartMosquittoWithoutPersistence(t *testing.T) {
	m := StartMosquitto(t, WithoutPersistence())
	conf, _ := os.ReadFile(filepath.Join(m.Dir(), "mosquitto.conf"))
	if !strings.Contains(string(conf), "persistence false") {
		t.Fatalf("config:\n%s", conf)
	}
}
