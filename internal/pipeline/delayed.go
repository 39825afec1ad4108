package pipeline

import (
	"context"
	"errors"
	"time"

	"github.com/cellos/fleetd/internal/lister"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/store"
)

// promotions moves the delayed specs a listing of pending/ finds due to
// pending/, at most a few per listing: the listing waits for them, so a
// backlog of due specs does not hold up the work already pending. The spec
// each promotion makes pending is handed out by the same listing, so a spec
// starts within a poll interval of its due time.
type promotions struct {
	p    *Pipeline
	ctx  context.Context
	left int
}

func newPromotions(ctx context.Context, p *Pipeline) *promotions {
	return &promotions{p: p, ctx: ctx, left: 4 * max(1, p.cfg.Concurrency)}
}

// due promotes the delayed spec o if its time has come, and returns the
// pending/ entry it made. serverTime is the listing's Date (zero: unknown).
func (pr *promotions) due(o store.Object, serverTime time.Time) (lister.Entry, bool) {
	p := pr.p
	id, due, err := p.cfg.Layout.ParseDelayed(o.Key)
	if err != nil {
		return lister.Entry{}, false // not ours to judge: left alone
	}
	// Due by this node's clock, and not clearly early by the store's: its
	// Date is whole seconds (rounded down), so judging by it alone would
	// start a spec up to a second late; this node's clock alone would let a
	// clock that runs ahead start it early.
	now := time.Now()
	if now.Before(due) || !serverTime.IsZero() && serverTime.Add(time.Second).Before(due) || pr.left == 0 {
		return lister.Entry{}, false
	}
	pr.left--
	log := p.log.With("spec_id", id)
	etag, err := p.proto.Promote(pr.ctx, p.drain.Intake().Done(), o.Key, now)
	switch {
	case errors.Is(err, protocol.ErrHeld), errors.Is(err, protocol.ErrPending), errors.Is(err, store.ErrNotFound):
		// In flight, pending already (a resubmission: the delayed spec
		// waits for it to go), or promoted elsewhere.
		log.Debug("delayed spec not promoted", "event", "promote.skipped", "key", o.Key, "err", err)
		return lister.Entry{}, false
	case err != nil:
		if pr.ctx.Err() == nil {
			log.Warn("promotion of a delayed spec failed; will retry", "event", "promote.retry", "key", o.Key, "err", err)
		}
		return lister.Entry{}, false
	}
	return lister.Entry{Key: p.cfg.Layout.Key(store.Pending, id), ETag: etag}, true
}
