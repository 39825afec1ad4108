// Package pipeline is fleetd's work loop: it takes pending keys from the lister
// and moves each spec through peek, gate, claim, run and finalize on a bounded
// pool of workers, and recovers the specs of nodes that died.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/sourcegraph/conc"
	"github.com/sourcegraph/conc/panics"
	"github.com/sourcegraph/conc/pool"

	"github.com/cellos/fleetd/internal/drain"
	"github.com/cellos/fleetd/internal/exec"
	"github.com/cellos/fleetd/internal/gate"
	"github.com/cellos/fleetd/internal/lister"
	"github.com/cellos/fleetd/internal/metrics"
	"github.com/cellos/fleetd/internal/queue"
)

// Store is the S3 queue as the pipeline uses it; *queue.Store implements it.
type Store interface {
	List(ctx context.Context, prefix string, fn func(queue.Page) error) error
	Get(ctx context.Context, key string, limit int64) (queue.Object, error)
	Head(ctx context.Context, key string) (queue.Object, error)
	Put(ctx context.Context, key string, body []byte, opt queue.PutOptions) (string, error)
	Copy(ctx context.Context, src, dst string, metadata map[string]string) error
	Delete(ctx context.Context, key string) error
}

var _ Store = (*queue.Store)(nil)

// Runner runs the supervisor on one spec file; *exec.Runner implements it.
type Runner interface {
	Run(ctx context.Context, specPath, specID string) exec.Result
}

var _ Runner = (*exec.Runner)(nil)

// Config is what the pipeline needs to know. Durations must be positive, except
// CellTimeout where zero means none.
type Config struct {
	Node         string
	Pool         string
	Bucket       string // for heartbeat events only
	Prefix       string // for heartbeat events only
	QueueName    string // for heartbeat events only
	Layout       queue.Layout
	Concurrency  int
	PollInterval time.Duration
	Heartbeat    time.Duration
	MaxSpecBytes int64
	LeaseTTL     time.Duration
	MaxAttempts  int
	CellTimeout  time.Duration
	Logger       *slog.Logger
	Metrics      *metrics.Metrics
}

// Pipeline moves specs from pending/ to completed/ or failed/.
type Pipeline struct {
	cfg    Config
	store  Store
	runner Runner
	drain  *drain.Drainer
	lister *lister.Lister
	log    *slog.Logger
	m      *metrics.Metrics
	cells  atomic.Int64 // supervisors running now
	polled atomic.Int64 // unix nanos of the last successful listing of pending/
}

