package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cellos/fleetd/internal/config"
	"github.com/cellos/fleetd/internal/depth"
	"github.com/cellos/fleetd/internal/drain"
	"github.com/cellos/fleetd/internal/exec"
	"github.com/cellos/fleetd/internal/metrics"
	"github.com/cellos/fleetd/internal/notify"
	"github.com/cellos/fleetd/internal/ops"
	"github.com/cellos/fleetd/internal/output"
	"github.com/cellos/fleetd/internal/pipeline"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/recovery"
	"github.com/cellos/fleetd/internal/schedule"
	"github.com/cellos/fleetd/internal/store"
)

// runAgent is the daemon: wire the store, protocol, pipeline, recovery and
// ops from cfg, pass the store self-test, work until signalled, drain. It
// returns the exit code (see run). unknown holds misspelt environment
// variables, to be warned about once the logger exists.
func runAgent(cfg config.Config, unknown map[string]string, getenv func(string) string, stdout, stderr io.Writer) int {
	supervisor, err := exec.Check(cfg.Supervisor)
	if err != nil {
		fmt.Fprintf(stderr, "fleetd: %s: %v\n", config.Supervisor, err)
		return 2
	}
	log := newLogger(cfg, stderr).With("node", cfg.NodeID)
	if len(unknown) > 0 {
		// Keyed by the unknown variable, valued by the closest known one.
		log.Warn("unknown variables ignored", "event", "config.unknown_vars", "did_you_mean", unknown)
	}
	m := metrics.New(cfg.Concurrency, version, shortRevision(), protocol.EndingLabels()...)
	prog := ops.NewProgress(time.Now())

	client, err := newS3Client(cfg, getenv, m, prog.S3Attempt)
	if err != nil {
		log.Error("S3 client", "event", "agent.s3_client_failed", "err", err)
		return 1
	}
	layout := store.NewLayout(cfg.Prefix, cfg.QueueName)
	storage := store.New(client, cfg.Bucket, s3Policy(cfg, m))
	proto := protocol.New(protocol.Config{
		Layout:      layout,
		Node:        cfg.NodeID,
		TTL:         cfg.LeaseTTL,
		MaxAttempts: cfg.MaxAttempts,
		Logger:      log,
		Metrics:     m,
	}, storage)

	// Signals are counted rather than handled with NotifyContext: the first
	// starts the drain, a second may cut it short.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	// Past the drain deadline, cells get the stop grace to exit and their
	// release two S3 request timeouts; then fleetd exits and leaves the rest
	// to recovery. See the stop-timeout formula in docs/operations.md, "Stopping: drain".
	d := drain.New(context.Background(), cfg.StopGrace+2*cfg.S3Timeout)
	// Readiness and liveness judge the poll at the slower of the two
	// intervals: with notifications on, either may be the current one.
	pollInterval := cfg.PollInterval
	pcfg := pipeline.Config{
		Node:         cfg.NodeID,
		Pool:         cfg.PoolID,
		Layout:       layout,
		Concurrency:  cfg.Concurrency,
		PollInterval: cfg.PollInterval,
		MaxSpecBytes: cfg.MaxSpecBytes,
		MaxAttempts:  cfg.MaxAttempts,
		CellTimeout:  cfg.CellTimeout,
		Freeze:       cfg.Freeze,
		Retries:      cfg.Retries,
		RetryBackoff: cfg.RetryBackoff,
		Logger:       log,
		Metrics:      m,
	}
	if cfg.Notify.URL != "" {
		pollInterval = max(pollInterval, cfg.Notify.PollInterval)
	}
	var sources []*notify.Source
	defer func() {
		for _, s := range sources {
			s.Close()
		}
	}()
	// fleetd_notify_connected says hints flow when they flow to every lane.
	var upMu sync.Mutex
	var up []bool
	connected := func(lane int) func(bool) {
		return func(ok bool) {
			upMu.Lock()
			defer upMu.Unlock()
			up[lane] = ok
			m.NotifyConnected(!slices.Contains(up, false))
		}
	}
	// withHints gives a pipeline the bucket notifications of its lane, when
	// they are on: a consumer of its own per lane (and pool).
	withHints := func(c pipeline.Config) (pipeline.Config, error) {
		if cfg.Notify.URL == "" {
			return c, nil
		}
		upMu.Lock()
		up = append(up, false)
		lane := len(up) - 1
		upMu.Unlock()
		h, err := dialNotify(cfg, c.Layout, c.Logger, m.NotifyEvent, connected(lane))
		if err != nil {
			return c, err
		}
		sources = append(sources, h)
		c.Hints, c.NetInterval = h, cfg.Notify.PollInterval
		return c, nil
	}
	runner := newRunner(cfg, supervisor, getenv, stdout, stderr)
	if cfg.OutputBytes > 0 {
		tails := output.NewTails(cfg.OutputBytes)
		runner.Output, pcfg.Output = tails.Line, tails
	}
	work := prog.Runner(runner)
	lanes := &laneProtocols{protos: map[string]*protocol.Protocol{cfg.QueueName: proto}, make: func(lane string) *protocol.Protocol {
		return protocol.New(protocol.Config{Layout: store.NewLayout(cfg.Prefix, lane), Node: cfg.NodeID, TTL: cfg.LeaseTTL,
			MaxAttempts: cfg.MaxAttempts, Logger: log, Metrics: m}, storage)
	}}
	// One lane, or several on one pool of workers (CELLOS_FLEET_LANES):
	// each lane its own protocol, lister, recovery and session.
	var p agentWork
	var rescuers []*recovery.Rescuer
	served := []*protocol.Protocol{proto}
	if len(cfg.Lanes) == 0 {
		if pcfg, err = withHints(pcfg); err != nil {
			log.Error("notifications", "event", "notify.dial_failed", "err", err)
			return 1
		}
		p = pipeline.New(pcfg, storage, proto, work, d)
		rescuers = append(rescuers, recovery.New(proto, d, cfg.LeaseTTL, log, nil))
	} else {
		var pipes []*pipeline.Pipeline
		var weights []int
		served = nil
		for _, l := range cfg.Lanes {
			lp := lanes.get(l.Name)
			served = append(served, lp)
			lcfg := pcfg
			lcfg.Layout, lcfg.Lane, lcfg.MultiLane = store.NewLayout(cfg.Prefix, l.Name), l.Name, true
			lcfg.Logger = log.With("queue_name", l.Name)
			if lcfg, err = withHints(lcfg); err != nil {
				lcfg.Logger.Error("notifications", "event", "notify.dial_failed", "err", err)
				return 1
			}
			pipes = append(pipes, pipeline.New(lcfg, storage, lp, work, d))
			weights = append(weights, l.Weight)
			rescuers = append(rescuers, recovery.New(lp, d, cfg.LeaseTTL, log.With("queue_name", l.Name), nil))
		}
		p = pipeline.NewLanes(pipes, weights, cfg.LaneStrict, cfg.Concurrency, d)
	}
	prog.CountCells(p.Cells)
	scheduler := schedule.New(schedule.Config{Prefix: cfg.Prefix, Interval: cfg.PollInterval, IdleInterval: max(cfg.PollInterval, time.Minute),
		MaxSpecBytes: cfg.MaxSpecBytes, Logger: log}, storage, lanes)
	beat := ops.HeartbeatConfig{Interval: cfg.Heartbeat, Bucket: cfg.Bucket, Prefix: cfg.Prefix, QueueName: cfg.QueueName,
		Pool: cfg.PoolID, Concurrency: cfg.Concurrency, InFlight: p.Cells, Logger: log}

	log.Info("fleetd starting", "event", "agent.starting", "version", versionString(), "bucket", cfg.Bucket, "prefix", cfg.Prefix,
		"queue_name", cfg.QueueName, "pool_id", cfg.PoolID, "concurrency", cfg.Concurrency,
		"supervisor", supervisor, "endpoint", redactURL(cfg.Endpoint), "s3_rps", cfg.S3RPS,
		"notify_url", notify.Redact(cfg.Notify.URL), "notify_subject", cfg.Notify.Subject)
	var sessions atomic.Pointer[[]*protocol.Session]
	if cfg.MetricsAddr != "" {
		stop, err := ops.Serve(ops.Config{Addr: cfg.MetricsAddr, Metrics: m.Handler(), Agent: p, Progress: prog,
			Draining: func() bool { return d.Intake().Err() != nil }, Logger: log,
			Reachable: func() bool {
				all := sessions.Load()
				if all == nil {
					return true // not started yet: the self-test's retries say so
				}
				for _, s := range *all {
					if !s.Valid() {
						return false
					}
				}
				return true
			},
			Depth: func() (depth.Lane, bool) {
				pending, oldest, ok := m.Depth()
				return depth.Lane{Lane: cfg.QueueName, Pending: pending, Running: p.Cells(),
					OldestPendingSeconds: oldest.Seconds(), Source: "poll"}, ok
			},
			Concurrency: cfg.Concurrency, PollInterval: pollInterval, LeaseTTL: cfg.LeaseTTL, S3Timeout: cfg.S3Timeout})
		if err != nil {
			log.Error("metrics server", "event", "ops.listen_failed", "addr", cfg.MetricsAddr, "err", err)
			return 1
		}
		defer stop()
	}
	mode, code, ok := selfTest(proto, log, sigs)
	if !ok {
		return code
	}
	storage.SetDeleteMode(mode)
	m.StoreMode(string(mode))
	log.Info("store self-test passed", "event", "selftest.passed", "mode", string(mode))
	var started []*protocol.Session
	for _, pr := range served {
		sess, err := startSession(pr, log, sigs)
		if err != nil {
			return 1
		}
		started = append(started, sess)
	}
	sessions.Store(&started)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The heartbeat lasts until the last cell is finished; recovery
		// stops with intake.
		beating, stopBeat := context.WithCancel(context.Background())
		var background sync.WaitGroup
		background.Go(func() { ops.Heartbeat(beating, beat) })
		for _, r := range rescuers {
			background.Go(func() { r.Run(d.Intake()) })
		}
		background.Go(func() { scheduler.Run(d.Intake()) })
		p.Run()
		stopBeat()
		background.Wait()
	}()

	stopped := awaitDrain(cfg, log, sigs, d, p.Cells)
	<-done
	closing, cancel := context.WithTimeout(context.Background(), 2*cfg.S3Timeout)
	for _, sess := range started {
		sess.Close(closing)
	}
	cancel()
	log.Info("drain complete", "event", "drain.complete", "cells_stopped", stopped)
	return 0
}

