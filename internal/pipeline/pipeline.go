// Package pipeline is fleetd's work loop: a lister goroutine feeds pending
// keys into a channel drained by N workers, each taking a key through the
// stages peek, gate, claim, run and finish.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/sourcegraph/conc"
	"github.com/sourcegraph/conc/panics"

	"github.com/cellos/fleetd/internal/drain"
	"github.com/cellos/fleetd/internal/exec"
	"github.com/cellos/fleetd/internal/gate"
	"github.com/cellos/fleetd/internal/lister"
	"github.com/cellos/fleetd/internal/metrics"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/queue"
)

// Store is the S3 queue as the pipeline reads it; *queue.Store implements
// it. Every write goes through the protocol.
type Store interface {
	List(ctx context.Context, prefix string, fn func(queue.Page) error) error
	Get(ctx context.Context, key string, limit int64) (queue.Object, error)
}

var _ Store = (*queue.Store)(nil)

// Runner runs the supervisor on one spec file, calling started (if not nil)
// once it runs; *exec.Runner implements it.
type Runner interface {
	Run(ctx context.Context, specPath, specID string, started func()) exec.Result
}

var _ Runner = (*exec.Runner)(nil)

// Config is what the pipeline needs to know. Durations must be positive, except
// CellTimeout where zero means none.
type Config struct {
	Node         string
	Pool         string
	Layout       queue.Layout
	Concurrency  int
	PollInterval time.Duration
	MaxSpecBytes int64
	MaxAttempts  int
	CellTimeout  time.Duration
	Logger       *slog.Logger
	Metrics      *metrics.Metrics
}

// Pipeline moves specs from pending/ to completed/ or failed/.
type Pipeline struct {
	cfg    Config
	store  Store
	proto  *protocol.Protocol
	runner Runner
	drain  *drain.Drainer
	lister *lister.Lister
	host   *host
	log    *slog.Logger
	m      *metrics.Metrics
	cells  atomic.Int64 // supervisors running now
	polled atomic.Int64 // unix nanos of the last successful listing of pending/
}

// New returns a pipeline. It starts nothing until Run. A nil cfg.Metrics gets
// a private set nobody serves.
func New(cfg Config, store Store, proto *protocol.Protocol, runner Runner, d *drain.Drainer) *Pipeline {
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New(cfg.Concurrency, "", "")
	}
	p := &Pipeline{cfg: cfg, store: store, proto: proto, runner: runner, drain: d, log: cfg.Logger, m: cfg.Metrics,
		host: newHost(cfg.PollInterval, cfg.Logger, cfg.Metrics)}
	p.lister = lister.New(lister.Config{
		List:     p.listPending,
		ID:       func(key string) (string, error) { return cfg.Layout.ParseID(queue.Pending, key) },
		Interval: cfg.PollInterval,
		Logger:   cfg.Logger,
		Bounced:  cfg.Metrics.ListingBounced,
	})
	return p
}

// Run works the queue until the drainer's intake closes, then waits for every
// worker to finish. Cells already started run to their end unless the
// drainer's Work context ends.
func (p *Pipeline) Run() {
	intake := p.drain.Intake()
	// Unbuffered: the lister's send completes only when a worker takes the
	// key, so the number of workers is the one bound on work in flight.
	keys := make(chan lister.Item)
	var workers conc.WaitGroup
	for range p.cfg.Concurrency {
		workers.Go(func() { p.work(keys) })
	}
	p.lister.Run(intake, keys)
	close(keys) // intake closed: the workers finish what they hold and return
	workers.Wait()
}

// work takes keys through the stages until keys is closed.
func (p *Pipeline) work(keys <-chan lister.Item) {
	for it := range keys {
		var pc panics.Catcher
		pc.Try(func() { p.process(it) })
		if r := pc.Recovered(); r != nil {
			// A claim caught mid-way keeps its lease; recovery returns it.
			p.log.Error("worker panic", "spec_id", it.ID, "err", r.AsError())
		}
		p.lister.Done(it)
	}
}

