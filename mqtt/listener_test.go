package mqtt

import "testing"

func TestAddrKey(t *testing.T) {
	cases := []struct{ remote, want string }{
		{"192.0.2.7:1883", "192.0.2.7"},
		{"192.0.2.7:50000", "192.0.2.7"},
		{"[::ffff:192.0.2.7]:1883", "192.0.2.7"},                         // IPv4-mapped: the IPv4 host
		{"[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:1883", "2001:db8:1:2::/64"}, // one host's /64
		{"[2001:db8:1:2::1]:9", "2001:db8:1:2::/64"},
		{"[2001:db8:1:3::1]:9", "2001:db8:1:3::/64"},
		{"[fe80::1%eth0]:1883", "fe80::/64"},
		{"not an address", "not an address"},
		{"", ""},
	}
	for _, c := range cases {
		if got := addrKey(c.remote); got != c.want {
			t.Errorf("addrKey(%q) = %q, want %q", c.remote, got, c.want)
		}
	}
}

// preauth: per-address slots are a share of the listener's, given back on
// release (once, however often release is called), and a refusal says
// which bound refused.
func TestPreauthPerAddress(t *testing.T) {
	var shed []string
	p := newPreauth(3, 2, func(why string) { shed = append(shed, why) })
	a1, a2 := p.acquire("10.0.0.1:1"), p.acquire("10.0.0.1:2")
	if a1 == nil || a2 == nil {
		t.Fatal("first two slots of an address refused")
	}
	if p.acquire("10.0.0.1:3") != nil {
		t.Fatal("third slot of one address granted with perAddr 2")
	}
	b := p.acquire("10.0.0.2:1")
	if b == nil {
		t.Fatal("another address refused with a slot free")
	}
	if p.acquire("10.0.0.3:1") != nil {
		t.Fatal("slot granted beyond the listener's bound")
	}
	if len(shed) != 2 || shed[0] != shedAddressFull || shed[1] != shedListenerFull {
		t.Fatalf("shed = %q", shed)
	}
	a1.release()
	a1.release() // idempotent: gives back one slot, not two
	if s := p.acquire("10.0.0.1:4"); s == nil {
		t.Fatal("address refused after one of its slots was released")
	}
	if p.acquire("10.0.0.3:2") != nil {
		t.Fatal("double release gave back two slots")
	}
	a2.release()
	b.release()
	if n := len(p.byAddr); n != 1 {
		t.Fatalf("byAddr holds %d addresses, want 1 (10.0.0.1's new slot)", n)
	}
	if q := newPreauth(2, 16, func(string) {}); q.perAddr != 2 {
		t.Fatalf("perAddr = %d, want it capped at the listener's 2", q.perAddr)
	}
}
