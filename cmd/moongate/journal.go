package main

import (
	"context"
	"io"
	"log/slog"
	"sync"
)

// Under systemd, the daemon's standard error goes to the journal, which
// reads a "<N>" prefix at the start of each line as the syslog priority of
// that line (SyslogLevelPrefix=, on by default). journalHandler writes that
// prefix before every record, so that `journalctl -p warning -u moongate`
// shows the warnings and errors and not every info line.

// journalPriority is the syslog priority of a slog level: err (3), warning
// (4), info (6) or debug (7).
func journalPriority(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "<3>"
	case l >= slog.LevelWarn:
		return "<4>"
	case l >= slog.LevelInfo:
		return "<6>"
	default:
		return "<7>"
	}
}

// prefixWriter writes prefix before each Write. Its mutex is held by
// journalHandler.Handle around the inner handler's single Write of a
// record, so prefix and record stay together.
type prefixWriter struct {
	mu     sync.Mutex
	out    io.Writer
	prefix string
	buf    []byte
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.buf = append(append(w.buf[:0], w.prefix...), p...)
	if _, err := w.out.Write(w.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

// journalHandler is a slog.Handler that prefixes each record written by
// inner (a text or JSON handler writing to w) with its journal priority.
// It is safe for concurrent use, as are the handlers derived from it.
type journalHandler struct {
	inner slog.Handler
	w     *prefixWriter
}

// newJournalHandler returns a handler writing to out through newInner with
// the priority prefix.
func newJournalHandler(out io.Writer, newInner func(io.Writer) slog.Handler) slog.Handler {
	w := &prefixWriter{out: out}
	return &journalHandler{inner: newInner(w), w: w}
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.w.mu.Lock()
	defer h.w.mu.Unlock()
	h.w.prefix = journalPriority(r.Level)
	return h.inner.Handle(ctx, r)
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &journalHandler{inner: h.inner.WithAttrs(as), w: h.w}
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{inner: h.inner.WithGroup(name), w: h.w}
}