// untilSignal returns a context that ends at the first signal on sigs (or
// when cancelled): a start-up step that retries gives up then.
func untilSignal(sigs <-chan os.Signal) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// startSession creates the agent's session, the one object whose renewals
// keep every lease of the agent alive, retrying while the store does not
// answer; a signal gives up.
func startSession(proto *protocol.Protocol, log *slog.Logger, sigs <-chan os.Signal) (*protocol.Session, error) {
	ctx, cancel := untilSignal(sigs)
	defer cancel()
	for try := 0; ; try++ {
		s, err := proto.StartSession(ctx)
		if err == nil {
			return s, nil
		}
		if ctx.Err() != nil {
			log.Info("signalled before the session started; exiting", "event", "agent.exit")
			return nil, err
		}
		log.Warn("session not created; retrying", "event", "session.create_retry", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(min(time.Duration(1<<min(try, 5))*time.Second, 30*time.Second)):
		}
	}
}

// dialNotify connects to the NATS server of cfg.Notify for the lane of
// layout. The lane's agents of one pool share its events, each event going
// to one of them.
func dialNotify(cfg config.Config, layout store.Layout, log *slog.Logger, counted func(string), connected func(bool)) (*notify.Source, error) {
	n := cfg.Notify
	var opts []nats.Option
	if n.Creds != "" {
		opts = append(opts, nats.UserCredentials(n.Creds))
	}
	if n.TLSCA != "" {
		opts = append(opts, nats.RootCAs(n.TLSCA))
	}
	if n.TLSCert != "" {
		opts = append(opts, nats.ClientCert(n.TLSCert, n.TLSKey))
	}
	return notify.Dial(notify.Config{
		URL:       n.URL,
		Subject:   n.Subject,
		Bucket:    cfg.Bucket,
		Dir:       layout.Dir(store.Pending),
		URLKeys:   n.URLKeys,
		Group:     layout.Dir(store.Pending) + "\x00" + cfg.PoolID,
		Options:   opts,
		Logger:    log,
		Counted:   counted,
		Connected: connected,
	})
}

