package luavm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"

	lua "github.com/yuin/gopher-lua"

	"github.com/moongate-edge/moongate/luavm/internal/pm"
)

// run executes one invocation on the instance. It never panics; after a
// breach or panic in.broken is set and the instance must be discarded.
func (in *instance) run(ctx context.Context, name string, ev *Event, state StateReader, limits Limits, invID string, res *Result) (err error) {
	start := time.Now()
	iv := &in.inv
	tables := iv.tables[:0]
	*iv = invocation{
		ctx: ctx, limits: limits, function: name, state: state, res: res,
		deadline: start.Add(limits.Timeout), tables: tables, nextScan: scanEvery,
	}
	if d, ok := ctx.Deadline(); ok && d.Before(iv.deadline) {
		iv.deadline, iv.ctxDeadline = d, true
	}
	// Pattern work is charged in steps once enough of it piled up: what
	// the last invocation on this instance left under that threshold is
	// not this one's (the same invocation always costs the same steps).
	in.pmb = pm.Budget{Hook: in.patternSteps}
	res.Cost.BytesIn = int64(len(ev.Payload))
	if ev.HTTP != nil {
		res.Cost.BytesIn += int64(len(ev.HTTP.Body))
	}
	L := in.L
	in.armAlarm()
	defer func() {
		in.disarmAlarm()
		if r := recover(); r != nil {
			in.broken = true
			err = fmt.Errorf("%w: %v", ErrPanic, r)
		}
		// The last scan: growth since the one before (a write through
		// __newindex, say) is counted, and an invocation that ended over
		// the cap fails like one that went over it while running.
		in.scanTables(nil)
		if err == nil && iv.peak > limits.MaxMemory {
			err = fmt.Errorf("%w (cap %d bytes, %d in use at the end)", ErrMemory, limits.MaxMemory, iv.peak)
			in.broken = true
		}
		if err != nil {
			if iv.breach != nil && !errors.Is(err, ErrPanic) {
				err = iv.breach
			}
			if iv.breach != nil || errors.Is(err, ErrPanic) || IsLimit(err) {
				in.broken = true
			}
			// Nothing of a failed invocation may be committed.
			res.Kind, res.Value, res.Effects, res.State = ResultNone, nil, nil, nil
		}
		res.Cost.Effects = len(res.Effects)
		res.Cost.Steps = iv.steps
		res.Cost.PeakMemory = iv.peak
		res.Cost.BytesOut = int64(len(res.Value)) + iv.effBytes
		res.Cost.Wall = time.Since(start)
		res.Cost.Outcome = outcome(err)
		if iv.logDropped > 0 && len(res.Logs) > 0 {
			res.Logs = append(res.Logs, LogEntry{Level: slog.LevelWarn, Msg: fmt.Sprintf("%d log lines dropped (limit %d)", iv.logDropped, limits.MaxLogLines), TimeMS: time.Now().UnixMilli()})
		}
		// Drop references so that the invocation's garbage can be collected.
		clear(iv.tables)
		if cap(iv.tables) > 4096 {
			iv.tables = nil
		}
		for k, v := range iv.versions {
			_ = v.Close()
			delete(iv.versions, k)
		}
		if iv.stateStop != nil {
			iv.stateStop()
		}
		iv.stateBuf, iv.arrays, iv.res, iv.state, iv.ctx, iv.stateCtx, iv.stateStop = nil, nil, nil, nil, nil, nil, nil
		if !in.broken {
			L.SetTop(0)
		}
	}()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}

	// A fresh global environment per invocation: writes stay in env,
	// reads fall through to the read-only library.
	env := in.track(L.CreateTable(0, 2))
	env.Metatable = in.envMT
	if in.prog.usesG {
		// Without the name in the source there is no way to reach _G
		// (getfenv and load are gone), so skip the field when it is absent.
		env.RawSetString("_G", env)
	}
	fn := L.NewFunctionFromProto(in.prog.proto)
	fn.Env = env
	L.Push(fn)
	L.Push(in.chunk[0])
	L.Push(in.chunk[1])
	L.Push(in.chunk[2])
	L.Push(in.chunk[3])
	L.Push(in.chunk[4])
	if err := L.PCall(5, 0, nil); err != nil {
		return in.luaError(err)
	}
	handle, ok := env.RawGetString("handle").(*lua.LFunction)
	if !ok {
		return fmt.Errorf("%w: %w: handle is not a function after running the chunk", ErrRuntime, ErrNoHandler)
	}
	L.Push(handle)
	L.Push(in.eventTable(ev))
	if in.prog.noCtx {
		L.Push(lua.LNil) // handle never reads it
	} else {
		L.Push(in.ctxTable(invID))
	}
	if err := L.PCall(2, 1, nil); err != nil {
		return in.luaError(err)
	}
	if iv.breach != nil {
		return iv.breach
	}
	// A Go builtin that outran the deadline before handle returned: its
	// result is as late as a loop's would have been. (The clock only: a
	// caller that went away meanwhile, such as an HTTP client, does not
	// undo what the function finished.)
	if time.Now().After(iv.deadline) {
		err := in.timeErr()
		iv.breach = err
		return err
	}
	ret := L.Get(-1)
	L.Pop(1)
	switch v := ret.(type) {
	case *lua.LNilType:
		res.Kind = ResultNone
	case lua.LString:
		if len(v) > limits.MaxResultBytes {
			return fmt.Errorf("%w (%d bytes, max %d)", ErrResultTooLarge, len(v), limits.MaxResultBytes)
		}
		if ev.Trigger != "http" {
			// Stored as a record, a JSON string (JSONString): its encoding
			// must fit too (a control byte takes six; 200,000 of them made
			// a 1.2 MB record the store refused).
			e := jsonEncoder{in: in, limit: limits.MaxResultBytes}
			e.encode(v, 0)
			if e.tooLarge {
				return fmt.Errorf("%w (%d bytes, more than %d as a JSON string)", ErrResultTooLarge, len(v), limits.MaxResultBytes)
			}
			if e.err != nil {
				return e.err
			}
		}
		res.Kind, res.Value = ResultString, []byte(v)
	case *lua.LTable:
		// The encoder stops at the output limit and checks each growth
		// of its buffer against the memory cap (jsonEncoder.grow).
		e := jsonEncoder{in: in, limit: limits.MaxResultBytes}
		e.encode(v, 0)
		if e.tooLarge {
			return fmt.Errorf("%w (more than %d bytes)", ErrResultTooLarge, limits.MaxResultBytes)
		}
		if errors.Is(e.err, ErrMemory) || errors.Is(e.err, ErrTimeout) {
			return e.err
		}
		if e.err != nil {
			return fmt.Errorf("%w: encoding the result: %w", ErrRuntime, e.err)
		}
		if len(e.buf) > limits.MaxResultBytes {
			return fmt.Errorf("%w (more than %d bytes)", ErrResultTooLarge, limits.MaxResultBytes)
		}
		res.Kind, res.Value = ResultJSON, e.buf
		if b, ok := v.RawGetString("body").(lua.LString); ok && !utf8.ValidString(string(b)) {
			res.Body = []byte(b) // (the encoded result already fit MaxResultBytes)
		}
	default:
		return fmt.Errorf("%w: handle returned a %s (want nil, a table or a string)", ErrRuntime, ret.Type().String())
	}
	return nil
}

// luaError classifies an error returned by PCall.
func (in *instance) luaError(err error) error {
	if in.inv.breach != nil {
		return in.inv.breach
	}
	var aerr *lua.ApiError
	if errors.As(err, &aerr) {
		if aerr.Type == lua.ApiErrorPanic {
			return fmt.Errorf("%w: %v", ErrPanic, aerr.Object)
		}
		msg := lua.LVAsString(aerr.Object)
		if aerr.Object.Type() != lua.LTString && aerr.Object.Type() != lua.LTNumber {
			msg = aerr.Object.String()
		}
		if e := stackError(msg); e != nil {
			return e
		}
		// The error reaches logs and dead letters: a message of megabytes
		// (error(s) with a big s) is cut like a log message.
		if len(msg) > maxLogBytes {
			msg = msg[:maxLogBytes] + "...(truncated)"
		}
		return fmt.Errorf("%w: %s", ErrRuntime, msg)
	}
	return fmt.Errorf("%w: %w", ErrRuntime, err)
}
