package lua

// Interrupt asks the VM running this state (any of its threads) to call
// the function set with SetInterruptHandler before it runs its next
// instruction (moongate: a deadline that the instructions' own accounting
// cannot see, such as a comparison of two long strings repeated in
// straight-line code). A Go function running at the time is not
// interrupted: the handler runs once it returns to the VM. Interrupt is
// safe for concurrent use (from a timer, for instance); an interrupt that
// arrives while no Lua code runs is seen by the next instruction run.
func (ls *LState) Interrupt() { ls.G.interrupted.Store(true) }

// ClearInterrupt withdraws an interrupt not seen yet.
func (ls *LState) ClearInterrupt() { ls.G.interrupted.Store(false) }

// SetInterruptHandler sets the function the VM calls after Interrupt (nil:
// the interrupt is dropped). It runs in the goroutine running the state;
// it may raise an error (RaiseError) to stop the running code, or return
// to go on. Not safe for concurrent use with the running state.
func (ls *LState) SetInterruptHandler(f func(*LState)) { ls.G.onInterrupt = f }
