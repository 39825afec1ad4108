// The requeue intent: docs/PROTOCOL.md, "Intents" and "Requeue".

package protocol

import (
	"context"
	"errors"
	"fmt"

	"github.com/cellos/fleetd/internal/queue"
)

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
	c, err := p.acquire(ctx, id, leaseBody{State: stateRequeueing, Intent: intentRequeue, FailedETag: o.ETag})
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
