package sync

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
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
