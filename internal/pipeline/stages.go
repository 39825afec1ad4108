package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/sourcegraph/conc/panics"

	"github.com/cellos/fleetd/internal/exec"
	"github.com/cellos/fleetd/internal/gate"
	"github.com/cellos/fleetd/internal/lister"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/store"
)

// process takes one pending key as far as it goes on this node: peek, gate,
// claim, run, finish. Each stage logs why it stops a key.
func (p *Pipeline) process(it lister.Item) {
	log := p.log.With("spec_id", it.ID)
	ctx := p.drain.Intake()
	// A host that cannot start the supervisor takes nothing but its probe.
	ticket, ok := p.host.admit(ctx)
	if !ok {
		return
	}
	defer p.host.done(ticket)

	spec, ok := p.peek(ctx, log, it)
	if !ok || !p.gate(log, it, spec) {
		return
	}
	// From here on the spec is this node's to finish, so nothing may start
	// once the drain has begun.
	if !p.drain.Begin() {
		return
	}
	defer p.drain.End()
	c, ok := p.claim(ctx, log, it, spec)
	if !ok {
		return
	}
	defer func() {
		// A panic past the run (the run's own is a failed cell, see run):
		// stop renewing, so the lease goes stale and recovery settles the
		// spec. work logs the panic.
		if r := recover(); r != nil {
			c.Drop()
			panic(r)
		}
	}()
	p.finish(c, p.run(c), ticket)
}

// peek reads the pending spec, the version gate judges and claim takes. A
// spec over the size limit is rejected unread.
func (p *Pipeline) peek(ctx context.Context, log *slog.Logger, it lister.Item) (protocol.Spec, bool) {
	obj, err := p.store.Get(ctx, it.Key, p.cfg.MaxSpecBytes)
	spec := protocol.Spec{ID: it.ID, Key: it.Key, ETag: obj.ETag, Modified: obj.LastModified, VersionID: obj.VersionID, Body: obj.Body,
		Attempts: protocol.PriorAttempts(obj.Metadata, p.cfg.MaxAttempts), Retry: protocol.ParseRetry(obj.Metadata)}
	switch {
	case errors.Is(err, store.ErrNotFound):
		log.Debug("spec gone before peek: taken by another node", "event", "peek.gone")
		p.intake.Stale(it)
		return spec, false
	case errors.Is(err, store.ErrTooLarge):
		p.reject(log, it, spec, fmt.Sprintf("spec is %d bytes, over the limit of %d", obj.Size, p.cfg.MaxSpecBytes))
		return spec, false
	case err != nil:
		if ctx.Err() == nil {
			log.Warn("peek failed; will retry", "event", "peek.retry", "err", err)
		}
		return spec, false
	}
	return spec, true
}

// gate rejects a spec that is not a JSON object and leaves one of another
// pool alone, remembered at its ETag so it is not read again while unchanged.
func (p *Pipeline) gate(log *slog.Logger, it lister.Item, spec protocol.Spec) bool {
	view, err := gate.Parse(spec.Body)
	if err != nil {
		p.reject(log, it, spec, err.Error())
		return false
	}
	if !gate.Accepts(p.cfg.Pool, view) {
		log.Debug("gate: spec belongs to another pool", "event", "gate.skip", "spec_pool", view.PoolID, "pool_id", p.cfg.Pool)
		p.m.GateSkip()
		p.intake.Skip(it.Key, spec.ETag)
		return false
	}
	return true
}

// claim takes the spec for this node. Losing it to another node means the
// listing is out of date.
func (p *Pipeline) claim(ctx context.Context, log *slog.Logger, it lister.Item, spec protocol.Spec) (Claim, bool) {
	c, err := p.proto.Claim(p.drain.Abort(), ctx.Done(), spec)
	switch {
	case errors.Is(err, protocol.ErrHeld), errors.Is(err, protocol.ErrGone):
		log.Debug("claim conflict: another node has or had the spec", "event", "claim.conflict", "err", err)
		p.intake.Stale(it)
		return nil, false
	case err != nil:
		log.Warn("claim failed; will retry", "event", "claim.retry", "err", err)
		return nil, false
	}
	return c, true
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
		log.Debug("reject: spec held, changed or gone since it was read; judged again if still pending", "event", "reject.skipped", "err", err)
		p.intake.Stale(it)
	case err != nil:
		log.Warn("reject failed; will retry", "event", "reject.failed", "err", err)
	}
}

// Causes for ending a cell early, told apart with context.Cause.
var (
	errFenced      = errors.New("lease not held")
	errLost        = errors.New("taken over by another node")
	errCellTimeout = errors.New("cell timeout")
	errCancelled   = errors.New("cancelled")
)

