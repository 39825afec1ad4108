// The promote intent: docs/PROTOCOL.md, "Delayed specs".

package protocol

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cellos/fleetd/internal/queue"
)

// Metadata a promotion writes on pending/: who promoted it (the intent's
// origin) and the delayed version it copied, so that a successor knows the
// copy is its intent's own and deletes exactly that version.
const (
	metaDelayedModified = "fleetd-delayed-modified"
	metaDelayedVersion  = "fleetd-delayed-version"
)

// ErrNotDue: a delayed spec's time has not come.
var ErrNotDue = errors.New("not due yet")

// Promote moves a delayed spec whose time has come (key, due by the store's
// clock at now) to pending/<id>.json, under the spec's lease: GET the delayed
// key, PUT pending/ create-only with its bytes and metadata, DELETE the
// delayed version read, delete the lease. It returns the pending/ object's
// ETag. ErrHeld: the id is in flight (a claim, a retry, another promotion);
// ErrPending: pending/ holds the id already, and the delayed spec waits for
// it to go; ErrNotFound: promoted or deleted since the listing.
func (p *Protocol) Promote(ctx context.Context, quit <-chan struct{}, key string, now time.Time) (string, error) {
	id, due, err := p.cfg.Layout.ParseDelayed(key)
	if err != nil {
		return "", fmt.Errorf("promote %s: %w", key, err)
	}
	if now.Before(due) {
		return "", fmt.Errorf("promote %s: %w", key, ErrNotDue)
	}
	return p.promote(ctx, quit, id, key, "")
}

// promote is Promote of id's delayed key; with cancelBy set it then files the
// spec cancelled (CancelDelayed), the lease carrying the mark from the start
// so that a successor does the same.
func (p *Protocol) promote(ctx context.Context, quit <-chan struct{}, id, key, cancelBy string) (string, error) {
	c, err := p.acquire(ctx, id, leaseBody{State: statePromoting, Intent: intentPromote, DelayedKey: key, Cancel: cancelBy})
	if err != nil {
		return "", fmt.Errorf("promote %s: %w", key, err)
	}
	// Read under the lease: the version read is the one deleted below.
	var o queue.Object
	err = c.act(ctx, quit, "read delayed", func(ctx context.Context) (err error) {
		o, err = p.store.Get(ctx, key, recoverLimit)
		return err
	})
	switch {
	case errors.Is(err, queue.ErrNotFound):
		c.end(ctx, quit)
		return "", fmt.Errorf("promote %s: %w", key, err)
	case err != nil:
		return "", fmt.Errorf("promote %s: %w", key, c.stop(err))
	}
	meta := map[string]string{}
	for k, v := range o.Metadata {
		meta[k] = v
	}
	delete(meta, metaNotBefore)
	meta[metaToken] = c.origin
	meta[metaDelayedModified] = o.LastModified.UTC().Format(time.RFC3339Nano)
	if o.VersionID != "" {
		meta[metaDelayedVersion] = o.VersionID
	}
	// Create-only: a resubmission pending under the id stands, and the
	// delayed spec waits for it to go. A 412 may be our own create whose
	// answer was lost (in this call or an earlier repeat of it): pending/
	// then carries our origin, and under our lease nobody consumes it.
	var etag string
	pendingKey := p.cfg.Layout.Key(queue.Pending, id)
	err = c.act(ctx, quit, "write pending", func(ctx context.Context) (err error) {
		etag, err = p.store.Put(ctx, pendingKey, o.Body, queue.PutOptions{IfAbsent: true, Metadata: meta})
		if errors.Is(err, queue.ErrPrecondition) {
			h, herr := p.store.Head(ctx, pendingKey)
			switch {
			case herr != nil && !errors.Is(herr, queue.ErrNotFound):
				return herr // unknown: repeat
			case herr == nil && h.Metadata[metaToken] == c.origin:
				etag, err = h.ETag, nil
			default:
				err = fmt.Errorf("%s: %w", pendingKey, queue.ErrPrecondition)
			}
		}
		return err
	})
	switch {
	case errors.Is(err, queue.ErrPrecondition):
		c.end(ctx, quit)
		return "", fmt.Errorf("promote %s: %w", key, ErrPending)
	case err != nil:
		return "", fmt.Errorf("promote %s: %w", key, c.stop(err))
	}
	p.deleteDelayed(ctx, quit, c, key, queue.Version{ETag: o.ETag, Modified: o.LastModified, ID: o.VersionID})
	if cancelBy != "" {
		if err := p.cancelPending(ctx, quit, c, cancelBy); err != nil {
			return "", fmt.Errorf("cancel %s: %w", key, err)
		}
		c.log.Info("delayed spec cancelled", "event", "spec.cancelled", "key", key, "by", cancelBy)
		return "", nil
	}
	c.end(ctx, quit)
	c.log.Info("delayed spec due: now pending", "event", "spec.promoted", "key", key)
	return etag, nil
}

