package sync

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
	"github.com/moongate-edge/moongate/store"
)

// testPKI writes a CA, a server certificate for 127.0.0.1 and a client
// certificate (all signed by the CA) into dir and returns their paths.
func testPKI(t *testing.T, dir string) (ca, srvCert, srvKey, cliCert, cliKey string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage, ip bool) (string, string) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature}
		if ip {
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(k)
		return write(name+".pem", "CERTIFICATE", der), write(name+".key", "EC PRIVATE KEY", kder)
	}
	ca = write("ca.pem", "CERTIFICATE", caDER)
	srvCert, srvKey = leaf("server", 2, x509.ExtKeyUsageServerAuth, true)
	cliCert, cliKey = leaf("client", 3, x509.ExtKeyUsageClientAuth, false)
	return
}

// TestMQTTClientCertificate: mosquitto requires a client certificate; the
// target with one delivers, the target without one cannot connect and
// keeps everything in its outbox.
func TestMQTTClientCertificate(t *testing.T) {
	dir := t.TempDir()
	ca, sc, sk, cc, ck := testPKI(t, dir)
	mq := mqtttest.StartMosquitto(t, mqtttest.WithConfig("cafile "+ca, "certfile "+sc, "keyfile "+sk, "require_certificate true"))
	url := "ssl://" + mq.Addr()
	st := openStore(t, "", store.DurabilityNone)
	good := fastTarget("good", "mqtt")
	good.MQTT = MQTTConfig{Broker: url, TLS: TLSConfig{CA: ca, Cert: cc, Key: ck}}
	bad := fastTarget("bad", "mqtt")
	bad.MQTT = MQTTConfig{Broker: url, TLS: TLSConfig{CA: ca}}
	m, _ := startManager(t, st, good, bad)
	commitRecords(t, st, 50, 1, "good", "bad")
	waitFor(t, 10*time.Second, "delivery with the client certificate", func() bool { return st.OutboxStats("good").Backlog == 0 })
	waitFor(t, 10*time.Second, "refused without one", func() bool {
		s := statusOf(m, "bad")
		return s.State == StateDisconnected && s.LastError != ""
	})
	if s := statusOf(m, "bad"); s.Backlog != 50 || s.Delivered != 0 {
		t.Fatalf("target without certificate: %+v", s)
	}
	if s := statusOf(m, "good"); s.Delivered != 50 || !s.Connected {
		t.Fatalf("target with certificate: %+v", s)
	}
}

// TestTLSNeedsTLSURL: TLS settings with a plaintext URL would be ignored
// (client certificate unused, credentials in clear): New refuses them
// with ErrInvalidConfig, naming the scheme to use. nats:// is not
// plaintext here: with TLS settings the client requires TLS.
func TestTLSNeedsTLSURL(t *testing.T) {
	ca, _, _, cc, ck := testPKI(t, t.TempDir())
	st := openStore(t, "", store.DurabilityNone)
	withCert := TLSConfig{CA: ca, Cert: cc, Key: ck}
	skip := TLSConfig{InsecureSkipVerify: true}
	target := func(typ, url string, tls TLSConfig) TargetConfig {
		tc := TargetConfig{Name: "x", Type: typ}
		switch typ {
		case "http":
			tc.HTTP = HTTPConfig{URL: url, TLS: tls}
		case "mqtt":
			tc.MQTT = MQTTConfig{Broker: url, TLS: tls}
		case "nats":
			tc.NATS = NATSConfig{URL: url, TLS: tls}
		}
		return tc
	}
	for _, c := range []struct {
		tc   TargetConfig
		want string // "" when accepted
	}{
		{target("http", "http://up.example/in", withCert), `http tls is set but url "http://up.example/in" is plain http`},
		{target("http", "http://up.example/in", skip), "use https://"},
		{target("mqtt", "tcp://b.example:1883", withCert), `mqtt tls is set but broker "tcp://b.example:1883" is not a TLS URL`},
		{target("mqtt", "mqtt://b.example:1883", TLSConfig{CA: ca}), "use ssl://, tls://, mqtts:// or wss://"},
		{target("mqtt", "ws://b.example/mqtt", skip), "is not a TLS URL"},
		{target("http", "https://up.example/in", withCert), ""},
		{target("http", "http://up.example/in", TLSConfig{}), ""},
		{target("mqtt", "ssl://b.example:8883", withCert), ""},
		{target("mqtt", "wss://b.example/mqtt", skip), ""},
		{target("nats", "nats://n.example:4222", withCert), ""},
	} {
		m, err := New(Options{Store: st, Targets: []TargetConfig{c.tc}})
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s %s: %v", c.tc.Type, c.tc.HTTP.URL+c.tc.MQTT.Broker+c.tc.NATS.URL, err)
		case c.want != "" && (!errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s %s: %v, want ErrInvalidConfig with %q", c.tc.Type, c.tc.HTTP.URL+c.tc.MQTT.Broker+c.tc.NATS.URL, err, c.want)
		}
		if m != nil {
			m.closeTargets()
		}
	}
}
