// The prune intent: docs/PROTOCOL.md, "Intents".

package protocol

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// Prune deletes the result at key (under completed/ or failed/) if, under
// the spec's lease, it is still the version listed (etag) and still older
// than olderThan on the server's clock. A result's ETag is the spec's MD5,
// the same for every run of those bytes: the lease keeps any run from
// writing a new result meanwhile, and the age read under it tells a fresh
// result of a rerun from the one judged. ErrGone: it changed or went, and
// stays; ErrHeld: the id is in flight.
func (p *Protocol) Prune(ctx context.Context, key, etag string, olderThan time.Duration) error {
	id, st, ok := p.resultID(key)
	if !ok {
		return fmt.Errorf("prune %s: not a result key", key)
	}
	c, err := p.acquire(ctx, id, leaseBody{State: statePruning, Intent: intentPrune, ResultKey: key, ResultETag: etag})
	if err != nil {
		return fmt.Errorf("prune %s: %w", key, err)
	}
	quit := make(chan struct{})
	close(quit) // a tool does not wait out an outage
	var head store.Object
	err = c.act(ctx, quit, "check "+string(st), func(ctx context.Context) (err error) {
		head, err = p.store.Head(ctx, key)
		return err
	})
	if err == nil && (head.ETag != etag || head.ServerTime.Sub(head.LastModified) <= olderThan) {
		err = fmt.Errorf("%s: rewritten since it was listed: %w", key, ErrGone)
	}
	if err == nil {
		err = c.act(ctx, quit, "delete "+string(st), func(ctx context.Context) error {
			return p.store.Delete(ctx, key, etag)
		})
	}
	switch {
	case err == nil:
		// The output goes with its result, still under the lease: no run
		// can write a new one meanwhile.
		if err := c.deleteOutput(ctx, quit); err != nil {
			c.log.Warn("output not deleted with its result", "event", "prune.output_left", "err", err)
		}
		c.end(ctx, quit)
		return nil
	case errors.Is(err, ErrGone), errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrPrecondition):
		c.end(ctx, quit)
		return fmt.Errorf("prune %s: %w", key, ErrGone)
	}
	return fmt.Errorf("prune %s: %w", key, c.stop(err))
}

// resultID returns the id and state of a result key.
func (p *Protocol) resultID(key string) (string, store.Area, bool) {
	for _, st := range []store.Area{store.Completed, store.Failed} {
		if id, ok := p.cfg.Layout.ID(st, key); ok {
			return id, st, true
		}
	}
	return "", "", false
}