// HostBroken returns why this host cannot start the supervisor, nil when it
// can. While it cannot, the node claims nothing but a probe now and then.
func (p *Pipeline) HostBroken() error { return p.host.err() }

// Cells returns the number of supervisors running now.
func (p *Pipeline) Cells() int { return int(p.cells.Load()) }

// LastPoll returns when a page of pending/ was last listed successfully (zero:
// never).
func (p *Pipeline) LastPoll() time.Time {
	if n := p.polled.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// listPending lists pending/ for the lister. Every page fetched is a
// successful poll: a busy node may spend an interval on one page waiting for
// a free worker, and it is still polling.
func (p *Pipeline) listPending(ctx context.Context, fn func([]lister.Entry) error) error {
	return p.store.List(ctx, p.cfg.Layout.Dir(queue.Pending), func(page queue.Page) error {
		now := time.Now()
		p.polled.Store(now.UnixNano())
		p.m.Polled(now)
		entries := make([]lister.Entry, len(page.Objects))
		for i, o := range page.Objects {
			entries[i] = lister.Entry{Key: o.Key, ETag: o.ETag}
		}
		return fn(entries)
	})
}

// process takes one pending key as far as it goes on this node.
func (p *Pipeline) process(it lister.Item) {
	log := p.log.With("spec_id", it.ID)
	ctx := p.drain.Intake()
	// A host that cannot start the supervisor takes nothing but its probe.
	ticket, ok := p.host.admit(ctx)
	if !ok {
		return
	}
	defer p.host.done(ticket)

	obj, err := p.store.Get(ctx, it.Key, p.cfg.MaxSpecBytes)
	spec := protocol.Spec{ID: it.ID, Key: it.Key, ETag: obj.ETag, Body: obj.Body,
		Attempts: protocol.PriorAttempts(obj.Metadata, p.cfg.MaxAttempts)}
	switch {
	case errors.Is(err, queue.ErrNotFound):
		log.Debug("spec gone before peek: taken by another node")
		p.lister.Stale(it)
		return
	case errors.Is(err, queue.ErrTooLarge):
		p.reject(log, it, spec, fmt.Sprintf("spec is %d bytes, over the limit of %d", obj.Size, p.cfg.MaxSpecBytes))
		return
	case err != nil:
		if ctx.Err() == nil {
			log.Warn("peek failed; will retry", "err", err)
		}
		return
	}
	view, err := gate.Parse(obj.Body)
	if err != nil {
		p.reject(log, it, spec, err.Error())
		return
	}
	if !gate.Accepts(p.cfg.Pool, view) {
		log.Debug("gate: spec belongs to another pool", "spec_pool", view.PoolID, "pool_id", p.cfg.Pool)
		p.m.GateSkip()
		p.lister.Reject(it.Key, obj.ETag)
		return
	}
	// From here on the spec is this node's to finish, so nothing may start
	// once the drain has begun.
	if !p.drain.Begin() {
		return
	}
	defer p.drain.End()
	c, err := p.proto.Claim(p.drain.Abort(), ctx.Done(), spec)
	switch {
	case errors.Is(err, protocol.ErrHeld), errors.Is(err, protocol.ErrGone):
		log.Debug("claim conflict: another node has or had the spec", "err", err)
		p.lister.Stale(it)
		return
	case err != nil:
		log.Warn("claim failed; will retry", "err", err)
		return
	}
	p.runAndFinalize(c, ticket)
}

// reject files a spec that can never run under failed/ with the reason,
// without running it: every node would reach the same verdict on the same bytes.
func (p *Pipeline) reject(log *slog.Logger, it lister.Item, spec protocol.Spec, reason string) {
	if !p.drain.Begin() {
		return
	}
	defer p.drain.End()
	err := p.proto.Reject(p.drain.Abort(), p.drain.Intake().Done(), spec, reason)
	switch {
	case errors.Is(err, protocol.ErrHeld), errors.Is(err, protocol.ErrGone):
		log.Debug("reject: spec held, changed or gone since it was read; judged again if still pending", "err", err)
		p.lister.Stale(it)
	case err != nil:
		log.Warn("reject failed; will retry", "err", err)
	}
}

// Causes for ending a cell early, told apart with context.Cause.
var (
	errFenced      = errors.New("lease not held")
	errCellTimeout = errors.New("timeout")
)

func (p *Pipeline) runAndFinalize(c *protocol.Claim, ticket uint64) {
	ctx, cancel := context.WithCancelCause(p.drain.Work())
	defer cancel(nil)
	if p.cfg.CellTimeout > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, p.cfg.CellTimeout, errCellTimeout)
		defer stop()
	}
	// A holder that cannot renew its lease stops its own cell before another
	// node may judge the lease stale and run the spec again.
	go func() {
		select {
		case <-c.Fenced():
			cancel(errFenced)
		case <-ctx.Done():
		}
	}()

	started := time.Now()
	res := p.runCell(ctx, c)
	rec := protocol.Record{Started: started, Finished: time.Now(), Result: &res}
	abort, quit := p.drain.Abort(), p.drain.Intake().Done()
	cause := context.Cause(ctx)
	switch {
	case res.Stopped && errors.Is(cause, errFenced):
		c.Log().Warn("cell stopped: the lease could not be renewed in time; returning the spec", "result", res.String())
		p.settle(c, c.Release(abort, quit, false))
		return
	case res.Stopped && errors.Is(cause, errCellTimeout):
		rec.Outcome, rec.Reason = protocol.Timeout, "timeout"
	case res.Stopped:
		c.Log().Warn("cell stopped by the drain deadline; releasing to pending/", "result", res.String())
		p.settle(c, c.Release(abort, quit, false))
		return
	case res.StartErr != nil:
		// The host's fault, not the spec's: the spec goes back as it came,
		// its attempt not counted, and the node stops claiming.
		p.host.startFailed(ticket, res.StartErr)
		c.Log().Warn("supervisor could not be started; returning the spec to pending/", "err", res.StartErr)
		p.settle(c, c.Release(abort, quit, false))
		return
	case res.Succeeded():
		rec.Outcome = protocol.Completed
	default:
		rec.Outcome, rec.Reason = protocol.Failed, "supervisor "+res.String()
	}
	// The cell ended on its own: its result is written, never rerun, for as
	// long as the lease is ours.
	p.settle(c, c.Finish(abort, quit, rec))
}