// New returns a pipeline. It starts nothing until Run. A nil cfg.Metrics gets
// a private set nobody serves.
func New(cfg Config, store Store, runner Runner, d *drain.Drainer) *Pipeline {
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New(cfg.Concurrency, "", "")
	}
	p := &Pipeline{cfg: cfg, store: store, runner: runner, drain: d, log: cfg.Logger, m: cfg.Metrics}
	p.lister = lister.New(lister.Config{
		List:     p.listPending,
		ID:       func(key string) (string, bool) { return cfg.Layout.ID(queue.Pending, key) },
		Slots:    cfg.Concurrency,
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
	workers := pool.New().WithMaxGoroutines(p.cfg.Concurrency)

	hbCtx, stopHeartbeat := context.WithCancel(context.Background())
	var background conc.WaitGroup
	background.Go(func() { p.heartbeat(hbCtx) })
	background.Go(func() { p.recoverLoop(intake) })

	p.lister.Run(intake, func(it lister.Item) {
		workers.Go(func() {
			defer p.lister.Done(it)
			var pc panics.Catcher
			pc.Try(func() { p.process(it) })
			if r := pc.Recovered(); r != nil {
				// A spec caught mid-cell keeps its lease; recovery returns it.
				p.log.Error("worker panic", "spec_id", it.ID, "err", r.AsError())
			}
		})
	})
	workers.Wait()
	stopHeartbeat()
	background.Wait()
}

// Cells returns the number of supervisors running now.
func (p *Pipeline) Cells() int { return int(p.cells.Load()) }

// LastPoll returns when pending/ was last listed successfully (zero: never).
func (p *Pipeline) LastPoll() time.Time {
	if n := p.polled.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

func (p *Pipeline) listPending(ctx context.Context, fn func([]lister.Entry) error) error {
	err := p.store.List(ctx, p.cfg.Layout.Dir(queue.Pending), func(page queue.Page) error {
		entries := make([]lister.Entry, len(page.Objects))
		for i, o := range page.Objects {
			entries[i] = lister.Entry{Key: o.Key, ETag: o.ETag}
		}
		return fn(entries)
	})
	if err == nil {
		now := time.Now()
		p.polled.Store(now.UnixNano())
		p.m.Polled(now)
	}
	return err
}

// process takes one pending key as far as it goes on this node.
func (p *Pipeline) process(it lister.Item) {
	log := p.log.With("spec_id", it.ID)
	ctx := p.drain.Intake()

	obj, err := p.store.Get(ctx, it.Key, p.cfg.MaxSpecBytes)
	switch {
	case errors.Is(err, queue.ErrNotFound):
		log.Debug("spec gone before peek: taken by another node")
		p.lister.Stale()
		return
	case errors.Is(err, queue.ErrTooLarge):
		p.reject(log, it, fmt.Sprintf("spec is %d bytes, over the limit of %d", obj.Size, p.cfg.MaxSpecBytes))
		return
	case err != nil:
		if ctx.Err() == nil {
			log.Warn("peek failed; will retry", "err", err)
		}
		return
	}
	spec, err := gate.Parse(obj.Body)
	if err != nil {
		p.reject(log, it, err.Error())
		return
	}
	if !gate.Accepts(p.cfg.Pool, spec) {
		log.Debug("gate: spec belongs to another pool", "spec_pool", spec.PoolID, "pool_id", p.cfg.Pool)
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
	attempts, _ := strconv.Atoi(obj.Metadata[metaAttempts])
	c := &cell{
		id:       it.ID,
		body:     obj.Body,
		attempts: attempts + 1,
		token:    newToken(),
		log:      log,
	}
	if !p.claim(c, it.Key, obj.ETag) {
		return
	}
	p.runAndFinalize(c)
}

// reject moves a spec that can never run to failed/ with the reason, without
// claiming it: every node would reach the same verdict on the same bytes.
func (p *Pipeline) reject(log *slog.Logger, it lister.Item, reason string) {
	if !p.drain.Begin() {
		return
	}
	defer p.drain.End()
	ctx := context.Background()
	rec := record{node: p.cfg.Node, outcome: "rejected", reason: reason, finished: time.Now()}
	if err := p.store.Copy(ctx, it.Key, p.cfg.Layout.Key(queue.Failed, it.ID), rec.metadata()); err != nil {
		if !errors.Is(err, queue.ErrNotFound) {
			log.Error("reject: copy to failed/ failed; will retry", "err", err)
		}
		return
	}
	if err := p.store.Delete(ctx, it.Key); err != nil {
		log.Error("reject: delete from pending/ failed; will retry", "err", err)
		return
	}
	p.m.Finished(metrics.Rejected)
	log.Warn("spec rejected", "reason", reason)
}

// cell is one claimed spec on its way through this node.
type cell struct {
	id       string
	body     []byte
	attempts int    // runs started so far, this one included
	token    string // this claim's identity in the lease and the result record
	lease    lease
	leaseTag string // ETag of our current lease write
	log      *slog.Logger
}

// claim makes the spec this node's: claimed/ (create-only), confirm pending/ is
// the spec we read, lease, delete pending/. It reports whether the cell may run.
func (p *Pipeline) claim(c *cell, pendingKey, etag string) bool {
	ctx := context.Background() // a claim once sent is finished, drain or not
	claimedKey := p.cfg.Layout.Key(queue.Claimed, c.id)
	meta := map[string]string{metaNode: p.cfg.Node, metaAttempts: strconv.Itoa(c.attempts), metaToken: c.token}
	if _, err := p.store.Put(ctx, claimedKey, c.body, queue.PutOptions{IfAbsent: true, Metadata: meta}); err != nil {
		if errors.Is(err, queue.ErrPrecondition) {
			c.log.Debug("claim conflict: another node holds the spec")
			p.m.ClaimConflict()
			p.lister.Stale()
		} else {
			c.log.Warn("claim failed; will retry", "err", err)
		}
		return false
	}
	// Another node may have run and finalised this spec between our peek and
	// our claim; it deletes pending/ before it releases claimed/, so pending/
	// still holding what we read proves the claim is ours to use.
	head, err := p.store.Head(ctx, pendingKey)
	if err != nil || head.ETag != etag {
		if err != nil && !errors.Is(err, queue.ErrNotFound) {
			c.log.Warn("claim confirm failed; releasing", "err", err)
		} else {
			c.log.Debug("claim conflict: spec already finished elsewhere")
			p.m.ClaimConflict()
		}
		p.deleteOrLog(c.log, claimedKey)
		return false
	}
	c.lease = lease{Node: p.cfg.Node, Token: c.token, Epoch: 1, TTLMillis: p.cfg.LeaseTTL.Milliseconds(), Attempts: c.attempts, State: leaseRunning}
	tag, err := p.store.Put(ctx, p.leaseKey(c.id), c.lease.encode(), queue.PutOptions{IfAbsent: true})
	if err != nil {
		if errors.Is(err, queue.ErrPrecondition) {
			// We were slower than the orphan grace: a recoverer owns it now.
			c.log.Warn("claim taken over by recovery before the lease was written")
			return false
		}
		c.log.Warn("lease create failed; releasing", "err", err)
		p.deleteOrLog(c.log, claimedKey)
		return false
	}
	c.leaseTag = tag
	if err := p.store.Delete(ctx, pendingKey); err != nil {
		// Running now would leave pending/ behind to be run again.
		c.log.Warn("delete from pending/ failed; releasing", "err", err)
		p.deleteOrLog(c.log, claimedKey)
		p.deleteOrLog(c.log, p.leaseKey(c.id))
		return false
	}
	c.log.Info("claimed", "attempt", c.attempts)
	return true
}

// Causes for ending a cell early, told apart with context.Cause.
var (
	errLeaseLost   = errors.New("lease lost")
	errCellTimeout = errors.New("timeout")
)

func (p *Pipeline) runAndFinalize(c *cell) {
	ctx, cancel := context.WithCancelCause(p.drain.Work())
	defer cancel(nil)
	if p.cfg.CellTimeout > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, p.cfg.CellTimeout, errCellTimeout)
		defer stop()
	}

	keeperDone := make(chan struct{})
	keeperCtx, stopKeeper := context.WithCancel(context.Background())
	go func() {
		defer close(keeperDone)
		p.keepLease(keeperCtx, c, cancel)
	}()

	started := time.Now()
	res := p.runCell(ctx, c)
	stopKeeper()
	<-keeperDone

	rec := record{
		node: p.cfg.Node, token: c.token, attempts: c.attempts,
		started: started, finished: time.Now(), result: &res,
	}
	cause := context.Cause(ctx)
	switch {
	case errors.Is(cause, errLeaseLost):
		c.log.Warn("lease lost while running: another node took the spec over; not finalising", "result", res.String())
		p.m.Finished(metrics.Lost)
		return
	case p.drain.Work().Err() != nil:
		c.log.Warn("cell stopped by the drain deadline; releasing to pending/", "result", res.String())
		p.release(c)
		return
	case errors.Is(cause, errCellTimeout):
		rec.outcome, rec.reason = "failed", "timeout"
	case res.StartErr != nil:
		rec.outcome, rec.reason = "failed", "supervisor could not be started: "+res.StartErr.Error()
	case res.Succeeded():
		rec.outcome = "completed"
	default:
		rec.outcome, rec.reason = "failed", "supervisor "+res.String()
	}
	p.finalize(c, rec)
}

// runCell runs the supervisor on a private copy of the spec.
func (p *Pipeline) runCell(ctx context.Context, c *cell) exec.Result {
	f, err := os.CreateTemp("", "fleetd-spec-*.json") // mode 0600
	if err != nil {
		return exec.Result{ExitCode: -1, StartErr: fmt.Errorf("spec temp file: %w", err)}
	}
	defer os.Remove(f.Name())
	_, werr := f.Write(c.body)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return exec.Result{ExitCode: -1, StartErr: fmt.Errorf("spec temp file: %w", werr)}
	}
	p.cells.Add(1)
	defer p.cells.Add(-1)
	p.m.CellStarted()
	c.log.Info("cell started")
	res := p.runner.Run(ctx, f.Name(), c.id)
	p.m.CellEnded(res.Duration)
	c.log.Info("cell ended", "result", res.String(), "duration_ms", res.Duration.Milliseconds())
	return res
}