// awaitDrain waits for the first signal, closes intake and drains the cells
// in flight, bounded by the drain timeout if one is set; a second signal then
// cuts the drain short. It reports whether cells had to be stopped.
func awaitDrain(cfg config.Config, log *slog.Logger, sigs <-chan os.Signal, d *drain.Drainer, inFlight func() int) (stopped bool) {
	sig := <-sigs
	d.CloseIntake() // before the log line, so whoever reads it sees the node not ready
	log.Info("drain started: no new claims; waiting for cells in flight", "event", "drain.started",
		"signal", sig.String(), "in_flight", inFlight(), "drain_timeout_ms", cfg.DrainTimeout.Milliseconds())
	deadline, cut := context.WithCancel(context.Background())
	defer cut()
	if cfg.DrainTimeout > 0 {
		deadline, cut = context.WithTimeout(deadline, cfg.DrainTimeout)
		defer cut()
	}
	go func() {
		for s := range sigs {
			if cfg.DrainTimeout > 0 {
				log.Warn("second signal: stopping cells now and requeueing their specs", "event", "drain.second_signal.stop", "signal", s.String())
				cut()
				return
			}
			log.Warn("second signal ignored: cells keep running until they end (set "+string(config.DrainTimeout)+" to bound the drain)", "event", "drain.second_signal.ignored",
				"signal", s.String(), "in_flight", inFlight())
		}
	}()
	return d.Drain(deadline)
}