// CancelDelayed files every delayed copy of id (a retry waiting for its
// backoff, a spec submitted with --in or --at) cancelled, each under the
// id's lease: it is made pending and filed at once, as fleetd cancel files a
// pending spec. It returns how many it filed. ErrPending: pending/ holds the
// id (cancel that first); ErrHeld: the id is in flight.
func (p *Protocol) CancelDelayed(ctx context.Context, id, by string) (int, error) {
	var keys []string
	err := p.store.List(ctx, p.cfg.Layout.DelayedDir(), func(page queue.Page) error {
		for _, o := range page.Objects {
			if did, _, err := p.cfg.Layout.ParseDelayed(o.Key); err == nil && did == id {
				keys = append(keys, o.Key)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("cancel %s: %w", id, err)
	}
	quit := make(chan struct{})
	close(quit) // a tool does not wait out an outage
	n := 0
	for _, key := range keys {
		_, err := p.promote(ctx, quit, id, key, by)
		switch {
		case errors.Is(err, queue.ErrNotFound):
			// Promoted (or cancelled) since the listing.
		case err != nil:
			return n, err
		default:
			n++
		}
	}
	return n, nil
}

// deleteDelayed deletes the delayed version v under c. Gone or replaced is
// done as far as this intent goes: a version written since is another
// submission, promoted on its own.
func (p *Protocol) deleteDelayed(ctx context.Context, quit <-chan struct{}, c *Claim, key string, v queue.Version) {
	err := c.act(ctx, quit, "delete delayed", func(ctx context.Context) error {
		return p.store.DeleteWritten(ctx, key, v)
	})
	if err != nil && !errors.Is(err, queue.ErrNotFound) && !errors.Is(err, queue.ErrPrecondition) {
		c.log.Warn("delayed spec not deleted after its promotion", "event", "promote.delete_failed", "key", key, "err", err)
	}
}

// finishPromote ends a promotion whose holder stopped: if pending/ holds the
// intent's own copy (its origin in the metadata), the delayed version it
// copied goes; otherwise nothing was promoted, and the lease goes alone (the
// delayed spec is promoted again at a later poll).
func (p *Protocol) finishPromote(ctx context.Context, quit <-chan struct{}, c *Claim, key string) {
	var h queue.Object
	err := c.act(ctx, quit, "check pending", func(ctx context.Context) (err error) {
		h, err = p.store.Head(ctx, p.cfg.Layout.Key(queue.Pending, c.id))
		return err
	})
	if err != nil && !errors.Is(err, queue.ErrNotFound) {
		p.leave(c, err)
		return
	}
	if err == nil && h.Metadata[metaToken] == c.origin && key != "" {
		// The copy is ours: the delayed version it copied goes, if it is
		// still there — read first, so that only that version is deleted.
		modified, _ := time.Parse(time.RFC3339Nano, h.Metadata[metaDelayedModified])
		copied := queue.Version{ETag: h.ETag, Modified: modified, ID: h.Metadata[metaDelayedVersion]}
		var d queue.Object
		err = c.act(ctx, quit, "read delayed", func(ctx context.Context) (err error) {
			d, err = p.store.Head(ctx, key)
			return err
		})
		switch {
		case errors.Is(err, queue.ErrNotFound):
		case err != nil:
			p.leave(c, err)
			return
		case d.ETag == copied.ETag && d.LastModified.Truncate(time.Second).Equal(modified.Truncate(time.Second)) &&
			(copied.ID == "" || d.VersionID == "" || d.VersionID == copied.ID):
			p.deleteDelayed(ctx, quit, c, key, copied)
		}
		if by := c.CancelledBy(); by != "" {
			// A cancel of the delayed spec: the copy is filed as its holder
			// would have filed it.
			_ = p.cancelPending(ctx, quit, c, by) // an error leaves it to the next scan
			return
		}
	}
	c.end(ctx, quit)
}