// finalize records the result and clears the claim. The lease write first
// fences: if the lease was taken over, our late result must not land.
func (p *Pipeline) finalize(c *cell, rec record) {
	ctx := context.Background()
	if !p.fence(c, leaseFinishing) {
		p.m.Finished(metrics.Lost)
		return
	}
	state := queue.Completed
	if rec.outcome != "completed" {
		state = queue.Failed
	}
	if _, err := p.store.Put(ctx, p.cfg.Layout.Key(state, c.id), c.body, queue.PutOptions{Metadata: rec.metadata()}); err != nil {
		// The lease stays; recovery returns the spec to pending/ after the ttl.
		c.log.Error("finalize: writing the result failed; recovery will requeue the spec", "err", err)
		return
	}
	p.deleteOrLog(c.log, p.cfg.Layout.Key(queue.Claimed, c.id))
	p.deleteOrLog(c.log, p.leaseKey(c.id))
	switch {
	case rec.outcome == "completed":
		p.m.Finished(metrics.Completed)
	case rec.reason == "timeout":
		p.m.Finished(metrics.Timeout)
	default:
		p.m.Finished(metrics.Failed)
	}
	attrs := []any{"state", string(state), "attempt", c.attempts}
	if rec.reason != "" {
		attrs = append(attrs, "reason", rec.reason)
	}
	c.log.Info("spec finalised", attrs...)
}

