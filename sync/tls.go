package sync

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// build returns the client TLS configuration, or nil when nothing is set.
func (c TLSConfig) build(serverName string) (*tls.Config, error) {
	if c == (TLSConfig{}) {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName, InsecureSkipVerify: c.InsecureSkipVerify} //nolint:gosec // opt-in
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return nil, fmt.Errorf("%w: tls ca: %w", ErrInvalidConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: tls ca %s: no PEM certificate", ErrInvalidConfig, c.CA)
		}
		cfg.RootCAs = pool
	}
	if (c.Cert == "") != (c.Key == "") {
		return nil, fmt.Errorf("%w: tls cert and key go together", ErrInvalidConfig)
	}
	if c.Cert != "" {
		kp, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("%w: tls client certificate: %w", ErrInvalidConfig, err)
		}
		cfg.Certificates = []tls.Certificate{kp}
	}
	return cfg, nil
}
