// The requeue intent: docs/PROTOCOL.md, "Intents" and "Requeue".

package protocol

import (
	"context"
	"errors"
	"fmt"

	"github.com/cellos/fleetd/internal/store"
)

// Requeue moves a spec from failed/ back to pending/ with a fresh attempt
// count. It holds the spec's lease meanwhile, so no run of the requeued spec
// can write a new failure that the delete of failed/ would then remove; and it
// reads failed/ only under the lease, so the version it moves is the one it
// deletes — not an older one that an identical rerun's failure (same bytes,
// same ETag) replaced between a read and the lease. ErrHeld: the id is in
// flight.
func (p *Protocol) Requeue(ctx context.Context, id string) error {
	c, err := p.acquire(ctx, id, leaseBody{State: stateRequeueing, Intent: intentRequeue})
	if err != nil {
		return fmt.Errorf("requeue %s: %w", id, err)
	}
	quit := make(chan struct{})
	close(quit) // a tool does not wait out an outage
	var o store.Object
	err = c.act(ctx, quit, "read failed", func(ctx context.Context) (err error) {
		o, err = p.store.Get(ctx, p.cfg.Layout.Key(store.Failed, id), recoverLimit)
		return err
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		c.end(ctx, quit)
		return fmt.Errorf("requeue %s: %w", id, err)
	case err != nil:
		return fmt.Errorf("requeue %s: %w", id, c.stop(err))
	}
	c.Body = o.Body
	if err := p.requeue(ctx, quit, c, o.Body, 0); err != nil {
		return fmt.Errorf("requeue %s: %w", id, c.stop(err))
	}
	p.finishRequeue(ctx, quit, c, o.ETag)
	return nil
}

// finishRequeue completes a requeue once pending/ holds the spec: failed/
// goes. Under the requeue's lease, handed from holder to successor, nobody
// writes failed/: a successor that does not know the version its first
// holder read (failedETag "") deletes the one there.
func (p *Protocol) finishRequeue(ctx context.Context, quit <-chan struct{}, c *Claim, failedETag string) {
	failedKey := p.cfg.Layout.Key(store.Failed, c.id)
	err := c.act(ctx, quit, "check pending", func(ctx context.Context) error {
		_, err := p.store.Head(ctx, p.cfg.Layout.Key(store.Pending, c.id))
		return err
	})
	if err == nil && failedETag == "" {
		err = c.act(ctx, quit, "read failed", func(ctx context.Context) error {
			o, err := p.store.Head(ctx, failedKey)
			failedETag = o.ETag
			return err
		})
	}
	if err == nil {
		err = c.act(ctx, quit, "delete failed", func(ctx context.Context) error {
			return p.store.Delete(ctx, failedKey, failedETag)
		})
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrPrecondition) {
		p.leave(c, err)
		return
	}
	c.end(ctx, quit)
}
