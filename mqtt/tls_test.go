package mqtt

import (
	"context"
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
	"testing"
	"time"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key.
func selfSigned(t testing.TB) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "moongate-test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// The external client over TLS with a CA file and credentials, against the
// embedded broker's TLS listener with a user account: both TLS paths and
// the credential path in one round trip.
func TestTLSExternalToEmbedded(t *testing.T) {
	cert, key := selfSigned(t)
	users := testUsers(t)
	var rec recorder
	e := startEmbedded(t, EmbeddedConfig{TLSCert: cert, TLSKey: key, Users: users}, rec.handle, "#")
	url := "ssl://" + e.Addr().String()

	// Plain TCP to the TLS listener fails.
	if _, err := dial(t, "tcp://"+e.Addr().String(), "plain"); err == nil {
		t.Fatal("plain MQTT accepted on the TLS listener")
	}
	// Without the CA the broker is not trusted.
	x0, err := NewExternal(ExternalConfig{Broker: url, ClientID: "untrusted", Username: "alice", Password: "s3cret",
		ConnectTimeout: time.Second, MaxReconnectInterval: 200 * time.Millisecond}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := x0.Start(ctx, rec.handle); err == nil {
		t.Fatal("connected without trusting the broker certificate")
	}
	_ = x0.Close(context.Background())

	// With the CA and good credentials: subscribed (ACL allows its prefix),
	// receives what a device publishes.
	x, err := NewExternal(ExternalConfig{Broker: url, ClientID: "alice-gw", Username: "alice", Password: "s3cret", CAFile: cert,
		ConnectTimeout: 3 * time.Second}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	var got recorder
	if err := x.SetFilters(context.Background(), []string{"devices/alice/cmd"}); err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if err := x.Start(ctx2, got.handle); err != nil {
		t.Fatal(err)
	}
	defer x.Close(context.Background())
	if err := e.Publish(context.Background(), "devices/alice/cmd", []byte("reboot"), 1, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "message over TLS", 10*time.Second, func() bool { return got.len() == 1 })
	if string(got.get(0).Payload) != "reboot" {
		t.Fatalf("payload %q", got.get(0).Payload)
	}
	// A refused subscription is reported.
	if err := x.SetFilters(context.Background(), []string{"devices/bob/#"}); !errors.Is(err, ErrSubscribe) {
		t.Fatalf("subscription outside the ACL: %v, want ErrSubscribe", err)
	}
	if x.Ready() {
		t.Fatal("ready although the broker refused a subscription")
	}
}
