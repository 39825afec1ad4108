// The end of a run: docs/PROTOCOL.md, "Finish" (a result) and "Run" (a
// release back to pending/).

package protocol

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// Finish records the result of the run and ends the claim: the result under
// completed/ or failed/, then claimed/ and the lease deleted. The result is
// retried for as long as the lease is held; it is never written without it.
func (c *Claim) Finish(ctx context.Context, quit <-chan struct{}, rec Record) error {
	cleanup, err := c.WriteResult(ctx, rec)
	if err != nil {
		return err
	}
	cleanup(ctx, quit)
	return nil
}

// The steps of a finished cell's result (its output, then its record): a
// node holds on to them, in memory, for as long as the store cannot be
// reached.
const (
	stepWriteOutput = "write output"
	stepWriteResult = "write result"
)

// WriteResult is Finish in two halves: it writes the result and returns the
// clean-up (claimed/, then the lease), which the caller runs when it likes —
// the spec is settled once the result is durable, so a worker need not wait
// for the two deletes. The lease stays held, and kept alive, until the
// clean-up ends it.
func (c *Claim) WriteResult(ctx context.Context, rec Record) (cleanup func(ctx context.Context, quit <-chan struct{}), err error) {
	c.setState(stateFinishing)
	rec.node, rec.token, rec.attempts, rec.retry = c.p.cfg.Node, c.origin, c.Attempt, c.Retries()
	state := store.Failed
	if rec.Outcome == Completed {
		state = store.Completed
	}
	// Not quit: a draining node gives up waiting for the store only at ctx's
	// end (the drain's abort bound). Giving up on a finished cell because its
	// lease lapsed on a slow renewal would leave it to recovery, which runs it
	// again (issue 8, case 8). Cleanup after the result may give up: recovery
	// finds the result by its token.
	if by := c.CancelledBy(); by != "" && c.intentIs(intentRun) {
		// Asked to cancel the spec (the cell may have ended first): copies
		// waiting under pending/.delayed/ are the spec too, and nobody
		// promotes them while we hold the lease, so they go first.
		if _, err := c.p.cancelDelayed(ctx, nil, c, by); err != nil {
			return nil, c.stop(err)
		}
	}
	if err = c.writeOutput(ctx, rec); err != nil {
		return nil, c.stop(err)
	}
	err = c.act(ctx, nil, stepWriteResult, func(ctx context.Context) error {
		_, err := c.p.store.Put(ctx, c.p.cfg.Layout.Key(state, c.id), c.Body, store.PutOptions{Metadata: rec.metadata()})
		return err
	})
	if err != nil {
		return nil, c.stop(err)
	}
	return func(ctx context.Context, quit <-chan struct{}) {
		// One after the other, not side by side: claimed/'s ETag is the
		// spec's MD5, the same for a resubmission of these bytes, so only our
		// lease makes the delete ours. Sent beside the lease's delete, a late
		// or retried one could remove the claimed/ of a new claim made in
		// between.
		c.clearClaimed(ctx, quit)
		c.endRun(ctx, quit)
		c.p.cfg.Metrics.Finished(string(rec.ending()))
		attrs := []any{"event", "spec.finished", "state", string(state), "outcome", string(rec.Outcome), "attempt", c.Attempt}
		if rec.Reason != "" {
			attrs = append(attrs, "reason", rec.Reason)
		}
		c.log.Info("spec finished", attrs...)
	}, nil
}

// Release returns the spec to pending/ and ends the claim. countRun says
// whether the run that started counts against the spec's attempts (not for a
// cell stopped by a drain or by this node's own fencing). A spec someone
// cancelled is filed cancelled instead, whatever stopped its cell.
func (c *Claim) Release(ctx context.Context, quit <-chan struct{}, countRun bool) error {
	attempts := c.Attempt - 1
	if countRun {
		attempts = c.Attempt
	}
	cancelled, err := c.release(ctx, quit, attempts)
	if err != nil {
		return c.stop(err)
	}
	if !cancelled {
		c.p.cfg.Metrics.Finished(string(Released))
		c.log.Info("spec returned to pending/", "event", "spec.released", "attempts", attempts)
	}
	return nil
}

// release returns the spec to pending/ with attempts and ends the claim, or,
// when the lease carries a cancel mark, files it cancelled (cancelled true).
func (c *Claim) release(ctx context.Context, quit <-chan struct{}, attempts int) (cancelled bool, err error) {
	// The lease says "releasing" before pending/ is written: a cancel mark
	// that landed first makes this compare-and-swap read it (and honour it
	// below); a cancel that comes later sees the state and waits for the
	// spec to be pending again. Either way the cancel is not dropped.
	c.mu.Lock()
	c.lease.State, c.lease.Released = stateReleasing, true
	c.mu.Unlock()
	if err := c.act(ctx, quit, "mark releasing", c.renew); err != nil {
		return false, err
	}
	if by := c.CancelledBy(); by != "" {
		cleanup, err := c.WriteResult(ctx, Record{Outcome: Cancelled, Reason: "cancelled by " + by, Finished: time.Now()})
		if err != nil {
			return false, err
		}
		cleanup(ctx, quit)
		return true, nil
	}
	if err := c.p.requeue(ctx, quit, c, c.Body, attempts); err != nil {
		return false, err
	}
	c.clearClaimed(ctx, quit)
	c.end(ctx, quit)
	return false, nil
}

// requeue writes body to pending/ create-only. A pending/ object already
// there (the version we never consumed, or a resubmission) stands for it.
func (p *Protocol) requeue(ctx context.Context, quit <-chan struct{}, c *Claim, body []byte, attempts int) error {
	// The retry state travels with the spec (a run lost to a dead node does
	// not reset its retries).
	meta := c.Retries().metadata()
	meta[metaAttempts] = strconv.Itoa(attempts)
	err := c.act(ctx, quit, "write pending", func(ctx context.Context) error {
		_, err := p.store.Put(ctx, p.cfg.Layout.Key(store.Pending, c.id), body, store.PutOptions{IfAbsent: true, Metadata: meta})
		if errors.Is(err, store.ErrUnknown) && errors.Is(err, store.ErrPrecondition) {
			return nil // our own create, or another version: either stands
		}
		return err
	})
	if errors.Is(err, store.ErrPrecondition) {
		c.log.Info("pending/ already holds this id; keeping it", "event", "spec.release_kept")
		return nil
	}
	return err
}

// clearClaimed deletes claimed/ if this claim wrote or adopted it.
func (c *Claim) clearClaimed(ctx context.Context, quit <-chan struct{}) {
	if c.claimedETag == "" {
		return
	}
	// Under our lease nobody else writes claimed/, so its ETag (the spec's MD5,
	// the same for every claim of these bytes) is still ours.
	err := c.act(ctx, quit, "delete claimed", func(ctx context.Context) error {
		return c.p.store.Delete(ctx, c.p.cfg.Layout.Key(store.Claimed, c.id), c.claimedETag)
	})
	if err != nil {
		c.log.Warn("claimed/ not deleted", "event", "claim.delete_failed", "err", err)
	}
}