// settle logs how a claim ended when it did not end cleanly.
func (p *Pipeline) settle(c *protocol.Claim, err error) {
	switch {
	case err == nil:
	case errors.Is(err, protocol.ErrLost):
		c.Log().Warn("lease taken over by another node; not finalising")
	default:
		c.Log().Warn("spec left to recovery", "err", err)
	}
}

// runCell runs the supervisor on a private copy of the spec.
func (p *Pipeline) runCell(ctx context.Context, c *protocol.Claim) exec.Result {
	f, err := os.CreateTemp("", "fleetd-spec-*.json") // mode 0600
	if err != nil {
		return exec.Result{ExitCode: -1, StartErr: fmt.Errorf("spec temp file: %w", err)}
	}
	defer os.Remove(f.Name())
	_, werr := f.Write(c.Body)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return exec.Result{ExitCode: -1, StartErr: fmt.Errorf("spec temp file: %w", werr)}
	}
	p.cells.Add(1)
	defer p.cells.Add(-1)
	p.m.CellStarted()
	c.Log().Info("cell started")
	res := p.runner.Run(ctx, f.Name(), c.ID(), p.host.started)
	p.m.CellEnded(res.Duration)
	c.Log().Info("cell ended", "result", res.String(), "duration_ms", res.Duration.Milliseconds())
	return res
}
