package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// pprofServer serves net/http/pprof on PPROF_ADDR, a loopback address
// (config refuses any other), on its own listener and mux: profiles expose
// the process's memory and can cost seconds of CPU, so they are never on
// the API's listener, where every client could reach them.
type pprofServer struct {
	addr string
	srv  *http.Server
	log  *slog.Logger
}

func newPprofServer(addr string, log *slog.Logger) *pprofServer {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return &pprofServer{addr: addr, log: log, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}}
}

// start listens and serves; a failure to listen goes to errc (start-up
// stops: the operator asked for the endpoint).
func (p *pprofServer) start(errc chan<- error) {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		errc <- fmt.Errorf("PPROF_ADDR=%q: %w", p.addr, err)
		return
	}
	p.log.Info("profiling endpoint listening", "addr", ln.Addr().String(), "path", "/debug/pprof/")
	go func() {
		if err := p.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			p.log.Warn("profiling endpoint stopped", "err", err)
		}
	}()
}

// stop closes the endpoint at once: a profile being taken is cut off.
func (p *pprofServer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := p.srv.Shutdown(ctx); err != nil {
		p.srv.Close()
	}
}