// selfTest runs the store self-test until it passes, and returns the delete
// mode it chose. A definite failure stops fleetd with exit 2; no answer is
// retried with backoff (the store or the network may still be coming up),
// and a signal meanwhile exits 0.
func selfTest(proto *protocol.Protocol, log *slog.Logger, sigs <-chan os.Signal) (mode store.DeleteMode, code int, ok bool) {
	ctx, cancel := untilSignal(sigs)
	defer cancel()
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		mode, err := proto.SelfTest(ctx)
		switch {
		case err == nil:
			return mode, 0, true
		case errors.Is(err, protocol.ErrUnfit):
			log.Error("store self-test failed: fleetd cannot run on this bucket", "event", "selftest.failed", "err", err)
			return "", 2, false
		case ctx.Err() != nil:
			log.Info("signalled during the store self-test; exiting", "event", "selftest.interrupted")
			return "", 0, false
		}
		log.Warn("store self-test got no answer; retrying", "event", "selftest.retry", "err", err, "retry_in_ms", wait.Milliseconds())
		select {
		case <-ctx.Done():
			log.Info("signalled during the store self-test; exiting", "event", "selftest.interrupted")
			return "", 0, false
		case <-time.After(wait):
		}
	}
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // validated by parseConfig
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// newRunner builds the supervisor runner. In JSON log mode each relayed line
// is a JSON record on the stream it came from, so the log stays parseable
// whatever a supervisor prints; in text mode lines pass through prefixed with
// the spec id. The supervisor inherits fleetd's environment, secrets included,
// so their values are redacted from what it prints.
func newRunner(cfg config.Config, supervisor string, getenv func(string) string, stdout, stderr io.Writer) *exec.Runner {
	r := &exec.Runner{Path: supervisor, Grace: cfg.StopGrace, Stdout: stdout, Stderr: stderr}
	for _, name := range []string{"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"} {
		if v := getenv(name); v != "" {
			r.Redact = append(r.Redact, v)
		}
	}
	if cfg.LogFormat == "json" {
		// Their own handlers: supervisor output is relayed at every log level.
		out := slog.New(slog.NewJSONHandler(stdout, nil)).With("node", cfg.NodeID)
		errOut := slog.New(slog.NewJSONHandler(stderr, nil)).With("node", cfg.NodeID)
		r.Lines = func(specID, stream, line string) {
			log := out
			if stream == "stderr" {
				log = errOut
			}
			log.Info("supervisor output", "event", "supervisor.output", "spec_id", specID, "stream", stream, "line", line)
		}
	}
	return r
}

// laneProtocols is the claim protocol per lane, for the schedules: a
// schedule submits to the lane it was added for, whichever this agent
// serves.
type laneProtocols struct {
	mu     sync.Mutex
	protos map[string]*protocol.Protocol
	make   func(lane string) *protocol.Protocol
}

var _ schedule.Submitter = (*laneProtocols)(nil)

func (l *laneProtocols) SubmitDue(ctx context.Context, quit <-chan struct{}, lane string, d protocol.Due) (bool, error) {
	return l.get(lane).SubmitDue(ctx, quit, d)
}

// get returns the protocol of lane, made on first use.
func (l *laneProtocols) get(lane string) *protocol.Protocol {
	l.mu.Lock()
	defer l.mu.Unlock()
	p, ok := l.protos[lane]
	if !ok {
		p = l.make(lane)
		l.protos[lane] = p
	}
	return p
}

// agentWork is the pipeline of one lane or the Lanes of several.
type agentWork interface {
	Run()
	Cells() int
	HostBroken() error
	LastPoll() time.Time
}

var (
	_ agentWork = (*pipeline.Pipeline)(nil)
	_ agentWork = (*pipeline.Lanes)(nil)
)
