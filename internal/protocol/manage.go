package protocol

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cellos/fleetd/internal/queue"
)

// Reject files a spec that can never run under failed/ with the reason,
// without running it. It acts on the version read (spec.ETag) only, under the
// spec's lease like every other move: a resubmission landing meanwhile is
// neither deleted nor filed with the old version's reason. spec.Body may be
// nil for a spec too large to read; it is then copied server-side.
func (p *Protocol) Reject(ctx context.Context, quit <-chan struct{}, spec Spec, reason string) error {
	c, err := p.acquire(ctx, spec.ID, leaseBody{State: stateRejecting, PendingETag: spec.ETag})
	if err != nil {
		return err
	}
	c.Body = spec.Body
	rec := Record{Outcome: Rejected, Reason: reason, Finished: time.Now(), node: p.cfg.Node, token: c.token}
	failedKey := p.cfg.Layout.Key(queue.Failed, spec.ID)
	err = c.act(ctx, quit, "write rejection", func(ctx context.Context) error {
		if spec.Body != nil {
			// The body we judged, not whatever pending/ holds now.
			head, err := p.store.Head(ctx, spec.Key)
			if err == nil && head.ETag != spec.ETag {
				return fmt.Errorf("%s: %w", spec.Key, ErrGone)
			}
			if err != nil {
				return err
			}
			_, err = p.store.Put(ctx, failedKey, spec.Body, queue.PutOptions{Metadata: rec.metadata()})
			return err
		}
		return p.store.Copy(ctx, spec.Key, failedKey, queue.CopyOptions{SourceIfMatch: spec.ETag, Metadata: rec.metadata()})
	})
	if err != nil {
		if errors.Is(err, ErrGone) || errors.Is(err, queue.ErrNotFound) || errors.Is(err, queue.ErrPrecondition) {
			c.end(ctx, quit) // changed since we judged it: judge again next poll
			return fmt.Errorf("reject %s: %w", spec.ID, ErrGone)
		}
		return c.stop(err)
	}
	err = c.act(ctx, quit, "delete pending", func(ctx context.Context) error {
		return p.store.Delete(ctx, spec.Key, spec.ETag)
	})
	if err != nil && !errors.Is(err, queue.ErrPrecondition) {
		return c.stop(err)
	}
	c.end(ctx, quit)
	p.cfg.Metrics.Finished(string(Rejected))
	c.log.Warn("spec rejected", "reason", reason)
	return nil
}

// Requeue moves a spec from failed/ back to pending/ with a fresh attempt
// count. It holds the spec's lease meanwhile, so no run of the requeued spec
// can write a new failure that the delete of failed/ would then remove.
// ErrHeld: the id is in flight.
func (p *Protocol) Requeue(ctx context.Context, id string) error {
	failedKey := p.cfg.Layout.Key(queue.Failed, id)
	o, err := p.store.Get(ctx, failedKey, recoverLimit)
	if err != nil {
		return fmt.Errorf("requeue %s: %w", id, err)
	}
	c, err := p.acquire(ctx, id, leaseBody{State: stateRequeueing, FailedETag: o.ETag})
	if err != nil {
		return fmt.Errorf("requeue %s: %w", id, err)
	}
	c.Body = o.Body
	quit := make(chan struct{})
	close(quit) // a tool does not wait out an outage
	if err := p.requeue(ctx, quit, c, o.Body, 0); err != nil {
		return fmt.Errorf("requeue %s: %w", id, c.stop(err))
	}
	p.finishRequeue(ctx, quit, c, o.ETag)
	return nil
}

// finishRequeue completes a requeue once pending/ holds the spec: failed/ goes.
func (p *Protocol) finishRequeue(ctx context.Context, quit <-chan struct{}, c *Claim, failedETag string) {
	err := c.act(ctx, quit, "check pending", func(ctx context.Context) error {
		_, err := p.store.Head(ctx, p.cfg.Layout.Key(queue.Pending, c.id))
		return err
	})
	if err == nil {
		// Under our lease nobody writes failed/ for this id: its ETag is the
		// version we moved.
		err = c.act(ctx, quit, "delete failed", func(ctx context.Context) error {
			return p.store.Delete(ctx, p.cfg.Layout.Key(queue.Failed, c.id), failedETag)
		})
	}
	if err != nil && !errors.Is(err, queue.ErrNotFound) && !errors.Is(err, queue.ErrPrecondition) {
		p.leave(c, err)
		return
	}
	c.end(ctx, quit)
}
