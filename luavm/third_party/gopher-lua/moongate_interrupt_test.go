package lua

import (
	"strings"
	"testing"
	"time"
)

// TestMoongateInterrupt: Interrupt from another goroutine makes the VM
// call the handler before its next instruction; a handler that raises
// stops the code (a straight-line run no hook sees), one that returns
// lets it go on; an interrupt set while nothing runs is seen by the next
// instruction, and ClearInterrupt withdraws it.
func TestMoongateInterrupt(t *testing.T) {
	L := NewState()
	defer L.Close()
	calls := 0
	L.SetInterruptHandler(func(L *LState) {
		calls++
		if L.GetGlobal("stop") == LTrue {
			L.RaiseError("interrupted")
		}
	})
	// An endless loop, stopped from a timer.
	L.SetGlobal("stop", LTrue)
	time.AfterFunc(20*time.Millisecond, L.Interrupt)
	err := L.DoString(`while true do end`)
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("loop: %v", err)
	}
	// A handler that returns: the code runs to its end.
	L.SetGlobal("stop", LFalse)
	L.Interrupt()
	if err := L.DoString(`x = 1 + 1`); err != nil || L.GetGlobal("x") != LNumber(2) {
		t.Fatalf("go on: %v %v", err, L.GetGlobal("x"))
	}
	if calls != 2 {
		t.Fatalf("handler called %d times, want 2", calls)
	}
	// Withdrawn before anything ran.
	L.Interrupt()
	L.ClearInterrupt()
	if err := L.DoString(`y = 2`); err != nil || calls != 2 {
		t.Fatalf("cleared: %v, %d calls", err, calls)
	}
}

// TestMoongateLongNumbers: a string of more than 256 characters is no
// number (strconv would copy it into an error per conversion).
func TestMoongateLongNumbers(t *testing.T) {
	L := NewState()
	defer L.Close()
	long := strings.Repeat("1", 300)
	L.SetGlobal("long", LString(long))
	L.SetGlobal("short", LString(strings.Repeat("1", 20)+".5"))
	if err := L.DoString(`a = tonumber(long); b = tonumber(short); c = pcall(function() return long + 1 end)`); err != nil {
		t.Fatal(err)
	}
	if L.GetGlobal("a") != LNil || L.GetGlobal("b") == LNil || L.GetGlobal("c") != LFalse {
		t.Fatalf("tonumber(long) %v, tonumber(short) %v, long + 1 ok %v", L.GetGlobal("a"), L.GetGlobal("b"), L.GetGlobal("c"))
	}
}
