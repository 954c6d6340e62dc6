package metrics

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/l2lb/l2lb/control"
)

// DefaultListen is where the metrics and the status page are served unless told otherwise:
// loopback only, so that a balancer facing the internet never exposes its state by default.
const DefaultListen = "127.0.0.1:9781"

// Handler serves /metrics (Prometheus exposition from a registry of its own), /status.json (the
// same JSON as `l2lb status --json`) and / (the live HTML status page), all read-only.
func Handler(status func() control.Status) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		NewCollector(status),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	mux := http.NewServeMux()
	// ContinueOnError: one bad series must not hide all the others from the operator.
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, r *http.Request) {
		b, err := json.MarshalIndent(status(), "", "  ")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(append(b, '\n'))
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		var buf bytes.Buffer
		// Render fully before answering, so a template error is a clean 500, not half a page.
		if err := renderPage(&buf, status(), time.Now()); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Security-Policy", pageCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		w.Write(buf.Bytes())
	})
	return mux
}

// ListenAndServe serves Handler(status) on addr (DefaultListen if empty) until ctx is done.
func ListenAndServe(ctx context.Context, addr string, status func() control.Status) error {
	if addr == "" {
		addr = DefaultListen
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	return Serve(ctx, ln, status)
}

// Serve serves Handler(status) on ln until ctx is done, then shuts down gracefully.
func Serve(ctx context.Context, ln net.Listener, status func() control.Status) error {
	srv := &http.Server{
		Handler: Handler(status),
		// Slowloris protection: a client must send its headers promptly.
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
	}
	shutDown := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(shutDown)
		// Scrapes in flight may finish; a stuck client is cut off after the grace period.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	})
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		<-shutDown
		return nil
	}
	stop()
	return fmt.Errorf("metrics: %w", err)
}
