package mqtt

import (
	"testing"
	"time"
)

// MaxSessionExpiry caps how long a disconnected persistent session is
// kept. An MQTT 5 device connecting with a session expiry (capped to 1 s
// here) may raise it in its DISCONNECT: 0xFFFFFFFF means "never expires",
// and the broker took it as it was, past MaxSessionExpiry.
func TestDisconnectSessionExpiryCapped(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}, MaxSessionExpiry: time.Second}, acceptAll, []string{}...)
	b := append(rawString("MQTT"), 5, 0xC0, 0, 60) // v5, user+pass, no clean start
	b = append(b, 5, 0x11, 0, 0, 0, 60)            // session expiry 60 s (capped to 1 s)
	b = append(b, rawString("forever")...)
	b = append(b, rawString("u")...)
	b = append(b, rawString("pw")...)
	c, _ := dialConnect(t, e, rawPacket(0x10, b))
	c.write(rawPacket(0x82, append(append([]byte{0, 1, 0}, rawString("devices/u/cmd/#")...), 1)))
	if typ, _ := c.readPacket(); typ&0xf0 != 0x90 {
		t.Fatalf("packet %#x, want SUBACK", typ)
	}
	// DISCONNECT, normal, session expiry interval 0xFFFFFFFF.
	c.write(rawPacket(0xe0, []byte{0, 5, 0x11, 0xff, 0xff, 0xff, 0xff}))
	c.conn.Close()
	waitFor(t, "the session to expire (max_session_expiry 1 s)", 8*time.Second, func() bool {
		_, ok := e.srv.Clients.Get("forever")
		return !ok
	})
}
