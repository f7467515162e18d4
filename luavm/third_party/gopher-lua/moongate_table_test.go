package lua

import (
	"fmt"
	"testing"
)

// The tests of moongate's change to hash keys (README.moongate.md section
// 1): tables up to smallKeys keys find a key's place by scanning keys,
// larger ones through k2i, built when the table outgrows smallKeys.

// pairsOf iterates t with Next and returns each key's value, failing on a
// key yielded twice.
func pairsOf(t *testing.T, tb *LTable) map[LValue]LValue {
	t.Helper()
	got := map[LValue]LValue{}
	k, v := tb.Next(LNil)
	for k != LNil {
		if _, dup := got[k]; dup {
			t.Fatalf("key %v yielded twice", k)
		}
		got[k] = v
		k, v = tb.Next(k)
	}
	return got
}

func TestMoongateTableKeysAcrossSizes(t *testing.T) {
	for _, hcap := range []int{0, 4, 32} {
		for n := 0; n <= 3*smallKeys; n++ {
			t.Run(fmt.Sprintf("hcap%d/n%d", hcap, n), func(t *testing.T) {
				tb := newLTable(0, hcap)
				want := map[LValue]LValue{}
				for i := 0; i < n; i++ {
					var k LValue = LString(fmt.Sprintf("k%d", i))
					if i%3 == 2 {
						k = LNumber(float64(i) + 0.5) // a hash key that is not a string
					}
					tb.RawSetH(k, LNumber(i))
					want[k] = LNumber(i)
				}
				// Overwriting keeps one entry per key.
				for k := range want {
					tb.RawSetH(k, LString("again"))
					want[k] = LString("again")
				}
				got := pairsOf(t, tb)
				if len(got) != len(want) {
					t.Fatalf("pairs gave %d keys, want %d", len(got), len(want))
				}
				for k, v := range want {
					if got[k] != v {
						t.Fatalf("key %v: got %v, want %v", k, got[k], v)
					}
				}
				if n > smallKeys && tb.k2i == nil {
					t.Fatalf("%d keys and no k2i index", n)
				}
				if n <= smallKeys && tb.k2i != nil {
					t.Fatalf("%d keys built k2i", n)
				}
			})
		}
	}
}

func TestMoongateTableDeleteAndReadd(t *testing.T) {
	for _, n := range []int{3, smallKeys, smallKeys + 1, 4 * smallKeys} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			tb := newLTable(0, 0)
			for i := 0; i < n; i++ {
				tb.RawSetString(fmt.Sprintf("k%d", i), LNumber(i))
			}
			// Clear every other key, then set some of them again: each
			// live key once, the cleared ones not at all.
			for i := 0; i < n; i += 2 {
				tb.RawSetString(fmt.Sprintf("k%d", i), LNil)
			}
			for i := 0; i < n; i += 4 {
				tb.RawSetString(fmt.Sprintf("k%d", i), LString("back"))
			}
			got := pairsOf(t, tb)
			for i := 0; i < n; i++ {
				k := LString(fmt.Sprintf("k%d", i))
				v, ok := got[k]
				switch {
				case i%4 == 0:
					if v != LString("back") {
						t.Fatalf("%s: got %v, want back", k, v)
					}
				case i%2 == 0:
					if ok {
						t.Fatalf("%s cleared but yielded", k)
					}
				default:
					if v != LNumber(i) {
						t.Fatalf("%s: got %v, want %d", k, v, i)
					}
				}
			}
			if len(tb.keys) != n {
				t.Fatalf("keys holds %d, want %d (a key set again is not added twice)", len(tb.keys), n)
			}
		})
	}
}

// Clearing fields while traversing is allowed in Lua (section 5.1 of the
// manual, next): the traversal still visits every other key once.
func TestMoongateTableClearDuringTraversal(t *testing.T) {
	for _, n := range []int{5, smallKeys + 3} {
		L := NewState()
		err := L.DoString(fmt.Sprintf(`
			local t, n = {}, %d
			for i = 1, n do t["k"..i] = i end
			local seen = 0
			for k, v in pairs(t) do
				seen = seen + 1
				t[k] = nil
			end
			assert(seen == n, "visited "..seen.." of "..n)
			assert(next(t) == nil, "table not empty")
		`, n))
		L.Close()
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
	}
}

// A key that is not in the table starts the traversal at keys[1], as the
// release's k2i lookup did (its zero value); the VM's pairs never passes
// one, but Next is exported.
func TestMoongateTableNextUnknownKey(t *testing.T) {
	tb := newLTable(0, 0)
	tb.RawSetString("a", LNumber(1))
	tb.RawSetString("b", LNumber(2))
	if k, _ := tb.Next(LString("zzz")); k != LString("b") {
		t.Fatalf("Next(unknown) = %v, want b", k)
	}
}

func BenchmarkMoongateSmallTable(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		tb := newLTable(0, 0)
		tb.RawSetString("device", LString("d1"))
		tb.RawSetString("temp", LNumber(21.5))
		tb.RawSetString("hum", LNumber(40))
		tb.RawSetString("ts", LNumber(1))
		for k, _ := tb.Next(LNil); k != LNil; k, _ = tb.Next(k) {
		}
	}
}
