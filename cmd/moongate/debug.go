package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"strings"
	"time"
)

// memProfileRate is the runtime's heap-profile sampling rate for a
// command line: Go's default (one sample per 512 KiB allocated) for
// `serve --debug-listen`, whose /debug/pprof/heap reports it, and 0 for
// everything else. Sampling is on by default once the binary contains the
// profile handlers; its bucket table (about 1.4 MiB, touched at random) and
// its buckets grow with every new allocation stack, memory the daemon has
// no use for without the handlers.
func memProfileRate(args []string) int {
	if len(args) > 0 && args[0] == "serve" {
		for _, a := range args[1:] {
			if a == "--" {
				break
			}
			name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if strings.HasPrefix(a, "-") && name == "debug-listen" {
				return runtime.MemProfileRate
			}
		}
	}
	return 0
}

// serveDebug serves Go's profiling handlers (/debug/pprof/...) on addr,
// which must be a loopback address: profiles reveal memory contents and
// cost CPU, so they are never offered to the network. It returns a
// function that stops the server.
func serveDebug(addr string, log *slog.Logger) (func(), error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("address %q is not a loopback address", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("debug listener stopped", "err", err)
		}
	}()
	log.Info("profiling handlers on loopback", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}