// release puts a spec this node holds back in pending/ with its attempt count
// unchanged, for a cell stopped by the drain rather than by its own fault.
func (p *Pipeline) release(c *cell) {
	if !p.fence(c, leaseReleasing) {
		p.m.Finished(metrics.Lost)
		return
	}
	p.requeue(c.log, c.id, c.body, c.attempts-1)
}

// requeue writes spec back to pending/ and clears claimed/ and the lease.
func (p *Pipeline) requeue(log *slog.Logger, id string, body []byte, attempts int) {
	ctx := context.Background()
	meta := map[string]string{metaAttempts: strconv.Itoa(attempts)}
	_, err := p.store.Put(ctx, p.cfg.Layout.Key(queue.Pending, id), body, queue.PutOptions{IfAbsent: true, Metadata: meta})
	if err != nil && !errors.Is(err, queue.ErrPrecondition) {
		log.Error("requeue: write to pending/ failed; recovery will retry", "err", err)
		return
	}
	if err != nil {
		// A pending/ spec of the same id exists (resubmitted, or never deleted
		// by a claim that died); it stands for this one.
		log.Info("requeue: pending/ already holds this id; keeping it")
	}
	p.deleteOrLog(log, p.cfg.Layout.Key(queue.Claimed, id))
	p.deleteOrLog(log, p.leaseKey(id))
	p.m.Finished(metrics.Released)
	log.Info("spec returned to pending/", "attempts", attempts)
}

func (p *Pipeline) deleteOrLog(log *slog.Logger, key string) {
	if err := p.store.Delete(context.Background(), key); err != nil {
		log.Error("delete failed", "key", key, "err", err)
	}
}

func (p *Pipeline) leaseKey(id string) string { return p.cfg.Layout.Key(queue.Leases, id) }

// heartbeat logs the 0.5.1 heartbeat event until ctx ends.
func (p *Pipeline) heartbeat(ctx context.Context) {
	t := time.NewTicker(p.cfg.Heartbeat)
	defer t.Stop()
	for {
		p.log.Info("heartbeat",
			"event_type", "dev.cellos.events.fleet.v1.heartbeat",
			"bucket", p.cfg.Bucket, "prefix", p.cfg.Prefix,
			"queue_name", p.cfg.QueueName, "pool_id", p.cfg.Pool,
			"in_flight", p.Cells(), "concurrency", p.cfg.Concurrency)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
