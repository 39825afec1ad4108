// The submit intent: docs/PROTOCOL.md, "Intents".

package protocol

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// ErrPending: pending/ already holds the id (Submit without replace).
var ErrPending = errors.New("already pending")

// Submit writes body to pending/<id> under the spec's lease. A create-only
// PUT whose answer is lost is retried, and without the lease the retry could
// land a second copy after a node had consumed and run the first; while the
// submitter holds the lease, no claim can consume what it wrote. Without
// replace a spec already pending is refused (ErrPending); with it, the pending
// version is overwritten. A spec in flight is refused either way (ErrHeld).
func (p *Protocol) Submit(ctx context.Context, id string, body []byte, replace bool) error {
	return p.SubmitWith(ctx, id, body, SubmitOptions{Replace: replace})
}

// SubmitOptions are how a spec is submitted.
type SubmitOptions struct {
	// Replace overwrites a pending version of the id (not with NotBefore).
	Replace bool
	// Metadata goes on the object written (RetryLimitMetadata, say).
	Metadata map[string]string
	// NotBefore, if set, delays the spec: it is written under its delayed
	// key (store.Layout.DelayedKey), create-only, and made pending when due.
	NotBefore time.Time
}

// SubmitWith is Submit with options: a retry limit of its own, a time not
// to start before.
func (p *Protocol) SubmitWith(ctx context.Context, id string, body []byte, opt SubmitOptions) error {
	c, err := p.acquire(ctx, id, leaseBody{State: stateSubmitting, Intent: intentSubmit})
	if err != nil {
		return fmt.Errorf("submit %s: %w", id, err)
	}
	quit := make(chan struct{})
	close(quit) // a tool does not wait out an outage
	key, ifAbsent := p.cfg.Layout.Key(store.Pending, id), !opt.Replace
	if !opt.NotBefore.IsZero() {
		// Under the id's lease a delayed spec is not promoted either, so a
		// retried create cannot land a second copy after a run of the first.
		key, ifAbsent = p.cfg.Layout.DelayedKey(id, opt.NotBefore), true
	}
	err = c.act(ctx, quit, "write pending", func(ctx context.Context) error {
		_, err := p.store.Put(ctx, key, body, store.PutOptions{IfAbsent: ifAbsent, Metadata: opt.Metadata})
		if errors.Is(err, store.ErrUnknown) && errors.Is(err, store.ErrPrecondition) {
			return nil // our own create refusing its retry: nobody consumes it under our lease
		}
		return err
	})
	switch {
	case errors.Is(err, store.ErrPrecondition):
		c.end(ctx, quit)
		return fmt.Errorf("submit %s: %w", id, ErrPending)
	case err != nil:
		return fmt.Errorf("submit %s: %w", id, c.stop(err))
	}
	c.end(ctx, quit)
	return nil
}
