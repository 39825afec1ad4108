// Package ops is what operators watch of a running agent: the HTTP server
// for /metrics, /healthz and /readyz, the progress those probes judge, and
// the heartbeat log event.
package ops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/cellos/fleetd/internal/depth"
)

// Agent is what the probes and the heartbeat read of the running agent;
// *pipeline.Pipeline implements it.
type Agent interface {
	LastPoll() time.Time // last successful listing of pending/ (zero: never)
	Cells() int          // cells in flight now
	HostBroken() error   // why the supervisor cannot be started on this host, if it cannot
}

// Config is what Serve serves and the settings the probes judge by.
type Config struct {
	Addr     string       // listen address, e.g. 127.0.0.1:9464
	Metrics  http.Handler // serves /metrics
	Agent    Agent
	Progress *Progress
	Draining func() bool // true once intake has closed
	// Reachable is false while the agent's session could not be renewed in
	// time: its cells are frozen (nil: always reachable).
	Reachable func() bool
	// Depth, if set, is served at /depth for autoscalers; ok is false until
	// there is something to say (before the first poll).
	Depth  func() (l depth.Lane, ok bool)
	Logger *slog.Logger

	Concurrency  int
	PollInterval time.Duration
	LeaseTTL     time.Duration
	S3Timeout    time.Duration
}

type server struct{ cfg Config }

// Serve listens on cfg.Addr and serves /metrics, /healthz, /readyz (and
// /depth when cfg.Depth is set) until
// stop is called; stop waits up to 5 s for requests in progress. /healthz
// fails when the agent is wedged, /readyz when it takes no work; health.live
// and health.ready say what those mean. Serve returns once it is listening,
// so a bad address is an error here rather than a log line later.
func Serve(cfg Config) (stop func(), err error) {
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, err
	}
	s := &server{cfg: cfg}
	mux := http.NewServeMux()
	mux.Handle("/metrics", cfg.Metrics)
	mux.HandleFunc("/healthz", s.healthz)
	mux.HandleFunc("/readyz", s.readyz)
	if cfg.Depth != nil {
		mux.HandleFunc("/depth", s.depth)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			cfg.Logger.Error("metrics server stopped", "event", "ops.stopped", "err", err)
		}
	}()
	cfg.Logger.Info("serving /metrics, /healthz, /readyz", "event", "ops.serving", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

// depth serves the lane's depth from the agent's last poll: no request of
// its own, so a scaler may ask as often as it likes.
func (s *server) depth(w http.ResponseWriter, _ *http.Request) {
	l, ok := s.cfg.Depth()
	if !ok {
		http.Error(w, "no poll of pending/ yet", http.StatusServiceUnavailable)
		return
	}
	depth.Write(w, l)
}

func (s *server) healthz(w http.ResponseWriter, _ *http.Request) {
	if err := s.health().live(); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (s *server) readyz(w http.ResponseWriter, _ *http.Request) {
	// A broken host stops claiming, so it is not ready; once draining, the
	// drain is the better reason to give.
	if broken := s.cfg.Agent.HostBroken(); broken != nil && !s.cfg.Draining() {
		http.Error(w, fmt.Sprintf("supervisor cannot be started: %v", broken), http.StatusServiceUnavailable)
		return
	}
	if s.cfg.Reachable != nil && !s.cfg.Reachable() && !s.cfg.Draining() {
		http.Error(w, "store unreachable: the session could not be renewed in time; cells are frozen until it is", http.StatusServiceUnavailable)
		return
	}
	msg, err := s.health().ready()
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, msg)
}