// cellEnd is how a cell's run ended.
type cellEnd struct {
	res               exec.Result
	cause             error // why the cell's context ended, if it did
	killed            bool  // killed while frozen: it did not end on its own
	panicked          any   // the run's panic, if it had one
	started, finished time.Time
	output            *protocol.Output // nil: output off
}

// run runs the supervisor until it exits, or the cell timeout, the lease's
// fencing or the drain deadline stops it.
func (p *Pipeline) run(c Claim) cellEnd {
	// A mark its holder read before the cell started (a lease marked while
	// claiming, heard through the session's ring) starts no cell: the tool
	// may already have said the holder stops it.
	select {
	case <-c.Cancelled():
		now := time.Now()
		return cellEnd{res: exec.Result{ExitCode: -1, Stopped: true}, cause: errCancelled, started: now, finished: now}
	default:
	}
	ctx, cancel := context.WithCancelCause(p.drain.Work())
	defer cancel(nil)
	if p.cfg.CellTimeout > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, p.cfg.CellTimeout, errCellTimeout)
		defer stop()
	}
	started := make(chan exec.Cell, 1)
	held := make(chan struct{})
	var killed atomic.Bool
	go func() {
		defer close(held)
		p.hold(ctx, cancel, c, started, &killed)
	}()
	end := cellEnd{started: time.Now()}
	defer func() {
		cancel(nil)
		<-held
	}()
	// A panic in the run fails the spec like any other failure: caught
	// here, the claim is still ours to end.
	var pc panics.Catcher
	if p.cfg.Output != nil {
		p.cfg.Output.Open(c.ID())
	}
	pc.Try(func() { end.res = p.runCell(ctx, c, started) })
	if p.cfg.Output != nil {
		if body, truncated, ok := p.cfg.Output.Take(c.ID()); ok {
			end.output = &protocol.Output{Body: body, Truncated: truncated}
		}
	}
	if r := pc.Recovered(); r != nil {
		end.panicked = r.Value
		c.Log().Error("worker panic in the run", "event", "worker.panic", "err", r.AsError())
	}
	end.cause, end.finished = context.Cause(ctx), time.Now()
	end.killed = killed.Load()
	return end
}

// hold lets the cell make progress only while its claim is valid: a holder
// that cannot renew must stop its cell before another node may judge it
// stale and run the spec again. With Freeze the cell is frozen where it
// stands and thawed when the session is renewed — it never knew — or killed,
// never to run a line more, once the claim turns out to be taken over;
// without, it is stopped. fleetd cancel reaches the holder through its lease.
// hold returns when ctx ends.
func (p *Pipeline) hold(ctx context.Context, cancel context.CancelCauseFunc, c Claim, started <-chan exec.Cell, killed *atomic.Bool) {
	var cell exec.Cell
	kill := func() {
		if cell != nil {
			killed.Store(true)
			_ = cell.Kill()
		}
	}
	frozen, cancelled := false, c.Cancelled()
	setFrozen := func(f bool, event string) {
		frozen = f
		d := int64(-1)
		if f {
			d = 1
		}
		p.m.CellHold(event, int(p.frozen.Add(d)))
	}
	defer func() {
		if frozen {
			p.frozen.Add(-1)
		}
	}()
	for {
		valid, lost, changed := c.Hold()
		switch {
		case lost:
			cancel(errLost)
			kill()
			if frozen {
				setFrozen(false, "killed")
				c.Log().Warn("cell killed: the spec was taken over while this node could not reach the store; writing nothing for it", "event", "cell.killed")
			}
			return
		case !valid && !frozen && !p.cfg.Freeze:
			cancel(errFenced)
			return
		case !valid && !frozen:
			if cell != nil {
				if err := cell.Freeze(); err != nil {
					c.Log().Warn("cell not frozen", "event", "cell.freeze_failed", "err", err)
				}
			}
			setFrozen(true, "frozen")
			c.Log().Warn("cell frozen: the session could not be renewed in time", "event", "cell.frozen")
		case valid && frozen:
			if cell != nil {
				_ = cell.Thaw()
			}
			setFrozen(false, "thawed")
			c.Log().Info("cell thawed: the session was renewed", "event", "cell.thawed")
		}
		select {
		case <-changed:
		case cell = <-started:
			started = nil
			if frozen {
				_ = cell.Freeze() // started just as the claim lapsed
			}
		case <-cancelled:
			cancelled = nil
			cancel(errCancelled)
			if frozen {
				kill() // a frozen cell would get SIGTERM only once thawed
			}
		case <-ctx.Done():
			if frozen {
				kill() // stopped for good (drain deadline, timeout): not thawed to die
			}
			return
		}
	}
}

// finish ends the claim as the run's end calls for: a result written, or the
// spec returned to pending/ when the run was not the spec's fault.
func (p *Pipeline) finish(c Claim, end cellEnd, ticket uint64) {
	res := end.res
	res.Stopped = res.Stopped || end.killed
	rec := protocol.Record{Started: end.started, Finished: end.finished, Result: &res, Output: end.output}
	abort, quit := p.drain.Abort(), p.drain.Intake().Done()
	switch {
	case errors.Is(end.cause, errLost):
		// Another node runs the spec: nothing of ours is written.
		c.Drop()
		p.m.Finished(string(protocol.Lost))
		c.Log().Warn("lease taken over by another node; not finishing", "event", "lease.lost")
		return
	case end.panicked != nil:
		rec.Outcome, rec.Reason, rec.Result = protocol.Failed, fmt.Sprintf("worker panic: %v", end.panicked), nil
	case res.Stopped && errors.Is(end.cause, errFenced):
		c.Log().Warn("cell stopped: the lease could not be renewed in time; returning the spec", "event", "cell.fenced", "result", res.String())
		p.logEnd(c, c.Release(abort, quit, false))
		return
	case res.Stopped && errors.Is(end.cause, errCancelled):
		rec.Outcome, rec.Reason = protocol.Cancelled, "cancelled by "+c.CancelledBy()
		c.Log().Warn("cell stopped: cancelled", "by", c.CancelledBy(), "event", "spec.cancelled")
	case res.Stopped && errors.Is(end.cause, errCellTimeout):
		// Filed as failed (0.5.1 readers know two outcomes); the reason
		// names the outcome.
		rec.Outcome, rec.Reason, rec.TimedOut = protocol.Failed, string(protocol.Timeout), true
	case res.Stopped:
		c.Log().Warn("cell stopped by the drain deadline; releasing to pending/", "event", "cell.drain_stopped", "result", res.String())
		p.logEnd(c, c.Release(abort, quit, false))
		return
	case res.StartErr != nil:
		// The host's fault, not the spec's: the spec goes back as it came,
		// its attempt not counted, and the node stops claiming.
		p.host.startFailed(ticket, res.StartErr)
		c.Log().Warn("supervisor could not be started; returning the spec to pending/", "event", "cell.start_failed", "err", res.StartErr)
		p.logEnd(c, c.Release(abort, quit, false))
		return
	case res.Succeeded():
		rec.Outcome = protocol.Completed
	default:
		rec.Outcome, rec.Reason = protocol.Failed, "supervisor "+res.String()
	}
	if p.retryLater(c, rec) { // retry.go
		return
	}
	// The cell ended on its own: its result is written, never rerun, for as
	// long as the lease is ours — held in memory while the store cannot be
	// reached, and written once the session is renewed.
	cleanup, err := c.WriteResult(abort, rec)
	if err != nil {
		p.logEnd(c, err)
		return
	}
	// The spec is settled once its result is durable: the clean-up's two
	// deletes go on beside the next spec, so the worker takes its next key two
	// round trips sooner. The drain still waits for them.
	if !p.drain.Begin() {
		cleanup(abort, quit)
		return
	}
	go func() {
		defer p.drain.End()
		cleanup(abort, quit)
	}()
}

// logEnd logs how a claim ended when it did not end cleanly.
func (p *Pipeline) logEnd(c Claim, err error) {
	switch {
	case err == nil:
	case errors.Is(err, protocol.ErrLost):
		c.Log().Warn("lease taken over by another node; not finishing", "event", "lease.lost")
	default:
		c.Log().Warn("spec left to recovery", "event", "spec.left_to_recovery", "err", err)
	}
}

// runCell runs the supervisor on a private copy of the spec.
func (p *Pipeline) runCell(ctx context.Context, c Claim, started chan<- exec.Cell) exec.Result {
	f, err := os.CreateTemp("", "fleetd-spec-*.json") // mode 0600
	if err != nil {
		return exec.Result{ExitCode: -1, StartErr: fmt.Errorf("spec temp file: %w", err)}
	}
	defer os.Remove(f.Name())
	_, werr := f.Write(c.Body())
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return exec.Result{ExitCode: -1, StartErr: fmt.Errorf("spec temp file: %w", werr)}
	}
	p.cells.Add(1)
	defer p.cells.Add(-1)
	p.m.CellStarted()
	c.Log().Info("cell started", "event", "cell.started")
	res := p.runner.Run(ctx, f.Name(), c.ID(), func(cell exec.Cell) {
		p.host.started()
		started <- cell
	})
	p.m.CellEnded(res.Duration)
	c.Log().Info("cell ended", "event", "cell.ended", "result", res.String(), "duration_ms", res.Duration.Milliseconds())
	return res
}
